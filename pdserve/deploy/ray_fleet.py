"""Ray placement: each worker a Ray actor on an existing Ray cluster (`pdserve up --ray ADDRESS`).

    ray start --head --port 6379                 # on the head node
    ray start --address HEAD:6379                # on every other node
    pdserve up MODEL --ray HEAD:6379 --instances 8

Ray only places and reaps. The actor is a shell around the same worker process the local
launcher starts (deploy/local.py: same command line, same worker protocol): it runs it on its
node, with the devices Ray gave it (CUDA_VISIBLE_DEVICES), and its `wait()` returns when the
process exits. The worker connects to the controller's ZMQ address (bound on the driver node's
IP, not loopback) and registers with the control token; heartbeats and incarnations are
unchanged. One GPU per actor when the cluster has GPUs, else one CPU; actors are spread over
the nodes.

Lifetimes:
  worker process exits     -> the actor's wait() returns; reported to the controller, actor killed
                              (`restart`: a new actor, which registers as a new incarnation)
  actor killed / node lost -> wait() fails with RayActorError; reported at once; the orphaned
                              worker sees its parent gone and exits (missed heartbeats would
                              take it out of rotation anyway)
  `pdserve up` exits       -> SHUTDOWN to the workers, then every actor killed; if it dies, Ray
                              kills the actors it owns (they are not detached), and their
                              workers follow

Token auth: a Ray cluster started with a token (Ray's default once one exists) refuses drivers
without it. Ray finds the token in $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token, but turns token mode on by itself only for a cluster found automatically,
not for an explicit address. `connect` applies Ray's rule to any address: when
$RAY_AUTH_MODE is unset and a token is available, token mode is on for this process. An
explicit $RAY_AUTH_MODE always wins. The actors need nothing: their node gives them the token.
`ray` is imported only inside `connect` and after it (the mode is read when ray is imported).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdserve.config import env_str
from pdserve.deploy.local import LocalFleetConfig, start_worker_process, worker_args

WATCH_PERIOD_S = 0.1


@dataclass(frozen=True, slots=True)
class RayPlacement:
    num_gpus: float | None = None  # per worker; None: 1 when the cluster has GPUs, else 0
    num_cpus: float = 1.0  # per worker (a Ray resource: what the scheduler counts)
    strategy: str = "SPREAD"  # Ray scheduling strategy: spread workers over the nodes


def has_ray_token() -> bool:
    """A token where Ray looks for one: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if env_str("RAY_AUTH_TOKEN").strip():
        return True
    path = Path(env_str("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.is_file() and bool(path.read_text().strip())


def connect(address: str) -> str:
    """Join the Ray cluster at `address` ("auto": the one running here) as a driver, in a fresh
    namespace; returns this node's IP, where the controller must bind for the other nodes."""
    if "ray" in sys.modules:  # the auth mode is read once, when ray is imported
        raise RuntimeError("connect() must import ray first")
    if not env_str("RAY_AUTH_MODE") and has_ray_token():
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError as e:
        raise ImportError("--ray needs Ray: pip install 'pdserve[ray]'") from e

    namespace = f"pdserve-{uuid.uuid4().hex[:8]}"
    try:
        ray.init(address=address, namespace=namespace, logging_level="WARNING")
    except ConnectionError as e:
        mode = env_str("RAY_AUTH_MODE") or "unset"
        raise ConnectionError(
            f"cannot join the Ray cluster at {address} (RAY_AUTH_MODE {mode}): {e}. A cluster "
            "with token auth needs its token in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token"
        ) from e
    return ray.util.get_node_ip_address()


def disconnect() -> None:
    """Leave the cluster (after the fleets are closed): faster than Ray's own exit hook."""
    import ray

    ray.shutdown()


class WorkerActor:
    """The Ray actor: one worker process on the actor's node (threaded: `wait` blocks one
    thread while `where` answers on another)."""

    def __init__(self, args: Sequence[str], env: dict[str, str]):
        self.proc = start_worker_process(args, env)

    def where(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "actor_pid": os.getpid(),
            "worker_pid": self.proc.pid,
            "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
        }

    def wait(self) -> int:
        return self.proc.wait()


@dataclass(slots=True)
class _Placed:
    actor: object  # ray.actor.ActorHandle
    exited: object  # ray.ObjectRef of actor.wait(): the worker's exit code, or RayActorError
    name: str


class RayFleet:
    """LocalFleet's interface (start, spawn, kill, close, kill_all), with Ray actors as the
    workers' parents. Call `connect` first."""

    def __init__(
        self,
        config: LocalFleetConfig,
        driver_address: str,
        on_exit: Callable[[str, str], None] = lambda instance_id, reason: None,
        placement: RayPlacement = RayPlacement(),
    ):
        import ray

        self.config = config
        self.driver_address = driver_address
        self.on_exit = on_exit  # (instance_id, reason): take it out of rotation
        num_gpus = placement.num_gpus
        if num_gpus is None:
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.actor_class = ray.remote(WorkerActor)
        self.actor_options = dict(
            num_cpus=placement.num_cpus,
            num_gpus=num_gpus,
            scheduling_strategy=placement.strategy,
            max_concurrency=4,
            max_restarts=0,  # a lost worker comes back through `restart`, as a new incarnation
        )
        self.placed: dict[str, _Placed] = {}
        self._tasks: list[asyncio.Task] = []

    @property
    def instance_ids(self) -> list[str]:
        return self.config.instance_ids

    def start(self) -> None:
        for instance_id in self.instance_ids:
            self.spawn(instance_id)
        self._tasks.append(asyncio.create_task(self._watch()))

    def spawn(self, instance_id: str, extra_argv: Sequence[str] = ()) -> None:
        args = worker_args(self.config, self.driver_address, instance_id, extra_argv)
        name = f"{instance_id}.{uuid.uuid4().hex[:6]}"
        actor = self.actor_class.options(name=name, **self.actor_options).remote(
            args, self.config.env
        )
        self.placed[instance_id] = _Placed(actor, actor.wait.remote(), name)
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.create_task(self._report_placement(instance_id, actor)))

    async def _report_placement(self, instance_id: str, actor) -> None:
        try:
            where = await asyncio.wrap_future(actor.where.remote().future())
        except Exception:  # died before it answered: the watcher reports that
            return
        gpus = f", GPU {','.join(where['gpu_ids'])}" if where["gpu_ids"] else ""
        print(
            f"[pdserve] {instance_id}: Ray actor on node {where['node_id'][:12]} "
            f"({where['node_ip']}{gpus}), worker pid {where['worker_pid']}",
            file=sys.stderr,
        )

    def kill(self, instance_id: str) -> None:
        """Kill one worker's actor (fault tests); the watcher reports it like any other exit."""
        import ray

        ray.kill(self.placed[instance_id].actor, no_restart=True)

    async def _watch(self) -> None:
        import ray

        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            by_ref = {placed.exited: instance_id for instance_id, placed in self.placed.items()}
            if not by_ref:
                continue
            ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
            for ref in ready:
                instance_id = by_ref[ref]
                placed = self.placed.pop(instance_id)
                self.on_exit(instance_id, _exit_reason(placed))
                ray.kill(placed.actor, no_restart=True)
                if self.config.restart:
                    self.spawn(instance_id)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait for the workers to exit (after the controller's SHUTDOWN), then kill the actors."""
        import ray

        for task in self._tasks:
            task.cancel()
        refs = [placed.exited for placed in self.placed.values()]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while refs and asyncio.get_running_loop().time() < deadline:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0)
            await asyncio.sleep(0.05)
        self.kill_all()

    def kill_all(self) -> None:
        import ray

        for placed in self.placed.values():
            ray.kill(placed.actor, no_restart=True)
        self.placed.clear()


def _exit_reason(placed: _Placed) -> str:
    import ray

    try:
        code = ray.get(placed.exited)
    except ray.exceptions.RayError as e:  # RayActorError: killed, or its node lost
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"Ray actor {placed.name} died: {first_line}"
    return f"worker process in Ray actor {placed.name} exited (code {code})"
