import pytest

from pdserve.bench.offline import OfflineResult, run_offline
from pdserve.bench.workload import random_workload


def test_offline_result_rates():
    r = OfflineResult(
        "hf", "m", num_requests=2, prompt_tokens=300, output_tokens=100, elapsed_s=2.0
    )
    assert (r.output_tok_per_s, r.total_tok_per_s) == (50.0, 200.0)
    assert r.to_dict()["total_tok_per_s"] == 200.0


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'vllm'"):
        run_offline([], "vllm", "m")


@pytest.mark.slow
def test_hf_backend_on_cpu_generates_every_requested_token():
    reqs = random_workload(5, 12, 4, range_ratio=0.5, vocab_size=1000, seed=0)
    result = run_offline(reqs, "hf", "dummy:tiny", device="cpu", batch_size=2)
    assert result.output_tokens == sum(r.output_len for r in reqs)
    assert result.prompt_tokens == sum(r.prompt_len for r in reqs)
    assert result.output_tok_per_s > 0
