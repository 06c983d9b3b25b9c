"""Local placement: N worker processes on this machine, each connected to the controller.

Each worker runs `python -m <module> --driver <controller address> --instance-id <id>
--parent-pid <us>` plus the engine flags, in its own session (Ctrl-C reaches only the
controller, which shuts them down) and exits by itself if this process dies. A process that
exits is reported to the controller at once (faster than missed heartbeats) and, with
`restart`, started again: it rejoins under a new incarnation.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WORKER_MODULE = "pdserve.engine.worker"
FAKE_WORKER_MODULE = "pdserve.deploy.fake_worker"
WATCH_PERIOD_S = 0.1


@dataclass(frozen=True, slots=True)
class LocalFleetConfig:
    num_instances: int
    worker_argv: tuple[str, ...] = ()  # engine flags, the same for every worker
    module: str = WORKER_MODULE
    heartbeat_s: float = 0.25
    id_prefix: str = "worker"
    restart: bool = False  # start a worker again when its process exits
    env: dict[str, str] = field(default_factory=dict)  # added to each worker's environment
    # GPUs for the workers, in order (worker i gets gpus[i % len]); () leaves CUDA_VISIBLE_DEVICES
    gpus: tuple[str, ...] = ()
    # How a worker gets its GPU: "env" = CUDA_VISIBLE_DEVICES=<gpu> (it sees one device);
    # "index" = every GPU stays visible and the worker runs on `--device cuda:<gpu>` (gpus are
    # then indices). CUDA IPC needs "index": a peer's memory handle names its device by the
    # index both processes must agree on.
    gpu_mode: str = "env"

    @property
    def instance_ids(self) -> list[str]:
        return [f"{self.id_prefix}-{i}" for i in range(self.num_instances)]

    def worker_env(self, index: int) -> dict[str, str]:
        if not self.gpus or self.gpu_mode == "index":
            return self.env
        return {**self.env, "CUDA_VISIBLE_DEVICES": self.gpus[index % len(self.gpus)]}

    def device_argv(self, index: int) -> tuple[str, ...]:
        """Flags that put worker `index` on its GPU ("index" mode; after the shared flags)."""
        if not self.gpus or self.gpu_mode != "index":
            return ()
        return ("--device", f"cuda:{self.gpus[index % len(self.gpus)]}")


def visible_gpus() -> tuple[str, ...]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES entries, without importing torch: the
    variable itself when set, else one per `nvidia-smi -L` line; () without GPUs."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(g.strip() for g in listed.split(",") if g.strip())
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return tuple(str(i) for i in range(len(lines))) if out.returncode == 0 else ()


def split_gpus(gpus: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, ...]]:
    """One GPU per worker across fleets of `sizes` workers, in order, wrapping around when
    there are more workers than GPUs (they then share)."""
    out, at = [], 0
    for n in sizes:
        out.append(tuple(gpus[(at + i) % len(gpus)] for i in range(n)) if gpus else ())
        at += n
    return out


def worker_args(
    config: LocalFleetConfig, driver_address: str, instance_id: str, extra_argv: Sequence[str] = ()
) -> list[str]:
    """A worker's command line after the interpreter: `-m <module> --driver ... <flags>`.
    Shared with Ray placement (deploy/ray_fleet.py), whose actors run it on their node."""
    return [
        "-m",
        config.module,
        "--driver",
        driver_address,
        "--instance-id",
        instance_id,
        "--heartbeat-s",
        str(config.heartbeat_s),
        *config.worker_argv,
        *extra_argv,
    ]


def start_worker_process(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """`python <args>` in its own session, exiting by itself when this process is gone."""
    cmd = [sys.executable, *args, "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, env={**os.environ, **env}, start_new_session=True)


class LocalFleet:
    def __init__(
        self,
        config: LocalFleetConfig,
        driver_address: str,
        on_exit: Callable[[str, str], None] = lambda instance_id, reason: None,
    ):
        self.config = config
        self.driver_address = driver_address
        self.on_exit = on_exit  # (instance_id, reason): take it out of rotation
        self.procs: dict[str, subprocess.Popen] = {}
        self._watcher: asyncio.Task | None = None

    @property
    def instance_ids(self) -> list[str]:
        return self.config.instance_ids

    def start(self) -> None:
        for instance_id in self.instance_ids:
            self.spawn(instance_id)
        self._watcher = asyncio.create_task(self._watch())

    def spawn(self, instance_id: str, extra_argv: Sequence[str] = ()) -> subprocess.Popen:
        index = self.instance_ids.index(instance_id) if instance_id in self.instance_ids else 0
        extra_argv = (*self.config.device_argv(index), *extra_argv)
        args = worker_args(self.config, self.driver_address, instance_id, extra_argv)
        proc = start_worker_process(args, self.config.worker_env(index))
        self.procs[instance_id] = proc
        return proc

    def kill(self, instance_id: str) -> None:
        """SIGKILL one worker (fault tests); the watcher reports it like any other exit."""
        self.procs[instance_id].kill()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            for instance_id, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[instance_id]
                self.on_exit(instance_id, f"worker process {proc.pid} exited (code {code})")
                if self.config.restart:
                    self.spawn(instance_id)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait for the workers to exit (after the controller's SHUTDOWN), then kill the rest."""
        if self._watcher is not None:
            self._watcher.cancel()
        deadline = asyncio.get_running_loop().time() + timeout_s
        for proc in self.procs.values():
            while proc.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        self.kill_all()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
