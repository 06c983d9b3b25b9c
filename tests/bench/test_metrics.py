import math

import pytest

from pdserve import metrics
from pdserve.metrics import (
    RequestTimeline,
    cost_per_million_tokens,
    e2e_s,
    itls_s,
    meets_slos,
    percentile,
    summarize,
    tpot_s,
    ttft_s,
)


def tl(send, times, n=None, end=None, ok=True, prompt_len=10, error=""):
    return RequestTimeline(
        send_s=send,
        prompt_len=prompt_len,
        token_times_s=list(times),
        num_output_tokens=len(times) if n is None else n,
        end_s=times[-1] if end is None and times else end,
        is_success=ok,
        error=error,
    )


def test_percentile_interpolates_linearly_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_ttft_e2e_itl_tpot_of_a_timeline():
    t = tl(1.0, [1.5, 1.6, 1.8, 2.1])
    assert ttft_s(t) == pytest.approx(0.5)
    assert e2e_s(t) == pytest.approx(1.1)
    assert itls_s(t) == pytest.approx([0.1, 0.2, 0.3])
    assert tpot_s(t) == pytest.approx(0.6 / 3)


def test_tpot_counts_usage_tokens_not_chunks():
    t = tl(0.0, [1.0, 2.0], n=5)  # two chunks carrying five tokens
    assert tpot_s(t) == pytest.approx(1.0 / 4)


def test_tpot_is_undefined_for_one_token_and_excluded_from_stats():
    one = tl(0.0, [0.3])
    two = tl(0.0, [0.1, 0.3])
    assert tpot_s(one) is None
    s = summarize([one, two], duration_s=1.0)
    assert s.stats("tpot").count == 1
    assert s.stats("tpot").mean_ms == pytest.approx(200.0)
    assert s.stats("ttft").count == 2


def test_goodput_counts_requests_meeting_every_slo():
    slos = {"ttft": 0.2, "tpot": 0.05}
    good = tl(0.0, [0.1, 0.14, 0.18])  # ttft 100 ms, tpot 40 ms
    slow_first = tl(0.0, [0.3, 0.31])  # ttft misses
    slow_decode = tl(0.0, [0.1, 0.3])  # tpot 200 ms misses
    one_token = tl(0.0, [0.15])  # no tpot to miss
    failed = tl(0.0, [], ok=False, end=0.5, error="HTTP 500: boom")
    runs = [good, slow_first, slow_decode, one_token, failed]
    assert [meets_slos(t, slos) for t in runs] == [True, False, False, True, False]
    s = summarize(runs, duration_s=2.0, slos_s=slos)
    assert s.goodput == pytest.approx(1.0)  # 2 good requests / 2 s
    assert s.slo_attainment == pytest.approx(2 / 5)
    assert s.failed == 1 and s.completed == 4
    assert dict(s.errors) == {"HTTP 500: boom": 1}


def test_unknown_slo_metric_is_refused():
    with pytest.raises(ValueError, match="unknown SLO metric"):
        meets_slos(tl(0.0, [0.1]), {"itl": 0.1})


def test_cost_per_million_output_tokens():
    # 2 GPUs at $3/h for 36 s = $0.06, over 12,000 tokens = $5 per million
    assert cost_per_million_tokens(12_000, 36.0, 3.0, 2) == pytest.approx(5.0)
    assert cost_per_million_tokens(0, 36.0, 3.0) is None
    assert cost_per_million_tokens(10, 36.0, 0.0) is None
    s = summarize([tl(0.0, [0.1] * 1, n=12_000)], 36.0, gpu_cost_per_hour=3.0, num_gpus=2)
    assert s.cost_per_million_output_tokens == pytest.approx(5.0)


def test_throughputs_count_only_successful_requests():
    ok = tl(0.0, [0.1, 0.2, 0.3], prompt_len=100)
    bad = tl(0.0, [0.1], ok=False, prompt_len=1000)
    s = summarize([ok, bad], duration_s=2.0)
    assert s.request_throughput == 0.5
    assert s.output_throughput == 1.5
    assert s.total_token_throughput == pytest.approx(51.5)
    assert s.goodput is None and s.slo_attainment is None


def test_to_dict_has_flat_vllm_style_keys():
    s = summarize([tl(0.0, [0.1, 0.2])], 1.0, {"e2el": 1.0}, percentiles=(50, 99.9))
    d = s.to_dict()
    assert d["mean_ttft_ms"] == pytest.approx(100.0)
    assert d["p99_9_itl_ms"] == pytest.approx(100.0)
    assert d["slos_ms"] == {"e2el": 1000.0}
    assert d["completed"] == 1


def test_std_is_population_std():
    s = summarize([tl(0.0, [0.1]), tl(0.0, [0.3])], 1.0)
    assert s.stats("ttft").std_ms == pytest.approx(100.0)


def test_prometheus_names_and_buckets_are_defined_here():
    assert metrics.TTFT_SECONDS == "pdserve:time_to_first_token_seconds"
    assert metrics.REQUEST_SUCCESS_TOTAL == "pdserve:request_success_total"
    assert metrics.FINISHED_REASON_LABEL == "finished_reason"
    for buckets in (metrics.TTFT_BUCKETS_S, metrics.ITL_BUCKETS_S, metrics.E2E_BUCKETS_S):
        assert list(buckets) == sorted(buckets) and len(set(buckets)) == len(buckets)


def test_metrics_module_imports_only_the_standard_library():
    import re
    from pathlib import Path

    source = Path(metrics.__file__).read_text()
    top_level = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
    assert top_level == {"__future__", "math", "collections", "dataclasses"}
