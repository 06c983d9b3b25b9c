"""A two-node Ray cluster on this machine, with token auth, for the Ray placement tests.

Each node is `ray start --block` as our child process, with its own temp dir and ports; stopping
it (SIGTERM to that pid) stops its raylet and workers. `ray stop` is not used: it stops every
Ray process on the machine, other users' included.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.server.conftest import free_port

NODE_START_TIMEOUT_S = 90
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB; the workers store nothing


@dataclass
class LocalRayCluster:
    address: str  # "127.0.0.1:<gcs port>"
    token: str  # RAY_AUTH_TOKEN of every node
    nodes: list[subprocess.Popen] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)

    def node_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def start_node(self, *args: str) -> None:
        temp_dir = tempfile.mkdtemp(prefix="pdray")  # short: Ray's unix sockets live under it
        self.temp_dirs.append(temp_dir)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
               "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", temp_dir,
               "--object-store-memory", str(OBJECT_STORE_BYTES),
               "--dashboard-agent-listen-port", str(free_port()), *args]  # fmt: skip
        log = open(os.path.join(temp_dir, "ray_start.log"), "w")  # noqa: SIM115
        self.nodes.append(subprocess.Popen(cmd, env=self.node_env(), stdout=log, stderr=log))

    def stop(self) -> None:
        """Both nodes at once; SIGKILL what does not stop in time."""
        for proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def wait_port(port: int, proc: subprocess.Popen, temp_dir: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(temp_dir, "ray_start.log")) as f:
                log = f.read()[-2000:]
            raise RuntimeError(f"ray start exited with code {proc.returncode}:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"Ray GCS did not listen on port {port}")


def start_two_nodes() -> LocalRayCluster:
    """Head and a second node; the second starts as soon as the head's GCS listens."""
    port = free_port()
    cluster = LocalRayCluster(f"127.0.0.1:{port}", secrets.token_hex(16))
    try:
        cluster.start_node("--head", "--port", str(port), "--include-dashboard", "false")
        wait_port(port, cluster.nodes[0], cluster.temp_dirs[0], NODE_START_TIMEOUT_S)
        cluster.start_node("--address", cluster.address)
    except BaseException:
        cluster.stop()
        raise
    return cluster
