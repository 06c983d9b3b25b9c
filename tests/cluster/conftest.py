"""`pdserve up` as a real subprocess on a free port, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.server.conftest import free_port, wait_healthy


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
    wait_healthy(proc, url, "pdserve up")
    return FleetProcess(proc, url)


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
