"""Token events -> text: incremental detokenization and stop strings, per request.

Runs where the text is wanted (the server's process, or `LLM`), never on the engine's loop. A
stop string ends the request here; the caller then aborts it in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdserve.types import FinishReason, Logprob, SamplingParams, TokenEvent


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    logprobs: list[Logprob] = field(default_factory=list)
    prompt_logprobs: list[Logprob | None] | None = None
    num_cached_tokens: int = 0
    stop_reason: str | int | None = None  # the stop string or token that ended it
    error: str | None = None
    arrival_s: float = 0.0
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    finished_s: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class OutputTracker:
    """Accumulates one request's output. `add(event) -> new text` (stop strings applied)."""

    def __init__(self, output: RequestOutput, sampling: SamplingParams, detokenizer=None):
        self.output = output
        self.sampling = sampling
        self.detokenizer = detokenizer  # None: token ids only (no tokenizer)
        self._max_stop_len = max((len(s) for s in sampling.stop), default=0)
        self._held = ""  # text that could still be the start of a stop string

    def add(self, event: TokenEvent, now: float) -> str:
        out = self.output
        if event.prompt_logprobs is not None:
            out.prompt_logprobs = list(event.prompt_logprobs)
        out.num_cached_tokens = event.num_cached_tokens
        if event.new_token_ids:
            if out.first_token_s is None:
                out.first_token_s = now
            out.token_times_s.extend([now] * len(event.new_token_ids))
        out.token_ids.extend(event.new_token_ids)
        out.logprobs.extend(event.logprobs)
        if event.error:
            out.error = event.error
        if event.finish_reason is not None:
            out.finish_reason = event.finish_reason
            out.finished_s = now
            if event.finish_reason is FinishReason.STOP and event.new_token_ids:
                out.stop_reason = event.new_token_ids[-1]
        if self.detokenizer is None:
            return ""
        new_text = self.detokenizer.push(list(event.new_token_ids))
        return self._emit(new_text, final=event.finish_reason is not None)

    def _emit(self, new_text: str, final: bool) -> str:
        """Append text, cutting at the first stop string; hold back a possible stop prefix."""
        out = self.output
        if not self.sampling.stop:
            out.text += new_text
            return new_text
        pending = self._held + new_text
        hits = [(at, stop) for stop in self.sampling.stop if (at := pending.find(stop)) >= 0]
        if hits:
            at, stop = min(hits)
            end = at + len(stop) if self.sampling.include_stop_str_in_output else at
            out.text += pending[:end]
            out.finish_reason = FinishReason.STOP
            out.stop_reason = stop
            self._held = ""
            return pending[:end]
        # Longest tail of `pending` that is a prefix of some stop string stays held.
        hold = 0 if final else self._hold_len(pending)
        emitted = pending[: len(pending) - hold]
        self._held = pending[len(pending) - hold :]
        out.text += emitted
        return emitted

    def _hold_len(self, text: str) -> int:
        for n in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(stop.startswith(tail) for stop in self.sampling.stop):
                return n
        return 0
