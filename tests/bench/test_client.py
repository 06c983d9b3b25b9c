import pytest

from pdserve.bench.arrivals import with_arrivals
from pdserve.bench.client import ClientConfig, run_load
from pdserve.bench.workload import multi_turn_workload, random_workload
from pdserve.metrics import itls_s, summarize, ttft_s


def _config(server, **kw):
    kw.setdefault("request_timeout_s", 10.0)
    return ClientConfig(server.base_url, "fake", show_progress=False, **kw)


def test_records_ttft_itl_and_token_counts(fake_server):
    server = fake_server(first_delay_s=0.1, token_delay_s=0.02)
    reqs = random_workload(4, input_len=12, output_len=6, vocab_size=100)
    run = run_load(reqs, _config(server))
    assert run.prompt_format == "tokens"
    assert server.prompts[0] in [list(r.prompt_token_ids) for r in reqs]
    for t in run.timelines:
        assert t.is_success and t.error == ""
        assert t.num_output_tokens == 6 and len(t.token_times_s) == 6
        assert t.prompt_len == 12
        assert 0.09 < ttft_s(t) < 0.5
        assert all(0.015 < gap < 0.2 for gap in itls_s(t))
    s = summarize(run.timelines, run.duration_s)
    assert s.completed == 4 and s.total_output_tokens == 24


def test_a_closing_chunk_that_carries_the_tokens_gives_the_first_token_time(fake_server):
    """A server may send a short answer's tokens in one closing chunk (empty text for a model
    without a tokenizer): the first token arrived with it, so TTFT is its time."""
    server = fake_server(mode="one-closing-chunk", first_delay_s=0.1, token_delay_s=0.0)
    run = run_load(random_workload(2, 12, 2, vocab_size=100), _config(server))
    for t in run.timelines:
        assert t.is_success and t.error == ""
        assert t.num_output_tokens == 2 and len(t.token_times_s) == 1
        assert 0.09 < ttft_s(t) < 0.5


def test_chat_endpoint_sends_text_messages(fake_server):
    server = fake_server(first_delay_s=0.0, token_delay_s=0.0)
    reqs = random_workload(2, 5, 3, vocab_size=100)
    run = run_load(reqs, _config(server, endpoint="/v1/chat/completions"))
    assert all(t.is_success and t.num_output_tokens == 3 for t in run.timelines)
    assert server.prompts[0][0]["role"] == "user"
    assert len(server.prompts[0][0]["content"].split()) == 5


def test_auto_format_falls_back_to_text_when_ids_are_refused(fake_server):
    server = fake_server(mode="text-only", first_delay_s=0.0, token_delay_s=0.0)
    run = run_load(random_workload(5, 4, 2, vocab_size=100), _config(server))
    assert run.prompt_format == "text"
    assert all(t.is_success for t in run.timelines)
    assert len(server.prompts) == 6  # one refused token-id probe, then five text prompts
    assert sum(isinstance(p, list) for p in server.prompts) == 1


@pytest.mark.parametrize(
    "mode, error", [("500", "HTTP 500"), ("429", "HTTP 429"), ("drop", "ClientPayloadError")]
)
def test_failures_are_counted_and_the_run_completes(fake_server, mode, error):
    server = fake_server(mode=mode, first_delay_s=0.0, token_delay_s=0.005)
    run = run_load(random_workload(6, 4, 5, vocab_size=100), _config(server))
    s = summarize(run.timelines, run.duration_s, {"ttft": 1.0})
    assert s.failed == 6 and s.completed == 0 and s.goodput == 0.0
    assert all(error in t.error for t in run.timelines), run.timelines[0].error


def test_mixed_failures_are_counted_apart_from_successes(fake_server):
    server = fake_server(mode="every-3rd-500", first_delay_s=0.0, token_delay_s=0.0)
    run = run_load(random_workload(9, 4, 2, vocab_size=100), _config(server, max_concurrency=1))
    s = summarize(run.timelines, run.duration_s)
    assert (s.completed, s.failed) == (6, 3)


def test_request_timeout_is_a_failure_not_a_hang(fake_server):
    server = fake_server(first_delay_s=5.0)
    run = run_load(random_workload(2, 4, 2, vocab_size=100), _config(server, request_timeout_s=0.3))
    assert all(not t.is_success and "timeout" in t.error for t in run.timelines)
    assert run.duration_s < 2.0


def test_unreachable_server_is_a_failure():
    config = ClientConfig("http://127.0.0.1:9", "fake", show_progress=False, request_timeout_s=2)
    run = run_load(random_workload(2, 4, 2, vocab_size=100), config)
    assert all(not t.is_success and "Connect" in t.error for t in run.timelines)


def test_max_concurrency_serializes_requests(fake_server):
    server = fake_server(first_delay_s=0.05, token_delay_s=0.0)
    run = run_load(random_workload(4, 4, 1, vocab_size=100), _config(server, max_concurrency=1))
    spans = sorted((t.send_s, t.end_s) for t in run.timelines)
    assert all(
        prev_end <= nxt_send + 1e-3 for (_, prev_end), (nxt_send, _) in zip(spans, spans[1:])
    )


def test_arrivals_are_respected(fake_server):
    server = fake_server(first_delay_s=0.0, token_delay_s=0.0)
    reqs = with_arrivals(random_workload(5, 4, 1, vocab_size=100), 20.0, seed=0)
    run = run_load(reqs, _config(server))
    for r, t in zip(reqs, run.timelines):
        assert t.send_s >= r.arrival_s - 1e-3 and t.send_s < r.arrival_s + 0.1


def test_multi_turn_sends_a_turn_after_the_previous_one_finished(fake_server):
    server = fake_server(first_delay_s=0.05, token_delay_s=0.0)
    reqs = multi_turn_workload(2, 3, user_turn_len=4, output_len=2, vocab_size=100)
    run = run_load(reqs, _config(server))
    by_key = {(r.session_id, r.turn): t for r, t in zip(reqs, run.timelines)}
    for (s, turn), t in by_key.items():
        if turn > 0:
            assert t.send_s >= by_key[(s, turn - 1)].end_s
