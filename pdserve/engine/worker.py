"""Worker process: one EngineCore behind the worker protocol (see engine/protocol.py).

    python -m pdserve.engine.worker --driver tcp://127.0.0.1:5555 [--model M] [engine flags]

The loop owns the engine: drain commands, step while there is work, publish tokens, KV events
and heartbeats. Nothing else runs here: HTTP, tokenization and detokenization live in the
driver's process. The worker exits on SHUTDOWN, or when its parent process is gone.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import replace

import zmq

from pdserve.engine import protocol as P
from pdserve.metrics import QUEUE_TIME_BUCKETS_S
from pdserve.types import FinishReason

KV_LOG_LEN = 65536  # KV events kept for replay to a driver that missed some
LEASE_TICK_S = 0.1  # how often an idle worker holding KV under a lease checks it


class Worker:
    def __init__(
        self, sock: zmq.Socket, engine, info: P.WorkerInfo, heartbeat_s: float, handoff=None
    ):
        self.sock = sock
        self.handoff = handoff  # engine.pd.KVHandoff of a prefill/decode worker, else None
        self.kind = ""  # InstanceSnapshot.kind: what it runs on (set by `main`)
        self.core = engine.core
        self.info = info
        self.heartbeat_s = heartbeat_s
        self.kv_log: collections.deque = collections.deque(maxlen=KV_LOG_LEN)  # (seq, event)
        self.kv_seq = 0
        self.arrivals: dict[str, float] = {}  # submitted, not scheduled yet
        self.queue_time_counts = [0] * (len(QUEUE_TIME_BUCKETS_S) + 1)
        self.queue_time_sum_s = 0.0
        self.num_steps = 0
        self.is_stopping = False
        self._next_heartbeat = 0.0
        # Profiling only ($PDSERVE_STEP_TRACE): one JSON line per submit and per step() call.
        self.step_trace = None
        self._no_token_yet: set[str] = set()  # traced requests whose first token is to come
        self._num_launched = 0  # the runner's step timer's launches traced so far

    def send(self, msg_type: str, *body) -> None:
        self.sock.send(P.pack(msg_type, *body))

    # ---- commands --------------------------------------------------------------------------

    def handle(self, frame: bytes) -> None:
        msg_type, body = P.unpack(frame)
        if msg_type == P.SUBMIT:
            req = P.decode_request(body[0])
            req = replace(req, arrival_s=self.core.clock())  # the worker's clock from here on
            try:
                self.core.add_request(req)
                self.arrivals[req.request_id] = req.arrival_s
                if self.step_trace is not None:
                    self._trace_submit(req)
            except ValueError as e:
                self.send(P.REJECT, req.request_id, str(e))
        elif msg_type == P.ABORT:
            request_ids, reason = body
            for rid in request_ids:
                if self.handoff is not None:
                    self.handoff.abort(rid, FinishReason(reason))
                else:
                    self.core.abort(rid, FinishReason(reason))
                self.arrivals.pop(rid, None)
        elif msg_type == P.KV_SEND:
            self.handoff.order(P.decode_kv_order(body[0]))
        elif msg_type == P.KV_RECEIVED:
            events = self.handoff.received(body[0], body[1])
            if events:
                self.send(P.TOKENS, [P.encode_event(ev) for ev in events])
        elif msg_type == P.CALL:
            call_id, op, args = body
            try:
                self.send(P.REPLY, call_id, True, self.call(op, args))
            except Exception as e:  # the driver gets the error text, the worker lives on
                self.send(P.REPLY, call_id, False, f"{type(e).__name__}: {e}")
        elif msg_type == P.SHUTDOWN:
            self.is_stopping = True

    def call(self, op: str, args: dict):
        if op == "status":
            return P.encode_status(self.status())
        if op == "check_integrity":
            self.core.check_integrity()
            return None
        if op == "kv_replay":
            from_seq = args.get("from_seq", 0)
            if (self.kv_log and self.kv_log[0][0] <= from_seq) or from_seq == self.kv_seq:
                events = [P.encode_kv_event(ev) for seq, ev in self.kv_log if seq >= from_seq]
                return {"first_seq": from_seq, "events": events}
            hashes = self.core.scheduler.kv.prefix_cache.cached_hashes()
            return {"next_seq": self.kv_seq, "cached_hashes": hashes}
        if op == "kv_status" and self.handoff is not None:
            return self.handoff.status()
        if op == "kv_fault" and self.handoff is not None:
            return self.handoff.inject_fault(args)
        raise ValueError(f"unknown call {op!r}")

    # ---- state out -------------------------------------------------------------------------

    def status(self) -> P.WorkerStatus:
        snap = self.core.snapshot()
        snap = replace(snap, incarnation=self.info.incarnation, role=self.info.role, kind=self.kind)
        s = self.core.scheduler.stats
        stats = P.EngineStats(
            s.prefix_queries, s.prefix_hits, s.num_preemptions, s.prompt_tokens,
            s.generation_tokens, self.num_steps, dict(s.finished),
            tuple(self.queue_time_counts), self.queue_time_sum_s,
        )  # fmt: skip
        return P.WorkerStatus(snap, stats, self.kv_seq)

    def step(self) -> None:
        start = self.core.clock()
        events = self.core.step()
        self.num_steps += 1
        plan = self.core.last_plan
        for seq in plan.seqs if plan is not None else ():
            arrival_s = self.arrivals.pop(seq.request.request_id, None)
            if arrival_s is not None:
                self._observe_queue_time(max(start - arrival_s, 0.0))
        for ev in events:
            if ev.is_finished:
                self.arrivals.pop(ev.request_id, None)
        if events:
            self.send(P.TOKENS, [P.encode_event(ev) for ev in events])
        if self.step_trace is not None:
            self._trace_step(start, plan, events)
        if self.handoff is not None:
            self.handoff.on_events(events)
        self.publish_kv_events()

    def _trace_submit(self, req) -> None:
        self._no_token_yet.add(req.request_id)
        line = {
            "submit": req.request_id,
            "t": req.arrival_s,
            "prompt_len": len(req.prompt_token_ids),
        }
        self.step_trace.write(json.dumps(line) + "\n")

    def _trace_step(self, start: float, plan, events) -> None:
        """step() from `start` to now ran `plan` (under async scheduling: launched it, and
        collected the plan before); `first`: requests whose first token it returned. With the
        runner's step timer on (`main`): `launch_s`, the host time (prepare + launch) of the
        step this call launched (None: none), and `collected`, per step whose ids it waited
        for, [wait, GPU span, GPU idle gap before it] in seconds and "graph" | "eager": a
        call's time is one step's launch and the step before's wait, not one step's time."""
        from pdserve.cluster.cost_model import shape_of

        first = [ev.request_id for ev in events
                 if ev.new_token_ids and ev.request_id in self._no_token_yet]  # fmt: skip
        self._no_token_yet.difference_update(first)
        line = {
            "t0": start, "t1": self.core.clock(), "step_id": plan.step_id if plan else None,
            "shape": list(shape_of(plan).features()[1:]) if plan else None,
            "in_flight": self.core.has_step_in_flight, "num_events": len(events), "first": first,
        }  # fmt: skip
        timer = getattr(self.core.executor, "timer", None)
        if timer is not None and timer.enabled:
            launched = timer.num_launched > self._num_launched
            self._num_launched = timer.num_launched
            line["launch_s"] = timer.last_launch_s if launched else None
            line["collected"] = [[s.wait_s, s.gpu_span_s, s.gpu_gap_s, s.kind]
                                 for s in timer.pop_waited()]  # fmt: skip
        self.step_trace.write(json.dumps(line) + "\n")

    def enable_step_timer(self) -> None:
        """The runner times each step's host launch and GPU span for the trace (profiling:
        two CUDA events per step, read once the step's ids are back; no synchronization)."""
        timer = getattr(self.core.executor, "timer", None)
        if timer is not None:
            timer.reset()
            timer.enabled = True
            self._num_launched = timer.num_launched

    def publish_handoff(self) -> None:
        reservations = self.handoff.drain_reservations()
        if reservations:
            self.send(P.KV_RESERVED, [P.encode_reservation(r) for r in reservations])
        results = self.handoff.poll()
        if results:
            self.send(P.KV_SENT, [P.encode_kv_result(r) for r in results])

    @property
    def has_work(self) -> bool:
        """Something to compute: requests waiting for remote KV alone do not spin the loop."""
        sched = self.core.scheduler
        return len(sched.requests) > len(sched.receiving) or self.core.has_step_in_flight

    def publish_kv_events(self) -> None:
        kv_events = self.core.scheduler.drain_kv_events()
        if not kv_events:
            return
        first_seq = self.kv_seq
        for ev in kv_events:
            self.kv_log.append((self.kv_seq, ev))
            self.kv_seq += 1
        self.send(P.KV, first_seq, [P.encode_kv_event(ev) for ev in kv_events])

    def maybe_heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            self.send(P.HEARTBEAT, P.encode_status(self.status()))

    def _observe_queue_time(self, queue_s: float) -> None:
        self.queue_time_counts[bisect.bisect_left(QUEUE_TIME_BUCKETS_S, queue_s)] += 1
        self.queue_time_sum_s += queue_s

    # ---- loop ------------------------------------------------------------------------------

    def run(self, parent_pid: int | None) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        idle_poll_ms = int(min(self.heartbeat_s, 0.1) * 1000)
        next_lease_tick = 0.0
        while not self.is_stopping:
            busy = self.has_work
            waiting_ms = 1 if self.handoff is not None and self.handoff.is_busy else idle_poll_ms
            if poller.poll(0 if busy else waiting_ms):
                while self.sock.poll(0):
                    self.handle(self.sock.recv())
            if self.has_work and not self.is_stopping:
                self.step()
            elif self.core.scheduler.sending and time.monotonic() >= next_lease_tick:
                next_lease_tick = time.monotonic() + LEASE_TICK_S
                self.step()  # an empty step: the scheduler expires held KV whose lease ran out
            else:
                self.publish_kv_events()  # aborts free blocks, which may evict nothing; cheap
            if self.handoff is not None:
                self.publish_handoff()
            self.maybe_heartbeat()
            if parent_pid is not None and os.getppid() != parent_pid:
                print("pdserve worker: parent process gone, exiting", file=sys.stderr)
                return


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pdserve.engine.cli import add_engine_arguments

    parser.add_argument("--driver", required=True, help="ZMQ address of the driver's ROUTER")
    parser.add_argument("--instance-id", default="worker-0")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--role", default="fused", choices=("fused", "prefill", "decode"))
    parser.add_argument(
        "--kv-transport",
        default=None,
        choices=("inproc", "nixl", "cuda_ipc"),
        help="KV hand-off transport (default: nixl for prefill/decode roles, none for fused)",
    )
    parser.add_argument(
        "--kv-lease-s", type=float, default=None, help="hold sent KV at most this long"
    )
    parser.add_argument(
        "--control-token",
        default=None,
        help="shown to the driver on registration (default: $PDSERVE_CONTROL_TOKEN)",
    )
    add_engine_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdserve-worker", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the driver; it shuts us down
    incarnation = uuid.uuid4().hex[:12]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"{args.instance_id}/{incarnation}".encode())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(args.driver)
    progress = lambda stage: sock.send(P.pack(P.PROGRESS, incarnation, stage))  # noqa: E731
    try:
        engine = _build(args, progress)
    except Exception as e:
        sock.send(P.pack(P.FAILED, incarnation, f"{type(e).__name__}: {e}"))
        sock.close()
        return 1
    cfg = engine.config
    handoff = _handoff(args, engine, incarnation)
    info = P.WorkerInfo(
        args.instance_id, incarnation, os.getpid(), engine.model_config.name or cfg.model,
        cfg.scheduler.max_model_len,
        cfg.cache.block_size, engine.core.scheduler.kv.num_blocks,
        tuple(engine.model_config.eos_token_ids), engine.model_config.vocab_size,
        args.role, handoff.kv_meta if handoff is not None else b"",
    )  # fmt: skip
    engine.core.instance_id = args.instance_id
    worker = Worker(sock, engine, info, args.heartbeat_s, handoff)
    budget = cfg.scheduler.max_num_batched_tokens
    worker.kind = f"{info.model} on {_device_name(engine.device)}, {budget} tokens a step"
    from pdserve.config import env_str

    trace_path = env_str("PDSERVE_STEP_TRACE")
    if trace_path:  # line-buffered: the lines survive a killed worker; closed at exit
        worker.step_trace = open(f"{trace_path}.{args.instance_id}", "a", buffering=1)  # noqa: SIM115
        worker.enable_step_timer()

    # The model, the imports and the CUDA graphs (~800 k objects) live as long as the worker:
    # out of the collector's sight, a full collection (0.5 s on a 2-core CPU box) never lands
    # inside a step again; the requests' own objects are collected as before.
    gc.collect()
    gc.freeze()
    worker.send(
        P.REGISTER,
        P.encode_info(info),
        args.control_token or env_str("PDSERVE_CONTROL_TOKEN") or None,
    )
    worker.run(args.parent_pid)
    if handoff is not None:
        handoff.close()
    sock.close()
    return 0


