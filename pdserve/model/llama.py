"""One Llama-family model (Llama 2/3/3.1, Qwen2/2.5, Qwen3, Mistral, SmolLM2) in plain PyTorch.

Never names a device: parameters and the rope table are created on the default device (the
loader wraps construction in `with torch.device(...)`). All attention/norm/activation math goes
through the ops bundle, so a GPU bundle can be swapped in from outside.

Parameter names mirror HF's except the fused projections:
    self_attn.qkv_proj = q_proj | k_proj | v_proj   (rows)
    mlp.gate_up_proj   = gate_proj | up_proj        (rows)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pdserve.config import ModelConfig
from pdserve.model.ops import AttentionMetadata, get_ops
from pdserve.model.rope import cos_sin_table


class RMSNormWeight(nn.Module):
    """Holds an RMSNorm's weight; the norm itself runs in the ops bundle."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Any) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        out_rows = self.q_size + 2 * self.kv_size
        self.qkv_proj = nn.Linear(cfg.hidden_size, out_rows, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNormWeight(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNormWeight(cfg.head_dim, cfg.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        cos_sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        w, b = self.qkv_proj.weight, self.qkv_proj.bias
        if self.qk_norm:  # Qwen3: per-head RMSNorm between the projection and rope
            qkv = self.ops.linear(hidden, w, b)  # [T, (H + 2 * KV) * D]
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self._head_norm(q.reshape(num_tokens, self.num_heads, self.head_dim), self.q_norm)
            k = self._head_norm(
                k.reshape(num_tokens, self.num_kv_heads, self.head_dim), self.k_norm
            )
            v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
            q = self.ops.rotary_store_kv(q, k, v, positions, cos_sin, kv_cache, meta.slot_mapping)
        else:  # projection, rope and KV store: one op (one launch on the GEMV path)
            q = self.ops.qkv_rotary_store_kv(
                hidden, w, b, positions, cos_sin, kv_cache, meta.slot_mapping, self.num_heads
            )  # [T, H, D]
        out = self.ops.paged_attention(q, kv_cache, meta, self.scale)  # [T, H, D]
        return self.ops.linear(out.reshape(num_tokens, self.q_size), self.o_proj.weight)

    def _head_norm(self, x: torch.Tensor, norm: RMSNormWeight) -> torch.Tensor:
        flat = x.reshape(-1, self.head_dim)  # [T * heads, D]
        return self.ops.rms_norm(flat, norm.weight, norm.eps).view(x.shape)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Any) -> None:
        super().__init__()
        self.ops = ops
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = self.ops.linear(hidden, self.gate_up_proj.weight)  # [T, 2 * inter]
        return self.ops.silu_mul_linear(gate_up, self.down_proj.weight)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Any) -> None:
        super().__init__()
        self.ops = ops
        self.self_attn = Attention(cfg, ops)
        self.mlp = MLP(cfg, ops)
        self.input_layernorm = RMSNormWeight(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNormWeight(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos_sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm can fuse with the add before it.
        norm = self.input_layernorm
        if residual is None:
            residual = hidden
            hidden = self.ops.rms_norm(hidden, norm.weight, norm.eps)
        else:
            hidden, residual = self.ops.add_rms_norm(hidden, residual, norm.weight, norm.eps)
        hidden = self.self_attn(positions, hidden, cos_sin, kv_cache, meta)
        norm = self.post_attention_layernorm
        hidden, residual = self.ops.add_rms_norm(hidden, residual, norm.weight, norm.eps)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Any) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops) for _ in range(cfg.num_layers))
        self.norm = RMSNormWeight(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Forward over packed (varlen) tokens of many sequences with a paged KV cache.

    Contract (used by engine.runner):
      forward(input_ids [T], positions [T], kv_cache [L, num_blocks, 2, block_size, KV, D], meta)
        -> hidden [T, hidden_size], final norm applied. Writes the new tokens' K/V into kv_cache.
      compute_logits(hidden [N, hidden_size]) -> [N, vocab_size] float32.
      load_weights(pairs of HF parameter name and tensor).
    """

    def __init__(self, config: ModelConfig, ops: ModuleType | Any = None) -> None:
        super().__init__()
        self.config = config
        self.ops = ops if ops is not None else get_ops("torch_ref")
        self.model = LlamaModel(config, self.ops)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("cos_sin", self.make_cos_sin(), persistent=False)
        # Called with each layer's index once its forward is queued (engine/pd.py streams that
        # layer's KV out while the next ones compute); None outside such steps.
        self.layer_hook: Callable[[int], None] | None = None

    def make_cos_sin(self) -> torch.Tensor:
        """[max_position_embeddings, head_dim] float32 (cos half | sin half) on the default
        device; float32 even when the weights are bf16: rope angles need the precision."""
        cfg = self.config
        return cos_sin_table(
            cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
        )

    def set_ops(self, ops: ModuleType | Any) -> None:
        """Swap the op bundle (e.g. the triton one) in every submodule."""
        for module in self.modules():
            if "ops" in module.__dict__:
                module.ops = ops

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.model.embed_tokens(input_ids)  # [T, hidden]
        residual = None
        for i, layer in enumerate(self.model.layers):
            hidden, residual = layer(positions, hidden, residual, self.cos_sin, kv_cache[i], meta)
            if self.layer_hook is not None:
                self.layer_hook(i)
        norm = self.model.norm
        hidden, _ = self.ops.add_rms_norm(hidden, residual, norm.weight, norm.eps)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.lm_head_weight).float()

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, packing q/k/v and gate/up into the fused projections.

        Raises ValueError on an unknown name, a shape mismatch, or a parameter left unloaded.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in named_tensors:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            if hf_name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: the embedding is the head
            name, rows = self._target(hf_name)
            if name not in params:
                raise ValueError(f"unexpected weight {hf_name!r} for this model config")
            dest = params[name] if rows is None else params[name][rows[0] : rows[1]]
            if dest.shape != tensor.shape:
                raise ValueError(
                    f"{hf_name}: expected shape {tuple(dest.shape)}, got {tuple(tensor.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(hf_name)
        missing = sorted(set(_expected_hf_names(self)) - loaded)
        if missing:
            raise ValueError(
                f"weights missing from checkpoint: {missing[:8]} ({len(missing)} in all)"
            )

    def _target(self, hf_name: str) -> tuple[str, tuple[int, int] | None]:
        """Our parameter name for an HF name, and the row range inside a fused parameter."""
        match = _FUSED.match(hf_name)
        if match is None:
            return hf_name, None
        prefix, part, suffix = match.groups()
        cfg = self.config
        q, kv, inter = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
            cfg.intermediate_size,
        )
        ranges = {
            "q_proj": ("self_attn.qkv_proj", (0, q)),
            "k_proj": ("self_attn.qkv_proj", (q, q + kv)),
            "v_proj": ("self_attn.qkv_proj", (q + kv, q + 2 * kv)),
            "gate_proj": ("mlp.gate_up_proj", (0, inter)),
            "up_proj": ("mlp.gate_up_proj", (inter, 2 * inter)),
        }
        fused, rows = ranges[part]
        return f"{prefix}{fused}.{suffix}", rows


_FUSED = re.compile(
    r"^(model\.layers\.\d+\.)(?:self_attn|mlp)\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$"
)


def _expected_hf_names(model: LlamaForCausalLM) -> list[str]:
    return [name for name, _ in iter_hf_weights(model)]


def iter_hf_weights(model: LlamaForCausalLM) -> Iterable[tuple[str, torch.Tensor]]:
    """Our weights under HF names, fused projections split back (views, no copies)."""
    cfg = model.config
    q, kv, inter = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
    for name, param in model.named_parameters():
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            base, kind = name.rsplit(".qkv_proj.", 1)
            yield f"{base}.q_proj.{kind}", param[:q]
            yield f"{base}.k_proj.{kind}", param[q : q + kv]
            yield f"{base}.v_proj.{kind}", param[q + kv :]
        elif name.endswith("gate_up_proj.weight"):
            base = name.removesuffix(".gate_up_proj.weight")
            yield f"{base}.gate_proj.weight", param[:inter]
            yield f"{base}.up_proj.weight", param[inter:]
        else:
            yield name, param
