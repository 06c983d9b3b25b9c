"""The worker's step trace ($PDSERVE_STEP_TRACE) with the runner's step timer on: per step()
call, the host time of the step it launched and the waits of the steps it collected, so that
under async scheduling a call's time (one step's launch + the step before's wait) is not read
as one step's time. CPU engine, tiny random model."""

from __future__ import annotations

import io
import json

import pytest

from pdserve.engine.llm import LLM
from pdserve.engine.step_timer import StepTimer
from pdserve.engine.worker import Worker
from pdserve.types import Request, SamplingParams


class _Socket:
    def __init__(self):
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


def _trace(async_scheduling: bool) -> list[dict]:
    llm = LLM("dummy:tiny-llama3", device="cpu", async_scheduling=async_scheduling)
    worker = Worker(_Socket(), llm.engine, None, 60.0)
    worker.step_trace = io.StringIO()
    worker.enable_step_timer()
    params = SamplingParams(3, ignore_eos=True, temperature=0.0)
    worker.core.add_request(Request("a", tuple(range(10, 15)), params))
    while worker.has_work:
        worker.step()
    return [json.loads(line) for line in worker.step_trace.getvalue().splitlines()]


def test_async_calls_launch_one_step_and_collect_the_one_before():
    lines = _trace(async_scheduling=True)
    # prefill (token 1), decode (2), decode (3), then a call that only collects
    assert [line["shape"] for line in lines] == [[5, 15, 0, 0], [0, 0, 1, 6], [0, 0, 1, 7],
                                                 [0, 0, 1, 7]]  # fmt: skip
    assert [line["launch_s"] is not None for line in lines] == [True, True, True, False]
    assert [len(line["collected"]) for line in lines] == [0, 1, 1, 1]
    assert all(line["launch_s"] > 0 for line in lines[:3])
    for line in lines[1:]:
        wait_s, span_s, gap_s, kind = line["collected"][0]
        assert wait_s >= 0 and (span_s, gap_s, kind) == (0.0, 0.0, "eager")  # CPU: no events


def test_sync_calls_launch_and_collect_the_same_step():
    lines = _trace(async_scheduling=False)
    assert [line["shape"] for line in lines] == [[5, 15, 0, 0], [0, 0, 1, 6], [0, 0, 1, 7]]
    assert all(line["launch_s"] > 0 and len(line["collected"]) == 1 for line in lines)


def test_step_timer_pops_only_the_waited_steps():
    timer = StepTimer(enabled=True)
    for num_seqs in (1, 2):  # two launches, the first waited for
        timer.start(num_seqs)
        timer.prepared(None)
        timer.launched()
    timer.synced(0.25)
    assert timer.num_launched == 2
    assert timer.last_launch_s == pytest.approx(timer.steps[1].prepare_s + timer.steps[1].launch_s)
    done = timer.pop_waited()
    assert [(s.num_seqs, s.wait_s) for s in done] == [(1, 0.25)]
    assert [s.num_seqs for s in timer.steps] == [2]
    timer.synced(0.5)  # the one left is now the oldest not waited for
    assert [(s.num_seqs, s.wait_s) for s in timer.pop_waited()] == [(2, 0.5)]
    assert timer.steps == [] and timer.pop_waited() == []
