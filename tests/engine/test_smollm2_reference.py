"""The embedded SmolLM2-135M-Instruct (Q4_1 GGUF) against HF transformers loading the same file:
greedy tokens equal, token for token, for chat and plain prompts, short and over 512 tokens."""

from pathlib import Path

import pytest
import torch

from pdserve.model.loader import default_gguf_path
from pdserve.types import SamplingParams

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

NEW_TOKENS = 64
PARAGRAPH = (
    "The history of computing is a story of abstraction layered on abstraction. Engineers built "
    "machines from relays, then vacuum tubes, then transistors, and each generation hid the "
    "details of the one below it so that programmers could think about larger problems. "
)
PLAIN = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "1, 2, 3, 5, 8, 13,",
    "Once upon a time, in a small village by the sea,",
    "Les chats sont des animaux",
    PARAGRAPH * 12 + "In summary,",  # > 512 tokens
]
CHAT = [
    "What is the boiling point of water?",
    "Write a haiku about the moon.",
    "Explain what a hash table is in two sentences.",
    "Translate 'good morning' into Spanish.",
    "List three primary colors.",
    PARAGRAPH * 11 + "Summarize the text above in one sentence.",  # > 512 tokens
]


@pytest.fixture(scope="module")
def hf():
    path = default_gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return tok, model.eval()


@pytest.fixture(scope="module")
def prompts(hf):
    tok, _ = hf
    ids = [tok.encode(p) for p in PLAIN]
    for question in CHAT:
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids.append(tok.encode(text, add_special_tokens=False))
    return ids


@pytest.fixture(scope="module")
def hf_outputs(hf, prompts):
    _, model = hf
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            g = model.generate(
                ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
            )
            outs.append(g[0, len(p) :].tolist())
    return outs


def test_prompts_cover_short_long_chat_and_plain(prompts):
    lengths = [len(p) for p in prompts]
    assert len(prompts) == 12
    assert max(lengths[:6]) > 512 and max(lengths[6:]) > 512 and min(lengths) < 16


def test_greedy_tokens_equal_hf_transformers(make_llm, prompts, hf_outputs):
    llm = make_llm("", num_blocks=1024)
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    outputs = llm.generate(prompts, greedy)
    for i, (ours, ref) in enumerate(zip(outputs, hf_outputs)):
        assert ours.token_ids == ref, f"prompt {i} diverges"


def test_default_model_is_the_embedded_gguf():
    assert default_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(default_gguf_path()).stat().st_size > 50_000_000
