"""A pipelined (async scheduling) GPU engine's step model: `ServedCostModel.fit_split` from a
profile's host and device times, `host_time` / `device_time`, and `AsyncPipeline`'s timeline of
launches and collects (engine.core.EngineCore._step_async)."""

from __future__ import annotations

import pytest

from pdserve.cluster.cost_model import StepShape
from pdserve.sim.profiles import AsyncPipeline, ServedCostModel, cost_from_dict, with_corrections

# device: decode 6.5 ms + 10 us/seq + 50 ns/context token; prefill 1 ms + 20 us/token
DEVICE = ServedCostModel(
    base_s=6.5e-3, per_prefill_token_s=2e-5, per_prefill_pair_s=0.0, per_decode_seq_s=1e-5,
    per_decode_ctx_token_s=5e-8, prefill_base_s=-5.5e-3, per_mixed_seq_s=2e-5,
    per_mixed_ctx_token_s=5e-8,
)  # fmt: skip


def profile() -> tuple[list[StepShape], list[float], list[float]]:
    """Decode steps (host 0.6 ms), and prefill steps whose host launch takes 13, 14, 15, 16 or
    40 ms whatever their size: small ones host-bound, 2,048-token ones device-bound."""
    shapes, host, device = [], [], []
    for b in (1, 2, 4, 16):
        for c in (128, 1024):
            shapes.append(StepShape(0, 0, b, b * c))
            host.append(6e-4)
            device.append(DEVICE.step_time(shapes[-1]))
    launches = [13e-3, 14e-3, 15e-3, 16e-3, 40e-3]
    for i, p in enumerate((16, 64, 256, 512, 1024, 1536, 2048, 2048, 2048, 2048)):
        shape = StepShape(p, 0, 0, 0)
        launch = launches[i % len(launches)]
        shapes.append(shape)
        host.append(launch)
        device.append(max(launch, DEVICE.device_time(p, 0, 0, 0)))
    return shapes, host, device


def test_fit_split_takes_the_device_line_from_device_bound_steps_and_the_launch_as_jitter():
    model = ServedCostModel.fit_split(*profile(), num_quantiles=5)
    assert model.pipelined
    assert model.graph_launch_s == pytest.approx(6e-4)
    # ten launches: 13, 14, 15, 16, 40 ms twice: mean 19.6 ms, quantiles 0/25/50/75/100 %
    assert model.prefill_floor_s == pytest.approx(19.6e-3)
    assert model.launch_quantiles_s == pytest.approx((13e-3, 14e-3, 15e-3, 16e-3, 40e-3))
    # the line from the 1,536- and 2,048-token steps (device-bound), not the host-bound spans
    for p in (512, 2048):
        assert model.device_time(p, 0, 0, 0) == pytest.approx(1e-3 + 2e-5 * p, rel=1e-6)
    assert model.device_time(0, 0, 4, 4000) == pytest.approx(6.5e-3 + 4e-5 + 2e-4, rel=1e-6)


def test_host_time_is_the_mean_launch_or_a_drawn_quantile():
    model = ServedCostModel.fit_split(*profile(), num_quantiles=5)
    assert model.host_time(0) == pytest.approx(6e-4)
    assert model.host_time(512) == pytest.approx(19.6e-3)
    assert model.host_time(512, u=0.0) == pytest.approx(13e-3)
    assert model.host_time(512, u=0.5) == pytest.approx(15e-3)
    assert model.host_time(512, u=0.875) == pytest.approx(28e-3)  # halfway from 16 to 40 ms


def test_split_model_round_trips_and_takes_corrections():
    model = ServedCostModel.fit_split(*profile(), num_quantiles=5)
    assert cost_from_dict(model.to_dict()) == model
    corrected = with_corrections(model, decode_s=-1e-4, prefill_s=2e-3)
    assert corrected.launch_quantiles_s == pytest.approx((15e-3, 16e-3, 17e-3, 18e-3, 42e-3))
    assert corrected.host_time(512) == pytest.approx(21.6e-3)
    assert corrected.device_time(0, 0, 1, 100) == pytest.approx(model.device_time(0, 0, 1, 100)
                                                                - 1e-4)  # fmt: skip
    # the served launch is 2 ms longer than the profile's: the device's time is not
    assert corrected.device_time(512, 0, 0, 0) == pytest.approx(1e-3 + 2e-5 * 512)


def test_async_pipeline_delays_a_decode_step_until_the_next_launch_ends():
    """Decode step A (6.5 ms on the device) is in flight when a 512-token prefill B is
    launched at t=0 (20 ms of host launch, 11.24 ms of device work): A's tokens are out when
    B's launch ends, at 20 ms, and B's when the next decode C has launched and B is done."""
    model = ServedCostModel.of(DEVICE, prefill_floor_s=20e-3, graph_launch_s=5e-4,
                               pipelined=True)  # fmt: skip
    pipe = AsyncPipeline(model)
    _, a_end = pipe.launch(-5e-4, (0, 0, 1, 100))  # A launched just before
    assert a_end == pytest.approx(6.5e-3 + 1e-5 + 5e-6)
    b_launched, b_end = pipe.launch(0.0, (512, 0, 1, 101))
    assert b_launched == pytest.approx(20e-3)
    # B's kernels run as they arrive after A: device work 1 + 10.24 + 0.02 ms, but the last
    # kernel comes at 20 ms
    assert b_end == pytest.approx(20e-3)
    assert AsyncPipeline.collected_s(b_launched, a_end) == pytest.approx(20e-3)
    c_launched, c_end = pipe.launch(20e-3, (0, 0, 2, 203))
    assert c_launched == pytest.approx(20.5e-3)
    assert AsyncPipeline.collected_s(c_launched, b_end) == pytest.approx(20.5e-3)
    assert c_end == pytest.approx(20.5e-3 + 6.5e-3 + 2e-5 + 203 * 5e-8)


