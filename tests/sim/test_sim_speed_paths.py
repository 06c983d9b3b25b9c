"""The simulator's fast paths give exactly what the plain definitions give: the executor's
unrolled step time equals `StepCostModel.step_time(shape_of(plan))`, and preloaded arrivals fire
in the order pushing them would."""

from __future__ import annotations

from pdserve.cluster.cost_model import StepCostModel, shape_of
from pdserve.config import SchedulerConfig
from pdserve.sched.scheduler import Scheduler
from pdserve.sim.events import Event, EventLoop
from pdserve.sim.instance import CostExecutor
from pdserve.types import Request, SamplingParams

COST = StepCostModel(0.0021, 3.3e-5, 1.7e-9, 2.3e-4, 5.1e-8)


def test_executor_step_time_is_the_cost_model_of_the_plan_shape():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=96), num_blocks=64, block_size=4)
    executor = CostExecutor(COST)
    for i, n in enumerate((7, 40, 90, 3)):
        sched.add_request(Request(f"r{i}", tuple(range(10 + i, 10 + i + n)), SamplingParams(5)))
    kinds = set()
    while sched.has_unfinished:
        plan = sched.schedule(0.0)
        shape = shape_of(plan)
        kinds.add((shape.num_prefill_tokens > 0, shape.num_decode_seqs > 0))
        result = executor.execute(plan)
        assert result.duration_s == COST.step_time(shape)  # bit for bit
        sched.update(plan, result, 0.0)
    assert kinds == {(True, False), (True, True), (False, True)}  # chunks, mixed, pure decode


class Probe(Event):
    __slots__ = ("name", "priority")

    def __init__(self, name, priority):
        self.name = name
        self.priority = priority

    def fire(self, sim, now):
        sim.append((now, self.name))


def test_preloaded_events_fire_where_pushing_them_first_would():
    def events():
        pre = [(0.0, Probe("a0", 0)), (1.0, Probe("a1", 0)), (1.0, Probe("a2", 0)),
               (2.0, Probe("a3", 0))]  # fmt: skip
        later = [(1.0, Probe("s1", 1)), (0.5, Probe("s0", 1)), (2.0, Probe("f", 0)),
                 (3.0, Probe("s2", 1)), (1.0, Probe("x", 0))]  # fmt: skip
        return pre, later

    pushed, order_pushed = EventLoop(), []
    pre, later = events()
    for t, e in pre + later:
        pushed.push(t, e)
    pushed.run(order_pushed)

    preloaded, order_preloaded = EventLoop(), []
    pre, later = events()
    preloaded.preload(pre)
    for t, e in later:
        preloaded.push(t, e)
    preloaded.run(order_preloaded)

    assert order_preloaded == order_pushed
    assert [name for _, name in order_pushed] == [
        "a0", "s0", "a1", "a2", "x", "s1", "a3", "f", "s2"]  # fmt: skip
    assert preloaded.num_fired == 9 and len(preloaded) == 0


def test_add_pending_is_replace_of_the_two_waiting_fields():
    from dataclasses import replace

    from pdserve.cluster.policies import add_pending
    from pdserve.types import InstanceSnapshot

    snap = InstanceSnapshot("i3", 2, 5, 300, 40, 900, 12, 1000, 16, 0.004, 256, 77, "decode", "2",
                            1.5)  # fmt: skip
    assert add_pending(snap, 128) == replace(snap, num_waiting=3, num_waiting_tokens=428)
