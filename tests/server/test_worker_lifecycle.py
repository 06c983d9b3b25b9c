"""A real worker that dies: /health fails and the streams in flight end with an error event.
A server killed with SIGKILL leaves no worker behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from tests.server.conftest import TINY_MODEL, pid_alive, start_server

BODY = {"model": TINY_MODEL, "prompt": [1, 2, 3], "max_tokens": 100, "ignore_eos": True}


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_worker_fails_health_and_in_flight_streams():
    server = start_server(TINY_MODEL, "--max-model-len", "128", "--num-blocks", "64")
    try:
        worker_pid = server.debug_status()["pid"]
        lines: list[str] = []

        def stream():
            body = {**BODY, "stream": True, "max_tokens": 120, "logprobs": 0}
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if len(lines) == 3:  # a chunk per token (logprobs): still streaming
                        os.kill(worker_pid, signal.SIGKILL)

        thread = threading.Thread(target=stream)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the stream hung after its worker died"
        assert any("the engine worker exited (code -9)" in line for line in lines)
        assert [line for line in lines if line][-1] == "data: [DONE]"
        health = httpx.get(f"{server.url}/health", timeout=5)
        assert health.status_code == 503
        assert "exited" in health.json()["error"]["message"]
        r = httpx.post(f"{server.url}/v1/completions", json=BODY, timeout=5)
        assert r.status_code == 503
    finally:
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=20)


def test_worker_exits_when_its_server_is_killed():
    server = start_server(TINY_MODEL, "--max-model-len", "128", "--num-blocks", "64")
    worker_pid = server.debug_status()["pid"]
    server.proc.kill()
    server.proc.wait(timeout=10)
    assert wait_until(lambda: not pid_alive(worker_pid)), "orphan worker"
