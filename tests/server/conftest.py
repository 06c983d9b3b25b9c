"""Server fixtures: `pdserve serve` as a real subprocess on a free port (one per session and
model), and an in-process app over a scripted engine for the error paths."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

SMOL_MODEL = "SmolLM2-135M-Instruct.Q4_1"  # served name of the embedded default
TINY_MODEL = "dummy:tiny-llama"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str

    def debug_status(self) -> dict:
        return httpx.get(f"{self.url}/debug/status", timeout=10).json()

    def check_integrity(self) -> dict:
        return httpx.post(f"{self.url}/debug/check_integrity", timeout=10).json()

    def stop(self) -> None:
        """Ctrl-C, as a user would; the worker must be gone afterwards."""
        worker_pid = None
        with contextlib.suppress(Exception):
            worker_pid = self.debug_status()["pid"]
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if worker_pid is not None:
            assert not pid_alive(worker_pid), "the worker outlived the server"


def pid_alive(pid: int) -> bool:
    """Running, and not a zombie (an orphan's zombie may wait long for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_healthy(proc: subprocess.Popen, url: str, what: str) -> None:
    """Until `url`/health answers 200; the process exiting or the timeout is an error."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not become ready")


def start_server(*extra: str) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "pdserve.cli", "serve", "--port", str(port),
           "--worker-threads", "1", "--enable-debug-endpoints", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, "pdserve serve")
    return ServerProcess(proc, url)


@pytest.fixture(scope="session")
def smol_server():
    server = start_server("--max-model-len", "1024", "--num-blocks", "256")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_server():
    server = start_server(TINY_MODEL, "--max-model-len", "128", "--num-blocks", "64")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference_llm():
    from pdserve.engine.llm import LLM

    return LLM("", max_model_len=1024, num_blocks=256)
