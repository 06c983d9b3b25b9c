"""The served step-time model (sim.profiles.ServedCostModel): a floor under prefill steps, their
own fixed cost and decode-row costs, the fit that recovers them, per-step corrections, and the
pipelined engine's overlap as the simulated instance applies it."""

from __future__ import annotations

import random

import pytest

from pdserve.cluster.cost_model import StepCostModel, StepShape
from pdserve.config import SchedulerConfig
from pdserve.sched.scheduler import Scheduler
from pdserve.sim.instance import CostExecutor, SimInstance
from pdserve.sim.profiles import ServedCostModel, cost_from_dict, with_corrections
from pdserve.types import Request, SamplingParams

# H100-like: 7 ms decode steps, eager prefill steps at least 13 ms (the host launching kernels)
TRUE = ServedCostModel(
    base_s=7e-3, per_prefill_token_s=2e-5, per_prefill_pair_s=3e-9, per_decode_seq_s=1e-5,
    per_decode_ctx_token_s=1.5e-7, prefill_base_s=-2e-3, prefill_floor_s=13e-3,
    per_mixed_seq_s=2e-5, per_mixed_ctx_token_s=4e-7, single_seq_s=-5e-4,
)  # fmt: skip
FITTED = ("base_s", "per_prefill_token_s", "per_prefill_pair_s", "per_decode_seq_s",
          "per_decode_ctx_token_s", "prefill_base_s", "prefill_floor_s", "per_mixed_seq_s",
          "per_mixed_ctx_token_s", "single_seq_s")  # fmt: skip


