"""A request's mutable scheduling state inside one instance."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pdserve.hashing import NONE_HASH, hash_block
from pdserve.types import FinishReason, KVRole, Logprob, Request, SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # blocks freed, waits to recompute
    WAITING_FOR_KV = "waiting_for_kv"  # decode side of a hand-off: blocks reserved, KV in flight
    SENDING_KV = "sending_kv"  # prefill side: done, blocks held under a lease until sent
    FINISHED = "finished"


@dataclass(slots=True, eq=False, init=False)
class SchedRequest:
    """`token_ids` = prompt then outputs. The scheduler moves `num_computed_tokens` (tokens whose
    KV is in the cache) towards `num_tokens`; when it gets there a new token is sampled.

        |<----------- prompt_len ---------->|<-- outputs -->|
        |<-- num_computed_tokens -->|<- num_new_tokens of this step ->|
    """

    request_id: str
    token_ids: list[int]
    prompt_len: int
    sampling: SamplingParams
    eos_token_ids: tuple[int, ...]
    arrival_s: float
    priority: int
    status: RequestStatus
    num_computed_tokens: int
    num_cached_tokens: int  # prefix-cache hit at first schedule; -1 until then
    num_preemptions: int
    block_ids: list[int]  # block table, owned by KVManager
    block_hashes: list[int]  # chained hash per full block
    prompt_logprobs: list[Logprob | None]
    finish_reason: FinishReason | None
    seq_no: int  # admission order, the FCFS tie-breaker
    kv_role: KVRole | None
    lease_deadline_s: float | None  # SENDING_KV: blocks are released at this time
    # Tokens sampled by scheduled steps whose results are not in yet (async scheduling: step N+1
    # is planned while step N runs). Their positions count as computed; their ids are not known.
    num_pending: int
    num_published_blocks: int  # leading full blocks in the prefix cache (KVManager's)

    # Written out (not generated): the mypyc build (benchmarks/build_sim_fast.py) compiles it.
    def __init__(
        self,
        request_id: str,
        token_ids: list[int],
        prompt_len: int,
        sampling: SamplingParams,
        eos_token_ids: tuple[int, ...],
        arrival_s: float,
        priority: int = 0,
        status: RequestStatus = RequestStatus.WAITING,
        num_computed_tokens: int = 0,
        num_cached_tokens: int = -1,
        num_preemptions: int = 0,
        block_ids: list[int] | None = None,
        block_hashes: list[int] | None = None,
        prompt_logprobs: list[Logprob | None] | None = None,
        finish_reason: FinishReason | None = None,
        seq_no: int = 0,
        kv_role: KVRole | None = None,
        lease_deadline_s: float | None = None,
        num_pending: int = 0,
        num_published_blocks: int = 0,
    ) -> None:
        self.request_id = request_id
        self.token_ids = token_ids
        self.prompt_len = prompt_len
        self.sampling = sampling
        self.eos_token_ids = eos_token_ids
        self.arrival_s = arrival_s
        self.priority = priority
        self.status = status
        self.num_computed_tokens = num_computed_tokens
        self.num_cached_tokens = num_cached_tokens
        self.num_preemptions = num_preemptions
        self.block_ids = [] if block_ids is None else block_ids
        self.block_hashes = [] if block_hashes is None else block_hashes
        self.prompt_logprobs = [] if prompt_logprobs is None else prompt_logprobs
        self.finish_reason = finish_reason
        self.seq_no = seq_no
        self.kv_role = kv_role
        self.lease_deadline_s = lease_deadline_s
        self.num_pending = num_pending
        self.num_published_blocks = num_published_blocks

    @classmethod
    def from_request(cls, req: Request, block_size: int, seq_no: int) -> SchedRequest:
        # The class by name, not `cls`: the mypyc build then calls its compiled `__init__`
        # directly (no subclass exists).
        state = SchedRequest(
            request_id=req.request_id,
            token_ids=list(req.prompt_token_ids),
            prompt_len=len(req.prompt_token_ids),
            sampling=req.sampling,
            eos_token_ids=req.eos_token_ids,
            arrival_s=req.arrival_s,
            priority=req.priority,
            seq_no=seq_no,
            kv_role=req.kv_role,
        )
        if len(req.block_hashes) == state.prompt_len // block_size:
            state.block_hashes.extend(req.block_hashes)
        else:
            state.extend_block_hashes(block_size)
        return state

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int, block_size: int) -> None:
        self.token_ids.append(token_id)
        if len(self.token_ids) % block_size == 0:
            self.extend_block_hashes(block_size)

    def extend_block_hashes(self, block_size: int) -> None:
        """Hash every full block not hashed yet."""
        parent = self.block_hashes[-1] if self.block_hashes else NONE_HASH
        for begin in range(
            len(self.block_hashes) * block_size, self.num_tokens - block_size + 1, block_size
        ):
            parent = hash_block(parent, self.token_ids[begin : begin + block_size])
            self.block_hashes.append(parent)
