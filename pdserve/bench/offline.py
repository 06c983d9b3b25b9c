"""`pdserve bench offline`: in-process throughput of a workload (W1 by default).

Backends, each `fn(requests, model, **options) -> OfflineResult`, registered in BACKENDS:
    pdserve   pdserve.LLM(model=...).generate(prompt_token_ids_list, SamplingParams(...))
    hf        HF transformers: continuous batching `generate_batch` (attn "paged|sdpa") on a GPU,
              plain `generate` over left-padded batches on the CPU
Both import their engine lazily, so the rest of the bench stays torch-free. `model` is a path the
backend can load, or "dummy:<shape>" (a name of pdserve.bench.floor.SHAPES, or "dummy:tiny") for
random weights in that shape, as the reference HF baseline does on machines without a model hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pdserve.bench.workload import BenchRequest


@dataclass(frozen=True, slots=True)
class OfflineResult:
    backend: str
    model: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tok_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "output_tok_per_s": self.output_tok_per_s,
            "total_tok_per_s": self.total_tok_per_s,
        }


def _count_output_tokens(output, expected: int) -> int:
    # The LLM output type is the engine room's; accept the common shapes, else trust ignore_eos.
    for attr in ("token_ids", "output_token_ids", "generated_tokens"):
        ids = getattr(output, attr, None)
        if ids is not None:
            return len(ids)
    inner = getattr(output, "outputs", None)
    if inner:
        return len(inner[0].token_ids)
    return expected


def run_pdserve(requests: Sequence[BenchRequest], model: str, **engine_kwargs) -> OfflineResult:
    from pdserve import LLM  # lazy: the engine imports torch
    from pdserve.types import SamplingParams

    llm = LLM(model=model, **engine_kwargs)
    params = [
        SamplingParams(max_tokens=r.output_len, ignore_eos=r.ignore_eos, temperature=0.0)
        for r in requests
    ]
    prompts = [list(r.prompt_token_ids) for r in requests]
    llm.generate(prompts[:2], [SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0)] * 2)
    same = len(set(params)) == 1
    t = time.perf_counter()
    outputs = llm.generate(prompts, params[0] if same else params)
    elapsed = time.perf_counter() - t
    num_out = sum(_count_output_tokens(o, r.output_len) for o, r in zip(outputs, requests))
    num_in = sum(r.prompt_len for r in requests)
    return OfflineResult("pdserve", model, len(requests), num_in, num_out, elapsed)


def _hf_model(model: str, attn: str, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if not model.startswith("dummy:"):
        m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation=attn)
        return m.to(device).eval()
    from pdserve.bench.floor import SHAPES

    name = model.split(":", 1)[1]
    if name == "tiny":
        kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=32000, model_type="llama")  # fmt: skip
    elif name in SHAPES:
        s = SHAPES[name]
        kw = dict(model_type=s.arch, hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
                  num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
                  head_dim=s.head_dim, intermediate_size=s.intermediate_size,
                  vocab_size=s.vocab_size, tie_word_embeddings=s.tie_word_embeddings)  # fmt: skip
    else:
        raise ValueError(f"unknown dummy shape {name!r}; expected tiny or one of {sorted(SHAPES)}")
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = None, 0, None
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    for p in m.parameters():  # small weights keep random activations finite
        p.data.normal_(0, 0.02)
    return m.eval()


def run_hf(
    requests: Sequence[BenchRequest],
    model: str,
    attn: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> OfflineResult:
    import torch
    from transformers import GenerationConfig

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    m = _hf_model(model, attn or ("paged|sdpa" if on_gpu else "sdpa"), device)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def config(new: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                eos_token_id=None, pad_token_id=0)  # fmt: skip

    prompts = [list(r.prompt_token_ids) for r in requests]
    if on_gpu:
        new_lens = {r.output_len for r in requests}
        if len(new_lens) != 1:
            raise ValueError(
                "hf generate_batch takes one max_new_tokens; use a fixed output length"
            )
        gc = config(new_lens.pop())
        m.generate_batch(inputs=prompts[:8], generation_config=gc, progress_bar=False)  # warm-up
        sync()
        t = time.perf_counter()
        res = m.generate_batch(inputs=prompts, generation_config=gc, progress_bar=False)
        sync()
        elapsed = time.perf_counter() - t
        num_out = sum(len(r.generated_tokens) for r in res.values())
    else:
        # Batches of equal output length, left-padded so every row's next token is at the end.
        order = sorted(range(len(requests)), key=lambda i: requests[i].output_len)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        t, num_out = time.perf_counter(), 0
        for batch in batches:
            for new in sorted({requests[i].output_len for i in batch}):
                rows = [prompts[i] for i in batch if requests[i].output_len == new]
                width = max(map(len, rows))
                ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
                mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
                with torch.no_grad():
                    out = m.generate(
                        ids, attention_mask=mask.to(device), generation_config=config(new)
                    )
                num_out += (out.shape[1] - width) * len(rows)
        elapsed = time.perf_counter() - t
    num_in = sum(r.prompt_len for r in requests)
    return OfflineResult("hf", model, len(requests), num_in, num_out, elapsed)


BACKENDS: dict[str, Callable[..., OfflineResult]] = {"pdserve": run_pdserve, "hf": run_hf}


def run_offline(
    requests: Sequence[BenchRequest], backend: str, model: str, **options
) -> OfflineResult:
    """Run the workload in-process on the named backend; return output and total tok/s."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[backend](requests, model, **options)
