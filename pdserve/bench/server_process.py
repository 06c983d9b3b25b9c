"""A pdserve server (`serve` or `up`) as a subprocess for benchmarks: started on a free port,
returned once /health answers 200, driven with the bench client, stopped with SIGINT."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import IO

import httpx

from pdserve.bench.client import ClientConfig, RunResult, run_load
from pdserve.bench.workload import BenchRequest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`cmd` (without --port) started with `--port <free port>`; its output goes to `log`
    (without one: stdout is dropped, stderr stays this process's)."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: IO | None = None,
        start_timeout_s: float = 600.0,
        label: str = "",
    ):
        self.label = label  # for the caller's logs and file names
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*cmd, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            self.cmd,
            env=env,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else None,
        )
        name = f"[{label}] the server" if label else "the server"
        start = time.monotonic()
        while not self._is_healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {self.proc.returncode}")
            if time.monotonic() - start > start_timeout_s:
                self.stop()
                raise RuntimeError(f"{name} was not healthy after {start_timeout_s:g} s")
            time.sleep(0.5)
        self.start_s = time.monotonic() - start
        self.model = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]["id"]

    def _is_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, requests: Sequence[BenchRequest]) -> RunResult:
        """The requests through the bench client, prompts sent as token ids."""
        config = ClientConfig(self.url, self.model, prompt_format="tokens", show_progress=False)
        return run_load(requests, config)

    def stop(self, timeout_s: float = 60.0) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
