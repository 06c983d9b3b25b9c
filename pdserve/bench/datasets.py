"""Build the workload a `pdserve bench` command line names (--dataset-name and its flags)."""

from __future__ import annotations

import argparse

from pdserve.bench.trace import trace_workload
from pdserve.bench.workload import (
    W1_NUM_REQUESTS,
    BenchRequest,
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
    sharegpt_like_workload,
    w1_nano_workload,
    w1_workload,
)

DEFAULT_NUM_PROMPTS = 200


def build_workload(args: argparse.Namespace) -> list[BenchRequest]:
    """Requests of the named dataset, arrivals at 0 (trace: the trace's arrivals).

    --num-prompts is honoured exactly by random, sharegpt-like, trace, w1 and w1-nano; shared-prefix
    makes --prefix-num-groups groups of num_prompts // groups prompts, multi-turn makes
    num_prompts // --multi-turn-num-turns sessions of that many turns (at least one of each).
    """
    name, n, vocab, seed = args.dataset_name, args.num_prompts, args.vocab_size, args.seed
    if n is None and name != "trace":
        n = W1_NUM_REQUESTS if name in ("w1", "w1-nano") else DEFAULT_NUM_PROMPTS
    if name == "random":
        return random_workload(
            n, args.random_input_len, args.random_output_len, args.random_range_ratio, vocab, seed
        )
    if name == "sharegpt-like":
        return sharegpt_like_workload(n, vocab, seed)
    if name == "shared-prefix":
        groups = args.prefix_num_groups
        return shared_prefix_workload(
            groups, max(1, n // groups), args.prefix_system_len, args.prefix_question_len,
            args.random_output_len, vocab, seed,
        )  # fmt: skip
    if name == "multi-turn":
        turns = args.multi_turn_num_turns
        return multi_turn_workload(
            max(1, n // turns), turns, args.multi_turn_user_len, args.random_output_len, vocab, seed
        )
    if name == "trace":
        if not args.dataset_path:
            raise ValueError("--dataset-name trace needs --dataset-path FILE.jsonl")
        return trace_workload(
            args.dataset_path, n, vocab, seed,
            timestamp_unit_s=args.trace_timestamp_unit, time_scale=args.trace_time_scale,
        )  # fmt: skip
    if name == "w1":
        return w1_workload(n)
    if name == "w1-nano":
        return w1_nano_workload(n)
    raise ValueError(f"unknown --dataset-name {name!r}")
