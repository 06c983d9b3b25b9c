"""Physical floor of an offline workload on one card: the time no engine can beat.

    floor = prefill FLOPs / matmul rate
          + sum over decode steps of (weight bytes + KV bytes of the live requests) / copy bandwidth

Weights are bf16 (2 bytes); per token the matmuls cost 2 FLOPs per weight, lm_head included
(counted once even when tied to the embedding, since the embedding is a lookup). Attention FLOPs
are left out of prefill (small next to the weights at these lengths). Step i of decode reads
every live request's KV: its prompt plus the i tokens made so far. This is the model of
/work/shared/reference/floors.py, generalized to per-request output lengths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.config import ModelConfig


@dataclass(frozen=True, slots=True)
class CardSpec:
    copy_bandwidth_gbps: float  # GB/s of a device-to-device copy (read + write counted)
    matmul_tflops: float  # dense bf16 matmul rate


# Measured on one H100 80GB HBM3 (2026-11-27, /work/shared/reference/hf_baseline_h100_*.jsonl).
H100_REFERENCE = CardSpec(copy_bandwidth_gbps=3014.0, matmul_tflops=784.0)

SHAPES = {
    "llama-3.1-8b": ModelConfig("llama", 128256, 4096, 14336, 32, 32, 8, 128, name="llama-3.1-8b"),
    "qwen3-0.6b": ModelConfig(
        "qwen3", 151936, 1024, 3072, 28, 16, 8, 128, tie_word_embeddings=True, name="qwen3-0.6b"
    ),
}


@dataclass(frozen=True, slots=True)
class Floor:
    prompt_tokens: int
    output_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def floor_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.floor_s


def matmul_params(model: ModelConfig) -> int:
    """Weights touched per token: q, k, v, o, gate/up/down of every layer, plus lm_head."""
    h, hd = model.hidden_size, model.head_dim
    attn = h * model.num_heads * hd + 2 * h * model.num_kv_heads * hd + model.num_heads * hd * h
    layer = attn + 3 * h * model.intermediate_size
    return model.num_layers * layer + model.vocab_size * h


def floor(
    model: ModelConfig, prompt_lens: Sequence[int], output_lens: Sequence[int], card: CardSpec
) -> Floor:
    """Floor of running every request (prompt, then output_len decode steps) on one card."""
    if len(prompt_lens) != len(output_lens):
        raise ValueError("prompt_lens and output_lens must have one entry per request")
    params = matmul_params(model)
    bandwidth = card.copy_bandwidth_gbps * 1e9
    prefill_s = sum(prompt_lens) * 2 * params / (card.matmul_tflops * 1e12)
    weight_bytes = params * 2
    decode_s = 0.0
    pairs = sorted(zip(output_lens, prompt_lens))
    for step in range(max(output_lens, default=0)):
        live_kv_tokens = sum(p + step for n, p in pairs if n > step)
        decode_s += (weight_bytes + model.kv_bytes_per_token * live_kv_tokens) / bandwidth
    return Floor(sum(prompt_lens), sum(output_lens), prefill_s, decode_s)


def measure_card(device: str = "cuda") -> CardSpec:
    """Measure this GPU's copy bandwidth (2 GiB bf16 copy) and bf16 matmul rate (8192^3)."""
    import torch  # lazy: the rest of the bench is torch-free

    def timed(fn, reps: int = 20) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    def copy_gbps() -> float:
        x = torch.empty(1024**3, dtype=torch.bfloat16, device=device)  # 2 GiB
        y = torch.empty_like(x)
        return 2 * x.numel() * 2 / timed(lambda: y.copy_(x)) / 1e9  # bytes read + written

    bandwidth_gbps = copy_gbps()  # its 4 GiB are freed before the matmuls
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    b = torch.randn_like(a)
    tflops = 2 * 8192**3 / timed(lambda: a @ b) / 1e12
    return CardSpec(bandwidth_gbps, tflops)
