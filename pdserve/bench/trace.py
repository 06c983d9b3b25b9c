"""Trace replay: a JSONL of arrivals and lengths -> BenchRequests.

Each line is an object with
    "timestamp"      arrival time, in `timestamp_unit_s` seconds (default ms, as the Mooncake and
                     Azure traces); arrivals are offsets from the first line's timestamp
    "input_length"   prompt tokens
    "output_length"  tokens to generate
    "hash_ids"       optional: the prompt's blocks of `block_size` tokens as content ids; two
                     requests with the same hash id at the same position share those tokens, so
                     the trace's prefix reuse is reproduced (the last block is cut to input_length)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pdserve.bench.workload import MIN_TOKEN_ID, BenchRequest


def _block_ids(seed: int, hash_id: int, block_size: int, vocab_size: int) -> tuple[int, ...]:
    rng = random.Random(f"{seed}:{hash_id}")  # str seeds hash deterministically (sha512)
    return tuple(rng.randint(MIN_TOKEN_ID, vocab_size - 1) for _ in range(block_size))


def trace_workload(
    path: str | Path,
    num_prompts: int | None = None,
    vocab_size: int = 32000,
    seed: int = 0,
    block_size: int = 512,
    timestamp_unit_s: float = 0.001,
    time_scale: float = 1.0,
) -> list[BenchRequest]:
    """Requests of the first `num_prompts` lines (all when None); arrivals divided by time_scale."""
    if time_scale <= 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    rng = random.Random(seed)
    out: list[BenchRequest] = []
    t0 = None
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        if num_prompts is not None and len(out) >= num_prompts:
            break
        try:
            row = json.loads(line)
            ts, n_in, n_out = (
                float(row["timestamp"]),
                int(row["input_length"]),
                int(row["output_length"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: bad trace line ({e!r}): {line[:80]}") from e
        t0 = ts if t0 is None else t0
        if "hash_ids" in row:
            ids: tuple[int, ...] = ()
            for h in row["hash_ids"]:
                ids += _block_ids(seed, int(h), block_size, vocab_size)
            ids = ids[:n_in]
            ids += tuple(rng.randint(MIN_TOKEN_ID, vocab_size - 1) for _ in range(n_in - len(ids)))
        else:
            ids = tuple(rng.randint(MIN_TOKEN_ID, vocab_size - 1) for _ in range(n_in))
        arrival = (ts - t0) * timestamp_unit_s / time_scale
        out.append(BenchRequest(f"trace-{len(out)}", ids, max(1, n_out), arrival))
    return out
