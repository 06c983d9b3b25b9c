"""A worker without a model: the real worker loop (engine/worker.py) and the real Scheduler,
with an executor that sleeps a modelled step time and samples a fixed token. Torch-free.

    python -m pdserve.deploy.fake_worker --driver tcp://127.0.0.1:5555 --num-blocks 256

Its prefix cache, KV events, snapshots and heartbeats are the real ones, so the controller's
routing, index and failure handling can be tested and benchmarked at fleet scale on a laptop.
`--step-base-ms 0 --step-token-us 0` gives an instant worker (controller overhead benchmarks).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from dataclasses import dataclass

import zmq

from pdserve.config import SchedulerConfig, env_str
from pdserve.engine import protocol as P
from pdserve.engine.core import EngineCore
from pdserve.engine.worker import Worker
from pdserve.sched.plan import StepPlan, StepResult
from pdserve.sched.scheduler import Scheduler

FAKE_TOKEN_ID = 11  # every sampled token; never an EOS (the fake model has none)
FAKE_VOCAB_SIZE = 1024


class SleepExecutor:
    """A step takes `base_s + per_token_s * tokens` of wall time (sleeping: the worker's loop
    blocks as it would on a real forward pass)."""

    def __init__(self, base_s: float, per_token_s: float):
        self.base_s = base_s
        self.per_token_s = per_token_s

    def execute(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        delay = self.base_s + self.per_token_s * plan.num_batched_tokens
        if delay > 0:
            time.sleep(delay)
        sampled = {s.request_id: FAKE_TOKEN_ID for s in plan.seqs if s.samples}
        return StepResult(sampled, duration_s=time.perf_counter() - start)


@dataclass(slots=True)
class _Engine:
    """What `engine.worker.Worker` reads of an engine."""

    core: EngineCore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver", required=True, help="ZMQ address of the controller")
    parser.add_argument("--instance-id", default="fake-0")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--control-token", default=env_str("PDSERVE_CONTROL_TOKEN") or None)
    parser.add_argument("--num-blocks", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--step-base-ms", type=float, default=2.0)
    parser.add_argument("--step-token-us", type=float, default=5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdserve-fake-worker", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver shuts us down
    config = SchedulerConfig(args.max_num_batched_tokens, args.max_num_seqs, args.max_model_len)
    scheduler = Scheduler(config, args.num_blocks, args.block_size)
    executor = SleepExecutor(args.step_base_ms / 1e3, args.step_token_us / 1e6)
    core = EngineCore(scheduler, executor, instance_id=args.instance_id)
    incarnation = uuid.uuid4().hex[:12]
    info = P.WorkerInfo(
        args.instance_id,
        incarnation,
        os.getpid(),
        "fake",
        args.max_model_len,
        args.block_size,
        args.num_blocks,
        (),
        FAKE_VOCAB_SIZE,
    )
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"{args.instance_id}/{incarnation}".encode())
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(args.driver)
    worker = Worker(sock, _Engine(core), info, args.heartbeat_s)
    worker.send(P.REGISTER, P.encode_info(info), args.control_token)
    worker.run(args.parent_pid)
    sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
