"""Benchmark workloads: seeded, torch-free, reproducible lists of BenchRequest.

Every generator takes a `seed` and draws only from its own `random.Random(seed)`: the same
arguments give the same requests on any machine. Prompts are token ids in [10, vocab_size) (low ids
are usually special tokens); `pdserve.bench.text.ids_to_text` turns them into text for servers that
only take text. Arrival offsets are 0 here; `pdserve.bench.arrivals` spreads them out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

MIN_TOKEN_ID = 10
# ShareGPT targets, from the conversations the field's serving benchmarks sample (vLLM's
# ShareGPT_V3 filtered as `vllm bench serve` does: prompt < 1024, prompt + output < 2048, with a
# Llama tokenizer): mean prompt ~220 tokens, mean output ~200 tokens, both right-skewed with long
# tails (median well below the mean). The unfiltered set is longer (vLLM paper: 161 in / 338 out
# with the OPT tokenizer; outputs there are uncapped). We model each length as a lognormal with
# sigma 1.0, clipped to [4, 1024], its mu chosen so the CLIPPED mean hits the target (measured on
# 20,000 draws: input mean 221, median 141; output mean 200, median 127; max 1024).
SHAREGPT_MEAN_INPUT = 220
SHAREGPT_MEAN_OUTPUT = 200
SHAREGPT_SIGMA = 1.0
SHAREGPT_MAX_LEN = 1024


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload. Turn k > 0 of a session is sent only after turn k - 1 finished."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_len: int  # max_tokens; with ignore_eos, exactly the tokens to generate
    arrival_s: float = 0.0  # offset from the start of the run
    session_id: int | None = None
    turn: int = 0
    ignore_eos: bool = True
    prompt_text: str | None = None  # set only where the workload is text (e.g. a text trace)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def _ids(rng: random.Random, n: int, vocab_size: int) -> tuple[int, ...]:
    return tuple(rng.randint(MIN_TOKEN_ID, vocab_size - 1) for _ in range(n))


def _check(name: str, value: int, low: int = 1) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def random_workload(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    vocab_size: int = 32000,
    seed: int = 0,
) -> list[BenchRequest]:
    """Lengths uniform in [len * (1 - r), len * (1 + r)] (r = 0: fixed), `vllm bench` style."""
    _check("num_prompts", num_prompts)
    _check("input_len", input_len)
    _check("output_len", output_len)
    if not 0 <= range_ratio < 1:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    rng = random.Random(seed)

    def draw(n: int) -> int:
        return rng.randint(
            max(1, math.floor(n * (1 - range_ratio))), math.ceil(n * (1 + range_ratio))
        )

    out = []
    for i in range(num_prompts):
        prompt_len, new = draw(input_len), draw(output_len)
        out.append(BenchRequest(f"random-{i}", _ids(rng, prompt_len, vocab_size), new))
    return out


def _clipped_lognormal_mean(mu: float, sigma: float, max_len: float) -> float:
    # E[min(X, M)] for X ~ lognormal(mu, sigma): the mean after clipping the tail at M
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    z = (math.log(max_len) - mu) / sigma
    return math.exp(mu + sigma**2 / 2) * phi(z - sigma) + max_len * (1 - phi(z))


def _mu_for_mean(mean: float, sigma: float, max_len: int) -> float:
    """The lognormal mu whose samples clipped at max_len have the given mean (bisection)."""
    if not 4 <= mean < max_len:
        raise ValueError(f"mean length must be in [4, {max_len}), got {mean}")
    lo, hi = math.log(mean) - sigma**2 / 2 - 1, math.log(max_len)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _clipped_lognormal_mean(mid, sigma, max_len) < mean else (lo, mid)
    return (lo + hi) / 2


def _lognormal_len(rng: random.Random, mu: float, sigma: float, max_len: int) -> int:
    return min(max_len, max(4, round(rng.lognormvariate(mu, sigma))))


def sharegpt_like_workload(
    num_prompts: int,
    vocab_size: int = 32000,
    seed: int = 0,
    mean_input_len: float = SHAREGPT_MEAN_INPUT,
    mean_output_len: float = SHAREGPT_MEAN_OUTPUT,
    sigma: float = SHAREGPT_SIGMA,
    max_len: int = SHAREGPT_MAX_LEN,
) -> list[BenchRequest]:
    """Heavy-tailed lengths with ShareGPT's means (see SHAREGPT_* above), generated locally."""
    _check("num_prompts", num_prompts)
    rng = random.Random(seed)
    mu_in, mu_out = (
        _mu_for_mean(mean_input_len, sigma, max_len),
        _mu_for_mean(mean_output_len, sigma, max_len),
    )
    out = []
    for i in range(num_prompts):
        prompt_len = _lognormal_len(rng, mu_in, sigma, max_len)
        new = _lognormal_len(rng, mu_out, sigma, max_len)
        out.append(BenchRequest(f"sharegpt-{i}", _ids(rng, prompt_len, vocab_size), new))
    return out


