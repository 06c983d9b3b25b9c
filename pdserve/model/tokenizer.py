"""Tokenizer from a GGUF file's metadata or an HF folder, with the model's jinja chat template.

Runs on the `tokenizers` library and jinja2 only (no transformers at run time).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend

# Pre-tokenizer split patterns by tokenizer.ggml.pre; anything else uses GPT-2's (ByteLevel's own).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """encode / decode / chat template for one model. Build with `from_gguf` or `from_hf_folder`."""

    def __init__(
        self,
        backend: _Backend,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._template: Any = None

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        from pdserve.model.gguf_loader import field, open_gguf

        reader = open_gguf(path)
        kind = field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"{path}: tokenizer model {kind!r} is not supported (only BPE 'gpt2')")
        tokens = field(reader, "tokenizer.ggml.tokens")
        token_types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
        backend = _Backend(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        pre = field(reader, "tokenizer.ggml.pre", "")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
        if pre in _SPLITS:
            split = pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated")
            backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        else:
            backend.pre_tokenizer = byte_level
        if pre == "qwen2":
            backend.normalizer = normalizers.NFC()
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, k in zip(tokens, token_types)
                if k == _CONTROL
            ]
        )
        backend.add_tokens(
            [
                AddedToken(t, normalized=False)
                for t, k in zip(tokens, token_types)
                if k == _USER_DEFINED
            ]
        )
        bos = field(reader, "tokenizer.ggml.bos_token_id")
        if bos is not None and field(reader, "tokenizer.ggml.add_bos_token", False):
            backend.post_processor = processors.TemplateProcessing(
                single=f"{tokens[bos]} $A",
                pair=f"{tokens[bos]} $A $B",
                special_tokens=[(tokens[bos], bos)],
            )
        eos = [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        eos_ids = tuple(dict.fromkeys(int(i) for i in eos if i is not None))
        template = field(reader, "tokenizer.chat_template")
        return cls(backend, template, None if bos is None else int(bos), eos_ids)

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        backend = _Backend.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()

        def token_id(key: str) -> int | None:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else backend.token_to_id(token)

        eos = token_id("eos_token")
        gen_eos = _read_json(folder / "generation_config.json").get("eos_token_id")
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        eos_ids = tuple(dict.fromkeys(i for i in [eos, *gen_eos] if i is not None))
        return cls(backend, template, token_id("bos_token"), eos_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render `messages` with the model's template (as transformers' apply_chat_template)."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; use the completions endpoint")
        if self._template is None:
            self._template = _jinja_env().from_string(self.chat_template)
        specials = {
            "bos_token": self._token_or_empty(self.bos_token_id),
            "eos_token": self._token_or_empty(
                self.eos_token_ids[0] if self.eos_token_ids else None
            ),
        }
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **specials, **kwargs
        )

    def _token_or_empty(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.id_to_token(token_id) or "")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def _jinja_env() -> Any:
    """Sandboxed, with the whitespace rules and helpers chat templates are written against."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer of a model spec (see spec.resolve_model_spec). Dummy models borrow the
    embedded SmolLM2 tokenizer (49152 ids: valid for every real shape, not for tiny-* shapes)."""
    from pdserve.model.spec import default_gguf_path, resolve_model_spec

    resolved = resolve_model_spec(spec)
    if resolved.kind == "dummy":
        return Tokenizer.from_gguf(default_gguf_path())
    if resolved.kind == "gguf":
        return Tokenizer.from_gguf(resolved.path)
    return Tokenizer.from_hf_folder(resolved.path)
