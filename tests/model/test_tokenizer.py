"""Our tokenizer equals transformers' (AutoTokenizer with gguf_file) on the embedded SmolLM2."""

from __future__ import annotations

import pytest

from pdserve.model.loader import default_gguf_path
from pdserve.model.tokenizer import Tokenizer, load_tokenizer

pytestmark = pytest.mark.slow  # transformers parses the GGUF vocabulary (~15 s)

TEXTS = [
    "Hello world!",
    "  leading spaces,\ttabs\n\nand newlines  ",
    "naïve café — 日本語のテキスト 🤖🎉 👨‍👩‍👧 family",
    "<|im_start|>user\nhi<|im_end|>\n",
    "12345 3.14159 x=y+z; print('s') {\"k\": [1, 2]}",
    "It's they're we'll I'd DON'T",
    "Ünïcödé\u00a0nbsp and ∑∫√ math",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there 😀"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_gguf(default_gguf_path())


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer

    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_transformers(ours, reference, text):
    assert ours.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_equals_transformers(ours, reference, text):
    ids = reference.encode(text)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(ours, reference, messages, add_generation_prompt):
    expected = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours.apply_chat_template(messages, add_generation_prompt) == expected


def test_special_token_ids(ours, reference):
    assert ours.eos_token_ids == (reference.eos_token_id,) == (2,)
    assert ours.bos_token_id == 1
    assert ours.vocab_size == len(reference) == 49152
    assert ours.id_to_token(2) == "<|im_end|>"


def test_hf_folder_tokenizer_equals_gguf_tokenizer(ours, reference, tmp_path):
    reference.save_pretrained(tmp_path)
    folder = Tokenizer.from_hf_folder(tmp_path)
    for text in TEXTS:
        assert folder.encode(text) == ours.encode(text)
    for messages in CONVERSATIONS:
        assert folder.apply_chat_template(messages) == ours.apply_chat_template(messages)
    assert folder.eos_token_ids == ours.eos_token_ids


def test_dummy_models_borrow_the_embedded_tokenizer():
    assert load_tokenizer("dummy:qwen3-0.6b").vocab_size == 49152