def shared_prefix_workload(
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    vocab_size: int = 32000,
    seed: int = 0,
) -> list[BenchRequest]:
    """G groups x P prompts: each prompt = its group's S-token system prompt + a Q-token question.

    Requests are interleaved across groups (g0p0, g1p0, ..., g0p1, ...), so a cache must keep
    every group's prefix alive to hit.
    """
    for name, value in (("num_groups", num_groups), ("prompts_per_group", prompts_per_group)):
        _check(name, value)
    _check("system_prompt_len", system_prompt_len, 0)
    _check("question_len", question_len)
    _check("output_len", output_len)
    rng = random.Random(seed)
    systems = [_ids(rng, system_prompt_len, vocab_size) for _ in range(num_groups)]
    out = []
    for p in range(prompts_per_group):
        for g in range(num_groups):
            ids = systems[g] + _ids(rng, question_len, vocab_size)
            out.append(BenchRequest(f"prefix-g{g}-p{p}", ids, output_len))
    return out


def multi_turn_workload(
    num_sessions: int,
    num_turns: int,
    user_turn_len: int,
    output_len: int,
    vocab_size: int = 32000,
    seed: int = 0,
) -> list[BenchRequest]:
    """Sessions of chat turns: turn k's prompt = turn k-1's prompt + its answer + a new user turn.

    The answer is a synthetic stand-in of `output_len` tokens (the server's real answer is not known
    when the workload is built), so turn k shares exactly turn k-1's prompt as its prefix. Requests
    are ordered turn-major (all first turns, then all second turns ...).
    """
    for name, value in (("num_sessions", num_sessions), ("num_turns", num_turns)):
        _check(name, value)
    _check("user_turn_len", user_turn_len)
    _check("output_len", output_len)
    rng = random.Random(seed)
    history: list[tuple[int, ...]] = [() for _ in range(num_sessions)]
    out = []
    for turn in range(num_turns):
        for s in range(num_sessions):
            prompt = history[s] + _ids(rng, user_turn_len, vocab_size)
            out.append(BenchRequest(f"session{s}-turn{turn}", prompt, output_len, 0.0, s, turn))
            history[s] = prompt + _ids(rng, output_len, vocab_size)
    return out


W1_NUM_REQUESTS = 256
W1_OUTPUT_LEN = 256


def _w1_prompts(num_requests: int) -> tuple[random.Random, list[tuple[int, ...]]]:
    # Same draws, in the same order, as /work/shared/reference/hf_baseline.py, so the prompts equal
    # the HF baseline's: random.Random(0); per request a length in [100, 1024], then its token ids.
    rng = random.Random(0)
    prompts = [
        tuple(rng.randint(10, 30000) for _ in range(rng.randint(100, 1024)))
        for _ in range(num_requests)
    ]
    return rng, prompts


def w1_workload(num_requests: int = W1_NUM_REQUESTS) -> list[BenchRequest]:
    """W1: 256 requests, prompt lengths uniform in [100, 1024] (seed 0), 256 new tokens, no EOS."""
    _, prompts = _w1_prompts(num_requests)
    return [BenchRequest(f"w1-{i}", p, W1_OUTPUT_LEN) for i, p in enumerate(prompts)]


def w1_nano_workload(num_requests: int = W1_NUM_REQUESTS) -> list[BenchRequest]:
    """W1's prompts with output lengths uniform in [100, 1024] (nano-vllm's bench shape).

    The output lengths continue the same Random(0) after the prompts, so the prompts equal W1's.
    """
    rng, prompts = _w1_prompts(num_requests)
    return [BenchRequest(f"w1nano-{i}", p, rng.randint(100, 1024)) for i, p in enumerate(prompts)]


def with_fresh_prompts(
    requests: list[BenchRequest], seed: int, vocab_size: int, tag: str | None = None
) -> list[BenchRequest]:
    """The same requests (lengths, arrivals) with new random prompt ids and ids suffixed `-tag`
    (default `s<seed>`): a server keeps its prefix cache between runs, so a prompt sent twice
    would hit it there (and not in a fresh simulation)."""
    rng = random.Random(seed)
    suffix = tag if tag is not None else f"s{seed}"
    return [replace(r, request_id=f"{r.request_id}-{suffix}",
                    prompt_token_ids=tuple(rng.randrange(MIN_TOKEN_ID, vocab_size)
                                           for _ in range(r.prompt_len)))
            for r in requests]  # fmt: skip
