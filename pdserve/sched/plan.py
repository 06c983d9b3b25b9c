"""StepPlan / StepResult and the Executor protocol: the contract with whoever runs a step
(the engine's ModelRunner on a device, or the simulator's cost model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pdserve.sched.request import SchedRequest
from pdserve.types import Logprob

# ScheduledSeq and StepPlan are built every step (one per scheduled request, one per step): plain
# slotted dataclasses, not frozen ones, which cost several times as much to build. Treat them as
# read-only all the same: the scheduler owns them, executors and callers only read. Their
# `__init__` is written out, not generated: the mypyc build (benchmarks/build_sim_fast.py)
# compiles a written one, and calls a generated one as interpreted code (~10x slower).


@dataclass(slots=True, init=False)
class ScheduledSeq:
    """One request's share of a step: compute tokens [num_computed_tokens, + num_new_tokens).

    `request` is the live scheduling state; executors read it (token_ids, block_ids, sampling)
    and never change it. `request.block_ids` already holds blocks for every new token. Under
    async scheduling the last new token of a decode seq may be pending (sampled by the step still
    running): the executor takes it from that step's output on the device.
    """

    request: SchedRequest
    num_computed_tokens: int
    num_new_tokens: int
    # Whether this step samples a new token for the request: it computes the request's last
    # token (known or pending) and the request may still generate. Fixed when scheduled.
    samples: bool

    def __init__(
        self,
        request: SchedRequest,
        num_computed_tokens: int,
        num_new_tokens: int,
        samples: bool = False,
    ) -> None:
        self.request = request
        self.num_computed_tokens = num_computed_tokens
        self.num_new_tokens = num_new_tokens
        self.samples = samples

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def context_len(self) -> int:
        """Tokens in the KV cache once this step ran."""
        return self.num_computed_tokens + self.num_new_tokens

    @property
    def is_prefill(self) -> bool:
        return self.context_len <= self.request.prompt_len

    @property
    def needs_prompt_logprobs(self) -> bool:
        return (
            self.request.sampling.prompt_logprobs is not None
            and self.num_computed_tokens < self.request.prompt_len
        )


@dataclass(slots=True, init=False)
class StepPlan:
    step_id: int
    seqs: tuple[ScheduledSeq, ...]
    num_batched_tokens: int
    preempted_ids: tuple[str, ...]
    finished_ids: tuple[str, ...]  # ended since the last plan: executors drop their state

    def __init__(
        self,
        step_id: int,
        seqs: tuple[ScheduledSeq, ...],
        num_batched_tokens: int,
        preempted_ids: tuple[str, ...] = (),
        finished_ids: tuple[str, ...] = (),
    ) -> None:
        self.step_id = step_id
        self.seqs = seqs
        self.num_batched_tokens = num_batched_tokens
        self.preempted_ids = preempted_ids
        self.finished_ids = finished_ids

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_prefill_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.seqs if s.is_prefill)

    @property
    def num_decode_seqs(self) -> int:
        return sum(1 for s in self.seqs if not s.is_prefill)

    def summary(self) -> tuple[tuple[str, int, int], ...]:
        """(request_id, num_computed_tokens, num_new_tokens) per seq: what parity tests compare."""
        return tuple((s.request_id, s.num_computed_tokens, s.num_new_tokens) for s in self.seqs)


@dataclass(slots=True, init=False)
class StepResult:
    sampled_token_ids: dict[str, int]
    logprobs: dict[str, Logprob]
    # Logprobs of the prompt tokens computed in this step (chunk by chunk), None for token 0.
    prompt_logprobs: dict[str, list[Logprob | None]]
    duration_s: float

    def __init__(
        self,
        sampled_token_ids: dict[str, int] | None = None,
        logprobs: dict[str, Logprob] | None = None,
        prompt_logprobs: dict[str, list[Logprob | None]] | None = None,
        duration_s: float = 0.0,
    ) -> None:
        self.sampled_token_ids = {} if sampled_token_ids is None else sampled_token_ids
        self.logprobs = {} if logprobs is None else logprobs
        self.prompt_logprobs = {} if prompt_logprobs is None else prompt_logprobs
        self.duration_s = duration_s


class Executor(Protocol):
    def execute(self, plan: StepPlan) -> StepResult:
        """Run one step: write the KV of every scheduled token into the request's blocks and
        sample a token for every seq whose `samples` is true."""
        ...
