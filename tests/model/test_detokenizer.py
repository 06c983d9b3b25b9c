"""IncrementalDetokenizer: streamed pieces add up to the full decode, never with broken UTF-8."""

from __future__ import annotations

import random

import pytest

from pdserve.model.detokenizer import IncrementalDetokenizer
from pdserve.model.loader import default_gguf_path
from pdserve.model.tokenizer import Tokenizer

TEXT = "Streaming 日本語 and emoji 🤖🎉👨‍👩‍👧 with accents: naïve café, done."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_gguf_path())


def test_text_splits_multibyte_characters_across_tokens(tokenizer):
    """Precondition of the tests below: some single tokens decode to incomplete UTF-8."""
    ids = tokenizer.encode(TEXT)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_one_token_at_a_time_equals_full_decode(tokenizer):
    ids = tokenizer.encode(TEXT)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push([i]) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)


def test_random_chunks_after_a_prompt_equal_full_decode(tokenizer):
    prompt = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    ids = tokenizer.encode(TEXT)
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids=prompt)
    rng = random.Random(0)
    pieces, i = [], 0
    while i < len(ids):
        size = rng.randint(1, 4)
        pieces.append(detok.push(ids[i : i + size]))
        i += size
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)


def test_special_tokens_are_skipped_unless_asked(tokenizer):
    ids = tokenizer.encode("Hi") + [2]
    assert "".join(IncrementalDetokenizer(tokenizer).push([i]) for i in ids) == "Hi"
    keep = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    assert "".join(keep.push([i]) for i in ids) == "Hi<|im_end|>"