def grid() -> list[StepShape]:
    """Decode batches, lone prompts and prompts joining decode batches, as `pdserve profile`."""
    shapes = [StepShape(0, 0, b, b * c) for b in (1, 2, 4, 16, 64) for c in (128, 600, 1024)]
    shapes += [StepShape(p, p * (p + 1) // 2) for p in (16, 64, 256, 512, 1024, 1536, 2048)]
    shapes += [StepShape(p, p * (p + 1) // 2, b, b * 600) for p in (64, 512, 1024, 2048)
               for b in (2, 16, 48)]  # fmt: skip
    return shapes


def test_step_time_is_the_floor_or_the_linear_sum():
    lone = StepShape(16, 136)
    assert TRUE.step_time(lone) == 13e-3  # 7 - 2 + 0.32 + ... ms: under the floor
    big = StepShape(2048, 2048 * 2049 // 2, 16, 9600)
    linear = 7e-3 - 2e-3 + 2e-5 * 2048 + 3e-9 * (2048 * 2049 // 2) + 2e-5 * 16 + 4e-7 * 9600
    assert TRUE.step_time(big) == pytest.approx(linear, rel=1e-12)
    decode = StepShape(0, 0, 16, 9600)
    assert TRUE.step_time(decode) == pytest.approx(7e-3 + 1e-5 * 16 + 1.5e-7 * 9600, rel=1e-12)
    lone = StepShape(0, 0, 1, 600)  # a lone decode row: its own path (a CPU's matrix-vector)
    assert TRUE.step_time(lone) == pytest.approx(7e-3 + 1e-5 + 1.5e-7 * 600 - 5e-4, rel=1e-12)
    assert TRUE.tokens_time(16, context_len=0) == 13e-3


def test_fit_recovers_the_coefficients_of_exact_samples():
    shapes = grid()
    model = ServedCostModel.fit(shapes, [TRUE.step_time(s) for s in shapes])
    for name in FITTED:
        assert getattr(model, name) == pytest.approx(getattr(TRUE, name), rel=1e-6, abs=1e-12)


def test_fit_keeps_the_line_and_floor_of_the_majority_under_slow_outliers():
    """A third of the small prefill steps 8 ms slower (as one H100 profile's second repeat):
    the line still comes from the rest, the floor lands on the clean steps' floor."""
    shapes, times = [], []
    rng = random.Random(0)
    for _ in range(3):
        for s in grid():
            t = TRUE.step_time(s)
            if s.num_prefill_tokens and t == TRUE.prefill_floor_s and rng.random() < 0.3:
                t += 8e-3
            shapes.append(s)
            times.append(t)
    assert any(t > 20e-3 and s.num_prefill_tokens < 512 for s, t in zip(shapes, times))
    model = ServedCostModel.fit(shapes, times)
    assert model.prefill_floor_s == pytest.approx(13e-3, rel=1e-9)
    for s in (StepShape(1024, 1024 * 1025 // 2), StepShape(2048, 2048 * 2049 // 2, 16, 9600)):
        assert model.step_time(s) == pytest.approx(TRUE.step_time(s), rel=0.01)


def test_fit_with_too_few_decode_steps_is_the_linear_fit():
    shapes = [StepShape(p, p * (p + 1) // 2) for p in (16, 64, 256)] + [StepShape(0, 0, 1, 100)]
    times = [0.01 + 1e-4 * s.num_prefill_tokens for s in shapes]
    assert ServedCostModel.fit(shapes, times) == StepCostModel.fit(shapes, times)


def test_corrections_add_per_kind_offsets_after_the_scale():
    corrected = with_corrections(TRUE, decode_s=-0.5e-3, prefill_s=2e-3, scale=1.5)
    decode, lone = StepShape(0, 0, 4, 2400), StepShape(16, 136)
    big = StepShape(2048, 2048 * 2049 // 2)
    assert corrected.step_time(decode) == pytest.approx(1.5 * TRUE.step_time(decode) - 0.5e-3)
    assert corrected.step_time(lone) == pytest.approx(1.5 * 13e-3 + 2e-3)  # the floor
    assert corrected.step_time(big) == pytest.approx(1.5 * TRUE.step_time(big) + 2e-3)


def test_a_plain_model_as_served_prices_every_shape_the_same():
    plain = StepCostModel(0.002, 3e-5, 1e-9, 2e-4, 5e-8)
    served = ServedCostModel.of(plain)
    for s in grid():
        assert served.step_time(s) == pytest.approx(plain.step_time(s), rel=1e-12)


def test_cost_dict_round_trip():
    pipelined = ServedCostModel.of(TRUE, pipelined=True)
    assert cost_from_dict(pipelined.to_dict()) == pipelined
    assert cost_from_dict(TRUE.to_dict()) == TRUE
    plain = StepCostModel(0.002, 3e-5, 1e-9, 2e-4, 5e-8)
    assert type(cost_from_dict(plain.to_dict())) is StepCostModel


def test_a_pipelined_floor_hides_the_step_before():
    lone = (16, 136, 0, 0)
    assert TRUE.shape_time(*lone, overlap_s=7e-3) == 13e-3  # not pipelined: no overlap
    pipelined = ServedCostModel.of(TRUE, pipelined=True)
    assert pipelined.shape_time(*lone, overlap_s=7e-3) == pytest.approx(6e-3)
    linear = TRUE.shape_time(2048, 2048 * 2049 // 2, 0, 0)
    assert pipelined.shape_time(2048, 2048 * 2049 // 2, 0, 0, overlap_s=7e-3) == linear


def _instance(cost) -> SimInstance:
    config = SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=8)
    return SimInstance(0, "fused-0", lambda: Scheduler(config, 64, 16), CostExecutor(cost))


def test_sim_instance_overlaps_only_back_to_back_steps():
    pipelined = ServedCostModel.of(TRUE, pipelined=True)
    inst = _instance(pipelined)
    decode = 7e-3 + 1e-5 + 1.5e-7 * 17 - 5e-4  # one seq, 17 tokens of context
    inst.scheduler.add_request(Request("a", tuple(range(10, 26)), SamplingParams(3), 0.0))
    assert inst.start_step(0.0) == 13e-3  # prefill after idle: the whole floor
    inst.end_step(13e-3)
    assert inst.start_step(13e-3) == pytest.approx(decode)
    inst.end_step(13e-3 + decode)
    # a prompt joins right as the decode step ends: its step's floor overlaps that step
    inst.scheduler.add_request(Request("b", tuple(range(30, 46)), SamplingParams(1), 0.02))
    joined = inst.start_step(13e-3 + decode)
    assert joined == pytest.approx(13e-3 - decode)


def test_sim_instance_does_not_overlap_a_step_after_an_idle_gap():
    inst = _instance(ServedCostModel.of(TRUE, pipelined=True))
    inst.scheduler.add_request(Request("a", tuple(range(10, 26)), SamplingParams(1), 0.0))
    assert inst.start_step(0.0) == 13e-3
    inst.end_step(13e-3)
    assert not inst.scheduler.has_unfinished
    inst.scheduler.add_request(Request("b", tuple(range(30, 46)), SamplingParams(1), 1.0))
    assert inst.start_step(1.0) == 13e-3
    assert inst.executor.overlap_s == 0.0
