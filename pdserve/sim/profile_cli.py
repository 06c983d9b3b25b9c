"""`pdserve profile`: measure step times of the real engine on this device, fit the step-time
model and write a profile JSON for the simulator (pdserve/sim/profiles.py has the format).

The grid drives the engine's own scheduler into known shapes: a lone fresh prompt of P tokens
(one prefill step), B requests of context C decoding together (decode steps), and a fresh
prompt joining those B (a mixed step, as a server's prefills mostly run). Each step is timed
around `EngineCore.step()` (device synchronized), its shape read from the plan it ran; the fit
is `sim.profiles.ServedCostModel.fit`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def _split(split: list, i: int) -> dict:
    """A sample's host time (prepare + launch) and device span, when the timer measured them."""
    if not split:
        return {}
    return {"host_s": split[i].prepare_s + split[i].launch_s, "device_s": split[i].gpu_span_s}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="'' = embedded model, or path / dummy:<shape>")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--prefill-lens", type=_ints, default=[16, 64, 128, 256, 512, 1024])
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4, 16, 32])
    p.add_argument("--context-lens", type=_ints, default=[64, 512])
    p.add_argument("--decode-steps", type=int, default=4, help="timed decode steps per point")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup-passes", type=int, default=1,
                   help="untimed passes over the grid first: a served engine runs warm shapes")
    p.add_argument(
        "--mixed-prefill-len",
        type=int,
        default=None,
        help="prompt joining each decode batch (default: the middle prefill length)",
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--name", default=None, help="profile name (default DEVICE-MODEL)")
    p.add_argument("--out", default=None, help="JSON path (default ./NAME.json)")


def main(args: argparse.Namespace) -> int:
    import torch

    from pdserve.cluster.cost_model import StepShape, shape_of
    from pdserve.engine.llm import LLM
    from pdserve.sim.profiles import ServedCostModel
    from pdserve.types import Request, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    # Synchronous steps: each timed step() must run exactly the plan it returns (under async
    # scheduling a step() launches one plan and waits for the previous one).
    llm = LLM(args.model, device=args.device, dtype=args.dtype, async_scheduling=False,
              max_num_batched_tokens=args.max_num_batched_tokens)  # fmt: skip
    core, engine = llm.core, llm.engine
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    samples: list[tuple[StepShape, float]] = []
    ids = iter(range(10**9))

    def submit(prompt_len: int, max_tokens: int) -> str:
        rid = f"p{next(ids)}"
        prompt = tuple(rng.randrange(10, vocab) for _ in range(prompt_len))  # no prefix hits
        core.add_request(Request(rid, prompt, SamplingParams(max_tokens, ignore_eos=True)))
        return rid

    timing = False

    def timed_step() -> StepShape:
        sync()
        t = time.perf_counter()
        core.step()
        sync()
        shape = shape_of(core.last_plan)
        if timing:
            samples.append((shape, time.perf_counter() - t))
        return shape

    lens = sorted(args.prefill_lens)
    mixed_len = args.mixed_prefill_len or lens[len(lens) // 2]

    submit(32, 2)  # warm-up, untimed
    while core.has_unfinished:
        core.step()
    # GPU: the runner's step timer splits each timed step into host work (prepare + launch)
    # and the device's span (CUDA events, read after the run): what a pipelined server overlaps.
    timer = getattr(core.executor, "timer", None) if engine.device.type == "cuda" else None
    for rep in range(args.warmup_passes + args.repeats):
        if rep == args.warmup_passes:  # the shapes seen once: cuBLAS and Triton warm
            timing = True
            if timer is not None:
                timer.reset()
                timer.enabled = True
        for prompt_len in args.prefill_lens:
            rid = submit(prompt_len, 1)
            while core.has_unfinished:
                timed_step()
            del rid
        for ctx in args.context_lens:
            for batch in args.batch_sizes:
                # Long enough to outlive the batch's own prefill (the first prompts decode in
                # mixed steps beside the later ones), then `decode_steps` decode-only steps.
                fill_steps = -(-batch * ctx // args.max_num_batched_tokens)
                rids = [submit(ctx, args.decode_steps + 1 + fill_steps) for _ in range(batch)]
                joined = False
                while core.has_unfinished:
                    shape = timed_step()
                    if not joined and not shape.num_prefill_tokens:  # all B decode: join them
                        rids.append(submit(mixed_len, 1))
                        joined = True
                del rids
    split = []
    if timer is not None:
        timer.enabled = False
        try:
            split = timer.resolve()
        except Exception as e:  # the split is for analysis; the profile stands without it
            print(f"step timer: {type(e).__name__}: {e}; no host/device split")
        if len(split) != len(samples):  # one timed step per runner step, or no split
            split = []
    shapes, times = [s for s, _ in samples], [t for _, t in samples]
    cost = ServedCostModel.fit(shapes, times)
    if engine.device.type == "cuda" and isinstance(cost, ServedCostModel):
        # the server's default on a GPU: async scheduling launches a step while one runs
        cost = ServedCostModel.of(cost, pipelined=True)
    device = engine.device.type if engine.device.type == "cpu" else torch.cuda.get_device_name()
    model = engine.model_config.name or args.model or "embedded"
    short = Path(model).stem if "/" in model else model.replace("dummy:", "")  # a path: its file
    name = args.name or f"{engine.device.type}-{short}"
    elem = torch.finfo(engine.dtype).bits // 8
    profile = {
        "name": name, "kind": "measured", "device": device, "model": model,
        "note": f"pdserve profile, {time.strftime('%Y-%m-%d')}, dtype {engine.dtype}, "
                f"{torch.get_num_threads()} threads, {len(samples)} steps",
        "block_size": core.scheduler.block_size, "num_blocks": core.scheduler.kv.num_blocks,
        "kv_bytes_per_token": engine.model_config.kv_bytes_per_token * elem // 2,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": core.scheduler.config.max_num_seqs,
        "cost": cost.to_dict(),
        "samples": [{"shape": list(s.features()[1:]), "time_s": t} | _split(split, i)
                    for i, (s, t) in enumerate(samples)],
    }  # fmt: skip
    path = Path(args.out or f"{name}.json")
    path.write_text(json.dumps(profile, indent=1) + "\n")
    errors = [abs(cost.step_time(s) - t) / t for s, t in samples]
    print(
        f"{len(samples)} steps; fit {cost}; mean relative error "
        f"{100 * sum(errors) / len(errors):.1f} %; wrote {path}"
    )
    return 0
