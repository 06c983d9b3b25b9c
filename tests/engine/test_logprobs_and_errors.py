import subprocess
import sys

import pytest
import torch

from pdserve.model.hf_compat import hf_state_dict, to_hf_config
from pdserve.types import SamplingParams

transformers = pytest.importorskip("transformers")

PROMPT = [5, 17, 200, 33, 9, 41, 77, 120, 3, 64]


@pytest.fixture
def tiny(make_llm):
    return make_llm("dummy:tiny-llama", dtype="float32", block_size=4)


def hf_logprobs(llm, token_ids):
    hf = transformers.AutoModelForCausalLM.from_config(
        to_hf_config(llm.engine.model_config), dtype=torch.float32
    )
    hf.load_state_dict(hf_state_dict(llm.core.executor.model))
    with torch.inference_mode():
        return hf.eval()(torch.tensor([token_ids])).logits[0].log_softmax(-1)


def test_generated_token_logprobs_match_hf(tiny):
    out = tiny.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0, logprobs=3))[0]
    ref = hf_logprobs(tiny, PROMPT + out.token_ids)
    assert len(out.logprobs) == 5
    for i, lp in enumerate(out.logprobs):
        row = ref[len(PROMPT) - 1 + i]
        assert lp.token_id == out.token_ids[i] and lp.rank == 1  # greedy picks the top token
        assert lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-4)
        top_ids = row.topk(3).indices.tolist()
        assert [t for t, _ in lp.top] == top_ids


def test_prompt_logprobs_match_hf_with_chunked_prefill(make_llm):
    llm = make_llm("dummy:tiny-llama", dtype="float32", block_size=4, max_num_batched_tokens=3)
    out = llm.generate([PROMPT], SamplingParams(max_tokens=0, prompt_logprobs=2))[0]
    ref = hf_logprobs(llm, PROMPT)
    assert out.token_ids == [] and out.finish_reason == "length"
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(PROMPT)
    for pos in range(1, len(PROMPT)):
        lp = out.prompt_logprobs[pos]
        assert lp.token_id == PROMPT[pos]
        assert lp.logprob == pytest.approx(ref[pos - 1, PROMPT[pos]].item(), abs=1e-4)
        assert len(lp.top) == 2


def test_prompt_logprob_requests_bypass_the_prefix_cache(tiny):
    tiny.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0))
    first = tiny.generate([PROMPT], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert first.num_cached_tokens == 0
    assert len(first.prompt_logprobs) == len(PROMPT)


def test_shared_prefix_hit_is_reported_and_skips_compute(tiny):
    plans = []
    execute = tiny.core.executor.execute
    tiny.core.executor.execute = lambda plan: plans.append(plan.summary()) or execute(plan)
    prefix = list(range(100, 112))  # 3 blocks of 4
    tiny.generate([prefix + [1, 2]], SamplingParams(max_tokens=1, temperature=0))
    plans.clear()
    out = tiny.generate([prefix + [7, 8, 9]], SamplingParams(max_tokens=1, temperature=0))[0]
    assert plans[0] == ((out.request_id, 12, 3),)  # only the 3 uncached tokens are computed
    assert out.num_cached_tokens == 12
    assert tiny.core.scheduler.stats.prefix_hits == 12


def test_too_long_prompt_raises_and_leaves_nothing_allocated(tiny):
    context = tiny.engine.config.scheduler.max_model_len
    with pytest.raises(
        ValueError,
        match=f"the prompt has {context + 5} tokens but the model's context is {context} tokens",
    ):
        tiny.generate([[1] * (context + 5)], SamplingParams(max_tokens=1))
    pool = tiny.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks and not tiny.core.has_unfinished


def test_unknown_model_path_names_it():
    from pdserve.engine.llm import LLM

    with pytest.raises(ValueError, match="/no/such/model.gguf"):
        LLM("/no/such/model.gguf")


def test_cli_names_the_bad_flag():
    result = subprocess.run(
        [sys.executable, "-m", "pdserve", "generate", "hi", "--temperature", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--temperature: temperature must be >= 0, got -1.0" in result.stderr
