"""`pdserve up` as a real subprocess on a free port, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.server.conftest import free_port

START_TIMEOUT_S = 180


@dataclass
class FleetProcess:
    proc: subprocess.Popen
    url: str

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start_fleet(*extra: str) -> FleetProcess:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "pdserve.cli",
        "up",
        "--port",
        str(port),
        "--worker-threads",
        "1",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pdserve up exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return FleetProcess(proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("pdserve up did not become ready")


@pytest.fixture(scope="module")
def tiny_fleet():
    fleet = start_fleet(
        "dummy:tiny-llama",
        "--instances",
        "3",
        "--max-model-len",
        "128",
        "--num-blocks",
        "64",
        "--routing",
        "round_robin",
    )
    yield fleet
    fleet.stop()
