"""`pdserve up` whose workers cannot start stops with their reason instead of waiting forever."""

import subprocess
import sys


def test_up_exits_with_the_workers_error_when_they_cannot_start():
    cmd = [sys.executable, "-m", "pdserve", "up", "dummy:tiny-llama3", "--instances", "2",
           "--port", "0", "--device", "cpu", "--max-model-len", "4096"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "worker failed to start" in proc.stderr
    assert "max_model_len=4096 exceeds the model's context of 512 tokens" in proc.stderr
