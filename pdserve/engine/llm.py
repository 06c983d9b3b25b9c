"""`LLM`: offline generation with the in-process engine."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from pdserve.config import CacheConfig, EngineConfig, SchedulerConfig
from pdserve.engine.factory import Engine, build_engine
from pdserve.engine.output import OutputTracker, RequestOutput
from pdserve.types import FinishReason, Request, SamplingParams

Prompt = str | Sequence[int]

_CACHE_KEYS = {f for f in CacheConfig.__dataclass_fields__}
_SCHED_KEYS = {f for f in SchedulerConfig.__dataclass_fields__}


def make_engine_config(model: str = "", **kwargs) -> EngineConfig:
    """EngineConfig from flat keyword arguments (block_size=..., max_num_seqs=..., dtype=...)."""
    cache = {k: kwargs.pop(k) for k in list(kwargs) if k in _CACHE_KEYS}
    sched = {k: kwargs.pop(k) for k in list(kwargs) if k in _SCHED_KEYS}
    unknown = set(kwargs) - set(EngineConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
    return EngineConfig(
        model=model, cache=CacheConfig(**cache), scheduler=SchedulerConfig(**sched), **kwargs
    )


class LLM:
    def __init__(self, model: str = "", **kwargs):
        self.engine: Engine = build_engine(make_engine_config(model, **kwargs))
        self.core = self.engine.core
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    # ---- public API ----------------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run prompts (text or token ids) to completion, batched; outputs in prompt order."""
        prompts = _as_list(prompts)
        params = _as_params(sampling, len(prompts))
        trackers = [self._submit(p, s) for p, s in zip(prompts, params)]
        while self.core.has_unfinished:
            self._step(trackers)
        return [t.output for t in trackers]

    def chat(
        self,
        conversations: list[dict] | Sequence[list[dict]],
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Chat messages ({"role", "content"}) rendered with the model's chat template."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        return self.generate([self.render_chat(c) for c in conversations], sampling)

    def stream(self, prompt: Prompt, sampling: SamplingParams | None = None) -> Iterator[str]:
        """Yield new text as it is generated (one request)."""
        tracker = self._submit(prompt, sampling or SamplingParams())
        while not tracker.output.is_finished:
            yield from self._step([tracker]).get(tracker.output.request_id, [])

    def render_chat(self, messages: list[dict]) -> list[int]:
        text = self._require_tokenizer().apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ---- internals -----------------------------------------------------------------------

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids, not text")
        return self.tokenizer

    def _submit(self, prompt: Prompt, sampling: SamplingParams) -> OutputTracker:
        text = prompt if isinstance(prompt, str) else None
        token_ids = (
            list(self._require_tokenizer().encode(prompt)) if text is not None else list(prompt)
        )
        request_id = str(next(self._ids))
        eos = self.tokenizer.eos_token_ids if self.tokenizer is not None else ()
        eos = eos or self.engine.model_config.eos_token_ids
        now = self.core.clock()
        self.core.add_request(
            Request(request_id, tuple(token_ids), sampling, now, eos_token_ids=eos)
        )
        detok = None
        if self.tokenizer is not None:
            from pdserve.model.detokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids=token_ids)
        output = RequestOutput(request_id, text, token_ids, arrival_s=now)
        return OutputTracker(output, sampling, detok)

    def _step(self, trackers: list[OutputTracker]) -> dict[str, list[str]]:
        by_id = {t.output.request_id: t for t in trackers if not t.output.is_finished}
        new_text: dict[str, list[str]] = {}
        events = self.core.step()
        now = self.core.clock()
        for event in events:
            tracker = by_id.get(event.request_id)
            if tracker is None:
                continue
            new_text.setdefault(event.request_id, []).append(tracker.add(event, now))
            if tracker.output.is_finished and not event.is_finished:
                self.core.abort(event.request_id, FinishReason.STOP)  # a stop string matched
        return new_text


def _as_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        return [prompts]
    return list(prompts)


def _as_params(sampling, n: int) -> list[SamplingParams]:
    if sampling is None:
        sampling = SamplingParams()
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    if len(sampling) != n:
        raise ValueError(f"{len(sampling)} sampling params for {n} prompts")
    return list(sampling)


__all__ = ["LLM", "RequestOutput", "make_engine_config"]
