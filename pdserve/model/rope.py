"""Rotary position tables: inverse frequencies (plain or Llama-3.1 scaled) and the cos/sin cache."""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, theta: float, rope_scaling: dict | None) -> torch.Tensor:
    """[head_dim // 2] float32 on the default device; scaled when rope_scaling asks for it."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if not rope_scaling:
        return inv_freq
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, rope_scaling)
    raise ValueError(f"unsupported rope_scaling type {rope_type!r}; supported: 'llama3'")


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed down by `factor`, short ones kept, a smooth ramp between.

    wavelen:   short (< high_wl)      medium                long (> low_wl)
    inv_freq:  unchanged        lerp(inv/factor, inv)       inv / factor
    """
    factor = float(scaling["factor"])
    low_factor = float(scaling.get("low_freq_factor", 1.0))
    high_factor = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen = old_len / low_factor
    high_wavelen = old_len / high_factor

    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_factor) / (high_factor - low_factor)
    ramp = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, ramp, scaled)


def cos_sin_table(
    head_dim: int, theta: float, rope_scaling: dict | None, max_positions: int
) -> torch.Tensor:
    """[max_positions, head_dim] float32: cos of each frequency | sin of each frequency.

    Angles are position * inv_freq in float32, as HF computes them, so the tables agree bit for bit.
    """
    inv_freq = inv_frequencies(head_dim, theta, rope_scaling)  # [head_dim // 2]
    positions = torch.arange(max_positions, dtype=torch.int64).float()
    angles = positions[:, None] * inv_freq[None, :]  # [max_positions, head_dim // 2]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)
