"""HF folders: config.json + *.safetensors (single file or sharded with an index)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from pdserve.config import ModelConfig
from pdserve.model.hf_compat import config_from_hf


def hf_folder_config(folder: Path) -> ModelConfig:
    with open(folder / "config.json") as f:
        hf = json.load(f)
    return config_from_hf(hf, name=str(folder))


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: those the index names when sharded, else every *.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"{folder}: no *.safetensors files (only safetensors checkpoints are read)"
        )
    return files


def iter_hf_folder_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) one at a time, memory-mapped from the safetensors files."""
    from safetensors import safe_open

    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)
