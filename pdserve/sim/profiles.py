"""Cost profiles: a device + model's step-time model and KV capacity, as JSON files.

    {"name", "kind": "measured" | "roofline", "device", "model", "note",
     "block_size", "num_blocks", "kv_bytes_per_token", "max_num_batched_tokens", "max_num_seqs",
     "cost": StepCostModel fields (seconds), "samples": [{"shape": [4 ints], "time_s"}] (measured)}

Shipped profiles live in pdserve/sim/profiles/; `pdserve profile` writes measured ones. A card
with no profile gets a roofline one from its specs (`roofline_profile`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pdserve.cluster.cost_model import StepCostModel

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True, slots=True)
class CardSpec:
    flops: float  # dense bf16 matmul FLOP/s
    bandwidth_bps: float  # memory copy bytes/s
    memory_gib: float
    cost_per_hour: float  # default $ per GPU-hour (on-demand cloud list prices, 2025)


# H100: measured on the project's card (3014 GB/s copy, 784 TFLOP/s bf16 matmul). The others are
# scaled from the H100's measured/nominal ratio (0.9 of nominal bandwidth, 0.8 of dense peak).
CARDS = {
    "h100": CardSpec(784e12, 3014e9, 80, 2.5),
    "h200": CardSpec(784e12, 4300e9, 141, 3.5),
    "a100": CardSpec(250e12, 1800e9, 80, 1.6),
    "l40s": CardSpec(290e12, 780e9, 48, 1.0),
}
DEFAULT_MODEL = "llama-3.1-8b"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: str
    cost: StepCostModel
    block_size: int
    num_blocks: int
    kv_bytes_per_token: int
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    device: str = ""
    model: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(d["name"], d["kind"], StepCostModel.from_dict(d["cost"]), int(d["block_size"]),
                   int(d["num_blocks"]), int(d["kv_bytes_per_token"]),
                   int(d.get("max_num_batched_tokens", 2048)), int(d.get("max_num_seqs", 256)),
                   d.get("device", ""), d.get("model", ""))  # fmt: skip


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (`cpu-smollm2-135m`) or any profile JSON file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no profile {name_or_path!r}: shipped ones are {list_profiles()}")
    return Profile.from_dict(json.loads(path.read_text()))


def roofline_profile(
    gpu: str,
    model: str = DEFAULT_MODEL,
    block_size: int = 16,
    memory_utilization: float = 0.9,
    step_overhead_s: float = 1e-3,
) -> dict:
    """A roofline profile (a dict in the profile format) of a named card and model shape."""
    from pdserve.bench.floor import SHAPES, matmul_params  # torch-free

    if gpu not in CARDS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(CARDS)} (or give --profile)")
    if model not in SHAPES:
        raise ValueError(f"unknown model shape {model!r}; known: {sorted(SHAPES)}")
    card, shape = CARDS[gpu], SHAPES[model]
    cost = StepCostModel.roofline(shape, card.flops, card.bandwidth_bps, step_overhead_s)
    weight_bytes = 2 * (
        matmul_params(shape)
        + (0 if shape.tie_word_embeddings else shape.vocab_size * shape.hidden_size)
    )
    kv_bytes = card.memory_gib * 2**30 * memory_utilization - weight_bytes
    num_blocks = int(kv_bytes // (shape.kv_bytes_per_token * block_size))
    return {
        "name": f"{gpu}-{model}-roofline", "kind": "roofline", "device": gpu, "model": model,
        "note": (f"ROOFLINE, not measured: {card.flops / 1e12:.0f} TFLOP/s, "
                 f"{card.bandwidth_bps / 1e9:.0f} GB/s, {step_overhead_s * 1e3:g} ms per step; "
                 "replace with `pdserve profile` on the card"),
        "block_size": block_size, "num_blocks": num_blocks,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "max_num_batched_tokens": 8192, "max_num_seqs": 256,
        "cost": cost.to_dict(), "samples": [],
    }  # fmt: skip


def profile_for(gpu: str, model: str = DEFAULT_MODEL) -> Profile:
    """The shipped profile of (gpu, model) if there is one (measured first), else a roofline."""
    for kind in ("", "-roofline"):
        if (PROFILE_DIR / f"{gpu}-{model}{kind}.json").is_file():
            return load_profile(f"{gpu}-{model}{kind}")
    return Profile.from_dict(roofline_profile(gpu, model))