def test_async_pipeline_device_bound_steps_run_back_to_back():
    model = ServedCostModel.of(DEVICE, prefill_floor_s=5e-3, graph_launch_s=5e-4,
                               pipelined=True)  # fmt: skip
    pipe = AsyncPipeline(model)
    launched, end = pipe.launch(0.0, (2048, 0, 0, 0))  # 41.96 ms of device, 5 ms of launch
    assert (launched, end) == pytest.approx((5e-3, 1e-3 + 2e-5 * 2048))
    assert AsyncPipeline.collected_s(launched, None) == 5e-3  # nothing was in flight
    launched2, end2 = pipe.launch(5e-3, (0, 0, 1, 2049))  # a graph after it: starts at its end
    assert launched2 == pytest.approx(5.5e-3)
    assert end2 == pytest.approx(end + 6.5e-3 + 1e-5 + 2049 * 5e-8)
    assert AsyncPipeline.collected_s(launched2, end) == pytest.approx(end)


def test_decode_table_prices_each_measured_batch_as_measured_and_interpolates_between():
    """CPU-like decode steps (1: 128 ms, 2: 190, 3: 250, 4: 240, 8: 323 at no context, 40 us
    per context token), priced by a line 130 ms + 25 ms/seq: the table adds each measured
    size's miss, linear between sizes, the nearest size's outside them."""
    line = ServedCostModel(0.130, 0.0, 0.0, 0.025, 4e-5)
    measured = {1: 0.128, 2: 0.190, 3: 0.250, 4: 0.240, 8: 0.323}
    shapes, times = [], []
    for batch, t in measured.items():
        for ctx in (64, 256):  # two contexts each: the same miss
            shapes.append(StepShape(0, 0, batch, batch * ctx))
            times.append(t + 4e-5 * batch * ctx)
    shapes.append(StepShape(16, 136))  # a prefill step: not a decode miss
    times.append(0.5)
    model = line.with_decode_table(shapes, times)
    assert model.decode_batches == (1, 2, 3, 4, 8)
    misses = [t - (0.130 + 0.025 * b) for b, t in measured.items()]
    assert model.decode_residual_s == pytest.approx(tuple(misses))
    for batch, t in measured.items():
        assert model.step_time(StepShape(0, 0, batch, batch * 100)) == pytest.approx(
            t + 4e-5 * batch * 100
        )
    # 6 sequences: halfway between the misses at 4 (+0.010) and 8 (-0.007) on the line
    assert model.decode_time(6, 0) == pytest.approx(0.130 + 0.150 + 0.0015)
    assert model.decode_time(16, 0) == pytest.approx(0.130 + 0.400 - 0.007)
    assert model.step_time(StepShape(16, 136)) == line.step_time(StepShape(16, 136))
    assert cost_from_dict(model.to_dict()) == model
    assert with_corrections(model, scale=2.0).decode_time(3, 0) == pytest.approx(0.5)


def _async_instance(cost: ServedCostModel):
    from pdserve.config import SchedulerConfig
    from pdserve.sched.scheduler import Scheduler
    from pdserve.sim.instance import CostExecutor, SimInstance

    config = SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=8)
    return SimInstance(0, "fused-0", lambda: Scheduler(config, 64, 16), CostExecutor(cost))


def test_sim_instance_with_a_split_model_runs_steps_as_async_scheduling_does():
    """One request, 16 prompt tokens, 3 output tokens: the prefill's launch (20 ms) returns
    with nothing to collect; the next call launches the first decode (0.5 ms) and collects the
    prefill (its first token); each later call collects the decode before it."""
    from pdserve.types import Request, SamplingParams

    model = ServedCostModel.of(DEVICE, prefill_floor_s=20e-3, graph_launch_s=5e-4,
                               pipelined=True)  # fmt: skip
    inst = _async_instance(model)
    inst.scheduler.add_request(Request("a", tuple(range(10, 26)), SamplingParams(3), 0.0))
    assert inst.start_step(0.0) == pytest.approx(20e-3)  # launch only
    assert inst.end_step(20e-3) == []
    assert inst.start_step(20e-3) == pytest.approx(5e-4)  # decode 1 launched, prefill out
    assert [ev.new_token_ids for ev in inst.end_step(20.5e-3)] == [(11,)]
    decode_1 = 6.5e-3 + 1e-5 + 17 * 5e-8  # on the device from its launch end, 20.5 ms
    assert inst.start_step(20.5e-3) == pytest.approx(decode_1)  # decode 2 launched meanwhile
    assert [ev.new_token_ids for ev in inst.end_step(20.5e-3 + decode_1)] == [(11,)]
    decode_2 = 6.5e-3 + 1e-5 + 18 * 5e-8  # right after decode 1
    now = 20.5e-3 + decode_1
    assert inst.start_step(now) == pytest.approx(decode_2)  # nothing left to launch
    events = inst.end_step(now + decode_2)
    assert [(ev.new_token_ids, ev.is_finished) for ev in events] == [((11,), True)]
    assert not inst.scheduler.has_unfinished