def _handoff(args, engine, incarnation: str):
    """The KV hand-off of a prefill/decode worker (or any worker given --kv-transport)."""
    kind = args.kv_transport or ("nixl" if args.role != "fused" else None)
    if kind is None:
        return None
    from pdserve.engine.pd import StreamingExecutor, make_handoff

    sched = engine.core.scheduler
    if args.kv_lease_s is not None:
        sched.config = replace(sched.config, kv_lease_s=args.kv_lease_s)
    name = f"{args.instance_id}-{incarnation}"
    runner = engine.core.executor
    handoff = make_handoff(sched, runner.kv_cache, kind, name)
    engine.core.executor = StreamingExecutor(runner, runner.model, handoff)  # layer streaming
    return handoff


def _device_name(device) -> str:
    """The engine's (resolved) torch.device as a card name, or its type."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _build(args, progress):
    from pdserve.config import env_str

    progress("importing torch")
    import torch

    from pdserve.engine.cli import engine_kwargs
    from pdserve.engine.factory import build_engine
    from pdserve.engine.llm import make_engine_config

    threads = args.threads or int(env_str("PDSERVE_WORKER_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    progress(f"loading model {args.model or '(embedded default)'} on {threads} thread(s)")
    return build_engine(make_engine_config(args.model, **engine_kwargs(args)), args.instance_id)


if __name__ == "__main__":
    raise SystemExit(main())
