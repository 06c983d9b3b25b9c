"""The embedded SmolLM2-135M-Instruct Q4_1 GGUF matches HF transformers loading the same file."""

from __future__ import annotations

import pytest
import torch
from model_testing import PagedRunner, greedy_generate, hf_greedy, hf_logits

from pdserve.model.loader import default_gguf_path, load_model, resolve_model_spec

pytestmark = pytest.mark.slow

# Chat prompt "Explain why the sky is blue in two sentences." (SmolLM2 template, default system
# message). Greedy top-1/top-2 margins stay >= 0.19 over 16 tokens, so rounding cannot flip them.
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018]
PROMPT += [411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 36971, 1701, 260, 6376, 314, 4461, 281]
PROMPT += [827, 8545, 30, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def ours():
    model, cfg = load_model("", torch.float32, "cpu")
    return model, cfg


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    path = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def test_default_spec_is_the_embedded_gguf():
    resolved = resolve_model_spec("")
    assert resolved.kind == "gguf"
    assert resolved.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_config_from_gguf_metadata(ours):
    _, cfg = ours
    assert (cfg.arch, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert (cfg.rope_theta, cfg.max_position_embeddings) == (100000.0, 8192)
    assert cfg.tie_word_embeddings and not cfg.attention_bias and not cfg.qk_norm
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (1, (2,))


def test_prompt_logits_equal_hf(ours, hf):
    model, _ = ours
    (logits,) = PagedRunner(model, block_size=16).step([(0, PROMPT)])
    torch.testing.assert_close(logits, hf_logits(hf, PROMPT), atol=1e-4, rtol=1e-4)


def test_greedy_16_tokens_equal_hf(ours, hf):
    model, _ = ours
    (tokens,) = greedy_generate(model, [PROMPT], max_new_tokens=16, block_size=16)
    assert tokens == hf_greedy(hf, PROMPT, 16)
