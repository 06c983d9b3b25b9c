"""`pdserve generate "prompt"`: stream a completion from the in-process engine to the terminal."""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds an engine."""
    parser.add_argument(
        "--model",
        default="",
        help="GGUF file, HF folder or dummy:<shape> (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-blocks", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=0)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of the GPU's memory for weights, activations and the KV cache",
    )
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--async-scheduling",
        choices=["auto", "on", "off"],
        default="auto",
        help="schedule step N+1 while the device runs step N (auto: on a GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        async_scheduling={"auto": None, "on": True, "off": False}[args.async_scheduling],
        seed=args.seed,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[])
    add_engine_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from pdserve.engine.llm import LLM
    from pdserve.types import SamplingParams

    try:
        sampling = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            stop=tuple(args.stop),
            seed=args.seed,
        )
    except ValueError as e:
        flag = "--" + str(e).split()[0].replace("_", "-")
        print(f"pdserve generate: error: {flag}: {e}", file=sys.stderr)
        return 2
    print("loading model ...", file=sys.stderr, flush=True)
    llm = LLM(args.model, **engine_kwargs(args))
    prompt = args.prompt
    if args.chat:
        prompt = llm.render_chat([{"role": "user", "content": prompt}])
    start = time.perf_counter()
    try:
        for text in llm.stream(prompt, sampling):
            sys.stdout.write(text)
            sys.stdout.flush()
    except ValueError as e:
        print(f"pdserve generate: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    print(f"[{time.perf_counter() - start:.2f} s]", file=sys.stderr)
    return 0
