"""The real side of the parity tests: real EngineCores (CPU, tiny random model) driven in one
process on a shared fake clock, with the real routing policy and prefix index, in the event
order the simulator promises (pdserve/sim/events.py): at one time, arrivals first, then step
ends (tokens out, snapshot and KV events published, next step), then idle instances start.

A step runs atomically at its start time (schedule -> model -> update); the clock is moved to
its end inside the executor, so `update` and the token times see start + duration. Its tokens,
snapshot and KV events are published only when the loop reaches that end time.
"""

from __future__ import annotations

import heapq
import itertools

from pdserve.cluster.policies import add_pending
from pdserve.cluster.prefix_index import PrefixIndex
from pdserve.hashing import hash_blocks
from pdserve.metrics import RequestTimeline
from pdserve.types import Request, SamplingParams

ARRIVAL, STEP_END, START = 0, 1, 2


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FixedDurationExecutor:
    """The real model runner, with each step's duration forced to `step_time(plan)`."""

    def __init__(self, runner, clock: FakeClock, step_time):
        self.runner, self.clock, self.step_time = runner, clock, step_time

    def execute(self, plan):
        result = self.runner.execute(plan)
        result.duration_s = self.step_time(plan)
        self.clock.t += result.duration_s
        return result


def run_real(cores, requests, policy, step_time):
    """Drive `cores` (instance_id -> EngineCore) through `requests` (BenchRequests);
    returns ({instance_id: [(start_s, plan summary)]}, [RequestTimeline in request order])."""
    clock = FakeClock()
    for core in cores.values():
        core.clock = clock
        core.executor = FixedDurationExecutor(core.executor, clock, step_time)
    ids = list(cores)
    views = {i: cores[i].snapshot() for i in ids}
    index, kv_seq_no = PrefixIndex(), dict.fromkeys(ids, 0)
    is_busy, is_kicked = dict.fromkeys(ids, False), dict.fromkeys(ids, False)
    plans = {i: [] for i in ids}
    timelines = {r.request_id: RequestTimeline(r.arrival_s, r.prompt_len) for r in requests}
    block_size = next(iter(cores.values())).scheduler.block_size
    heap, seq = [], itertools.count()
    for r in requests:
        heapq.heappush(heap, (r.arrival_s, ARRIVAL, next(seq), r))

    def start(i, now):
        clock.t = now
        events = cores[i].step()
        plans[i].append((now, cores[i].last_plan.summary()))
        kv_events = cores[i].scheduler.drain_kv_events()
        is_busy[i] = True
        heapq.heappush(heap, (clock.t, STEP_END, next(seq), (i, events, kv_events)))

    while heap:
        now, kind, _, payload = heapq.heappop(heap)
        clock.t = now
        if kind == ARRIVAL:
            r = payload
            matched = {}
            if policy.needs_prefix:
                matched = index.longest_prefix(hash_blocks(r.prompt_token_ids, block_size))
            req = Request(
                r.request_id, r.prompt_token_ids, SamplingParams(r.output_len, ignore_eos=True), now
            )
            i = policy.route(req, [views[i] for i in ids], now, matched).instance_id
            cores[i].add_request(req)
            views[i] = add_pending(views[i], r.prompt_len)
            if not is_busy[i] and not is_kicked[i]:
                is_kicked[i] = True
                heapq.heappush(heap, (now, START, next(seq), i))
        elif kind == START:
            is_kicked[payload] = False
            if not is_busy[payload] and cores[payload].has_unfinished:
                start(payload, now)
        else:
            i, events, kv_events = payload
            is_busy[i] = False
            for event in events:
                tl = timelines[event.request_id]
                if event.new_token_ids:
                    tl.token_times_s.append(now)
                    tl.num_output_tokens += len(event.new_token_ids)
                if event.finish_reason is not None:
                    tl.end_s, tl.is_success = now, True
            views[i] = cores[i].snapshot()
            index.apply(i, kv_seq_no[i], kv_events)
            kv_seq_no[i] += 1
            if cores[i].has_unfinished:
                start(i, now)
    return plans, [timelines[r.request_id] for r in requests]
