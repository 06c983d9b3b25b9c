"""The step-time model: shapes from plans, least-squares fit, roofline, online fit."""

from __future__ import annotations

import pytest

from pdserve.bench.floor import SHAPES, matmul_params
from pdserve.cluster.cost_model import OnlineStepModel, StepCostModel, StepShape
from pdserve.sim.profiles import list_profiles, load_profile

TRUE = StepCostModel(0.002, 3e-5, 1e-9, 2e-4, 5e-8)


def test_fit_recovers_the_coefficients_of_exact_samples():
    shapes = [
        StepShape(p, p * c + p * (p + 1) // 2, d, d * c)
        for p in (0, 16, 256, 1024)
        for d in (0, 1, 8, 32)
        for c in (0, 100, 900)
    ]
    model = StepCostModel.fit(shapes, [TRUE.step_time(s) for s in shapes])
    for got, want in zip(model.coefficients, TRUE.coefficients):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-15)


def test_fit_never_returns_negative_coefficients():
    shapes = [StepShape(p, 0, d, 0) for p in (10, 20, 30) for d in (1, 2)]
    times = [0.01 + 1e-4 * s.num_prefill_tokens - 1e-3 * s.num_decode_seqs for s in shapes]
    assert all(c >= 0 for c in StepCostModel.fit(shapes, times).coefficients)


def test_roofline_of_llama8b_on_h100():
    model = StepCostModel.roofline(SHAPES["llama-3.1-8b"], 784e12, 3014e9, step_overhead_s=0.0)
    params = matmul_params(SHAPES["llama-3.1-8b"])  # 7.5e9: the embedding is a lookup
    decode_step = model.step_time(StepShape(num_decode_seqs=1, num_decode_ctx_tokens=1000))
    kv_read = 1000 * 131072 / 3014e9  # 128 KiB of bf16 KV per token
    assert decode_step == pytest.approx(2 * params / 3014e9 + kv_read, rel=0.01)
    prefill = model.tokens_time(4096, context_len=0) - model.base_s
    assert prefill == pytest.approx(2 * params * 4096 / 784e12, rel=0.1)


def test_online_model_uses_the_prior_until_two_token_counts():
    online = OnlineStepModel(TRUE)
    online.observe(100, 0.5)
    assert online.step_time(100) == TRUE.tokens_time(100)
    online.observe(300, 0.9)
    assert online.step_time(200) == pytest.approx(0.7)


def test_shipped_profiles_load():
    names = list_profiles()
    assert {"cpu-smollm2-135m", "h100-llama-3.1-8b-roofline", "h100-qwen3-0.6b-roofline"} <= set(
        names
    )
    for name in names:
        profile = load_profile(name)
        assert profile.num_blocks > 0 and profile.cost.base_s >= 0
        assert profile.kind == ("roofline" if name.endswith("roofline") else "measured")


def test_fit_weighs_errors_relative_to_the_step_time():
    """Big prefill steps that the linear model cannot follow (here 20 % over it) must not pull
    the small decode steps off: those stay exact, as TPOT depends on them (absolute least
    squares leaves them 6 % off here); the prefill terms take the rest."""
    truth = StepCostModel(0.007, 2e-5, 0.0, 1e-5, 5e-8)
    decode = [StepShape(0, 0, d, d * c) for d in (1, 4, 16, 64) for c in (128, 512, 1024)]
    prefill = [StepShape(p, p * (p + 1) // 2, 0, 0) for p in (256, 512, 1024, 2048, 4096, 8192)]
    times = [truth.step_time(s) for s in decode] + [1.2 * truth.step_time(s) for s in prefill]
    model = StepCostModel.fit(decode + prefill, times)
    for s in decode:
        assert model.step_time(s) == pytest.approx(truth.step_time(s), rel=1e-6)
    for s in prefill:
        assert model.step_time(s) == pytest.approx(1.2 * truth.step_time(s), rel=0.1)
