"""Incremental detokenization: the new text of each pushed batch of token ids, never broken UTF-8.

Two offsets into the token ids (prefix/read offset technique):

    ids:  | ... prompt ... | gen 0 | gen 1 | gen 2 | gen 3 |
                 ^prefix_offset      ^read_offset
    decode(ids[prefix:read])  = text already emitted (re-decoded for context)
    decode(ids[prefix:])      = that text + the new text

Decoding a short window keeps each push O(window), and the few tokens of left context let the
decoder apply spacing rules exactly as a full decode would. Text ending in U+FFFD is an
incomplete multi-byte character: it is held back until later tokens complete it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.model.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5  # left context kept from the prompt


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids = list(prompt_token_ids)
        self.read_offset = len(self.token_ids)
        self.prefix_offset = max(self.read_offset - _CONTEXT_TOKENS, 0)
        self.output_text = ""

    def push(self, token_ids: Sequence[int]) -> str:
        """Append generated ids; return the text they complete (possibly "")."""
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        full_text = self._decode(self.prefix_offset, len(self.token_ids))
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        new_text = full_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        self.output_text += new_text
        return new_text

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.token_ids[start:end], self.skip_special_tokens)
