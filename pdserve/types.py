"""Torch-free vocabulary shared by every room."""

from __future__ import annotations

import enum
import math
from dataclasses import MISSING, dataclass, field, fields
from types import FunctionType


def fast_init(cls):
    """Give a frozen dataclass a faster `__init__` with the same contract (parameters, defaults,
    default factories, frozen instances). The generated one looks `object.__setattr__` up once per
    field; this one binds it once, which halves the cost of building the messages made per step
    or per request (TokenEvent, InstanceSnapshot, Request). Apply it above `@dataclass`, or call
    it on the class after its definition (`fast_init(Cls)`).

    A class compiled by mypyc (benchmarks/build_sim_fast.py) is left as it is: its own
    `__init__`, written out with `init=False`, stores the fields straight into the instance
    (~10x faster than either), while Python code still cannot assign them. Written-out
    `__init__`s exist for that build only: in pure Python a frozen instance refuses their
    stores, so this replaces them (same parameters and defaults: tests/sim/test_sim_fast.py)."""
    if not isinstance(cls.__dict__.get("__init__"), FunctionType):
        return cls  # compiled: a native __init__
    params, body, env = [], [], {"_set": object.__setattr__, "_MISSING": MISSING}
    for f in fields(cls):
        if f.default is not MISSING:
            env[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        elif f.default_factory is not MISSING:
            env[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"    if {f.name} is _MISSING: {f.name} = _f_{f.name}()")
        else:
            params.append(f.name)
        body.append(f"    _set(self, {f.name!r}, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context reached
    ABORT = "abort"  # client gone or cancelled
    ERROR = "error"  # the instance failed the request


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each new token and when to stop. Validated on construction."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # top-k logprobs of each generated token (0: only the sampled one)
    prompt_logprobs: int | None = None  # logprobs of the prompt tokens (echo)
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        def bad(param: str, value, limit: str) -> ValueError:
            return ValueError(f"{param} must be {limit}, got {value!r}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise bad("max_tokens", self.max_tokens, ">= 0")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", self.temperature, ">= 0")
        if not (0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "in (0, 1]")
        if self.top_k < -1:
            raise bad("top_k", self.top_k, "-1, 0 (off) or >= 1")
        if not (0 <= self.min_p <= 1):
            raise bad("min_p", self.min_p, "in [0, 1]")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", self.repetition_penalty, "> 0")
        if not (-2 <= self.presence_penalty <= 2):
            raise bad("presence_penalty", self.presence_penalty, "in [-2, 2]")
        if not (-2 <= self.frequency_penalty <= 2):
            raise bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        if self.min_tokens < 0 or self.min_tokens > max(self.max_tokens, 0):
            raise bad("min_tokens", self.min_tokens, f"in [0, max_tokens={self.max_tokens}]")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 20):
                raise bad(name, value, "in [0, 20]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


class KVRole(enum.StrEnum):
    """A request's part in a PD hand-off. Fused requests have none."""

    SEND = "send"  # prefill instance: compute the prompt, sample the first token, hold the KV
    RECEIVE = "receive"  # decode instance: reserve blocks, wait for the KV, then decode


@dataclass(frozen=True, slots=True, init=False)
class Request:
    """One generation request as it enters an instance: token ids in, sampling params."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrival_s: float = 0.0
    priority: int = 0  # lower runs first under the "priority" policy
    eos_token_ids: tuple[int, ...] = ()
    kv_role: KVRole | None = None
    # Chained hashes of the prompt's full blocks (pdserve.hashing) at the instance's block size,
    # when the sender (a router) already computed them; empty: the instance hashes the prompt.
    block_hashes: tuple[int, ...] = ()

    # The mypyc build's __init__ (see `fast_init`, which replaces it in pure Python); `sampling`
    # None is the factory's fresh SamplingParams().
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: tuple[int, ...],
        sampling: SamplingParams | None = None,
        arrival_s: float = 0.0,
        priority: int = 0,
        eos_token_ids: tuple[int, ...] = (),
        kv_role: KVRole | None = None,
        block_hashes: tuple[int, ...] = (),
    ) -> None:
        self.request_id = request_id  # type: ignore[misc]
        self.prompt_token_ids = prompt_token_ids  # type: ignore[misc]
        self.sampling = SamplingParams() if sampling is None else sampling  # type: ignore[misc]
        self.arrival_s = arrival_s  # type: ignore[misc]
        self.priority = priority  # type: ignore[misc]
        self.eos_token_ids = eos_token_ids  # type: ignore[misc]
        self.kv_role = kv_role  # type: ignore[misc]
        self.block_hashes = block_hashes  # type: ignore[misc]


fast_init(Request)


@dataclass(frozen=True, slots=True)
class KVReservation:
    """Blocks a decode instance reserved for a request's incoming KV: the prompt tokens from
    `num_cached_tokens` on go into `block_ids` (in order); the cached head is not sent."""

    request_id: str
    num_cached_tokens: int
    block_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Logprob:
    """Logprob of one chosen token and the top alternatives at that position."""

    token_id: int
    logprob: float
    rank: int  # 1 = most likely
    top: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), most likely first


@dataclass(frozen=True, slots=True, init=False)
class TokenEvent:
    """New output of one request after one engine step. `finish_reason` set on the last event."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    logprobs: tuple[Logprob, ...] = ()
    prompt_logprobs: tuple[Logprob | None, ...] | None = None  # first prompt token has None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None

    def __init__(  # the mypyc build's (see `fast_init`, which replaces it in pure Python)
        self,
        request_id: str,
        new_token_ids: tuple[int, ...],
        finish_reason: FinishReason | None = None,
        logprobs: tuple[Logprob, ...] = (),
        prompt_logprobs: tuple[Logprob | None, ...] | None = None,
        num_prompt_tokens: int = 0,
        num_cached_tokens: int = 0,
        error: str | None = None,
    ) -> None:
        self.request_id = request_id  # type: ignore[misc]
        self.new_token_ids = new_token_ids  # type: ignore[misc]
        self.finish_reason = finish_reason  # type: ignore[misc]
        self.logprobs = logprobs  # type: ignore[misc]
        self.prompt_logprobs = prompt_logprobs  # type: ignore[misc]
        self.num_prompt_tokens = num_prompt_tokens  # type: ignore[misc]
        self.num_cached_tokens = num_cached_tokens  # type: ignore[misc]
        self.error = error  # type: ignore[misc]

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


fast_init(TokenEvent)


@dataclass(frozen=True, slots=True, init=False)
class InstanceSnapshot:
    """What an instance reports about itself; the routing policies' only view of it."""

    instance_id: str
    num_waiting: int = 0
    num_running: int = 0
    num_waiting_tokens: int = 0  # prompt tokens not yet computed, over waiting requests
    num_running_tokens: int = (
        0  # tokens still to compute over running requests (prefill left + 1 each)
    )
    num_free_blocks: int = 0  # free, plus cached-but-evictable
    num_cached_blocks: int = 0
    num_total_blocks: int = 0
    block_size: int = 16
    step_time_s: float = 0.0  # last measured step duration
    step_tokens: int = 0  # tokens computed in that step
    num_steps: int = 0  # steps planned so far (monotonic): a new value means a new measurement
    role: str = "fused"  # "fused" | "prefill" | "decode"
    incarnation: str = ""
    now_s: float = 0.0
    # What it runs on: model, device type, step budget. Instances of one role and kind share a
    # step-time model in the routing policies ("": unknown, one kind).
    kind: str = ""

    def __init__(  # the mypyc build's (see `fast_init`, which replaces it in pure Python)
        self,
        instance_id: str,
        num_waiting: int = 0,
        num_running: int = 0,
        num_waiting_tokens: int = 0,
        num_running_tokens: int = 0,
        num_free_blocks: int = 0,
        num_cached_blocks: int = 0,
        num_total_blocks: int = 0,
        block_size: int = 16,
        step_time_s: float = 0.0,
        step_tokens: int = 0,
        num_steps: int = 0,
        role: str = "fused",
        incarnation: str = "",
        now_s: float = 0.0,
        kind: str = "",
    ) -> None:
        self.instance_id = instance_id  # type: ignore[misc]
        self.num_waiting = num_waiting  # type: ignore[misc]
        self.num_running = num_running  # type: ignore[misc]
        self.num_waiting_tokens = num_waiting_tokens  # type: ignore[misc]
        self.num_running_tokens = num_running_tokens  # type: ignore[misc]
        self.num_free_blocks = num_free_blocks  # type: ignore[misc]
        self.num_cached_blocks = num_cached_blocks  # type: ignore[misc]
        self.num_total_blocks = num_total_blocks  # type: ignore[misc]
        self.block_size = block_size  # type: ignore[misc]
        self.step_time_s = step_time_s  # type: ignore[misc]
        self.step_tokens = step_tokens  # type: ignore[misc]
        self.num_steps = num_steps  # type: ignore[misc]
        self.role = role  # type: ignore[misc]
        self.incarnation = incarnation  # type: ignore[misc]
        self.now_s = now_s  # type: ignore[misc]
        self.kind = kind  # type: ignore[misc]

    @property
    def kv_usage(self) -> float:
        if self.num_total_blocks == 0:
            return 0.0
        return 1.0 - self.num_free_blocks / self.num_total_blocks


fast_init(InstanceSnapshot)


@dataclass(frozen=True, slots=True)
class BlockStored:
    """An instance's prefix cache published a block (KV cache event)."""

    block_hash: int
    parent_hash: int
    num_tokens: int
    tier: str = "device"


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """An instance's prefix cache evicted a block (KV cache event)."""

    block_hash: int
    tier: str = "device"


KVCacheEvent = BlockStored | BlockRemoved
