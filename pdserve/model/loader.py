"""`load_model(spec)`: the embedded default, a GGUF file, an HF folder, or `dummy:<shape>`.

Parameters are created on the meta device and then allocated once, directly in the target
dtype on the target device: an 8B model never takes a float32 or CPU detour.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pdserve.config import ModelConfig
from pdserve.model import hf_loader
from pdserve.model.llama import LlamaForCausalLM, RMSNormWeight
from pdserve.model.shapes import get_shape
from pdserve.model.spec import DUMMY_PREFIX, ModelSpec, default_gguf_path, resolve_model_spec


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
        from pdserve.model import gguf_loader  # the gguf package only when a GGUF is loaded

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


__all__ = ["DUMMY_PREFIX", "ModelSpec", "default_gguf_path", "load_model", "resolve_model_spec"]
