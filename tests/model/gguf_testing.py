"""Writes our model's weights as a llama.cpp-style GGUF file, for loader round-trip tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import dequantize, quantize

from pdserve.model.gguf_loader import GLOBAL_NAMES, LAYER_NAMES, permute_rope_rows
from pdserve.model.hf_compat import hf_state_dict
from pdserve.model.llama import LlamaForCausalLM

_TO_GGUF_GLOBAL = {hf: g for g, hf in GLOBAL_NAMES.items()}
_TO_GGUF_LAYER = {hf: g for g, hf in LAYER_NAMES.items()}


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name in _TO_GGUF_GLOBAL:
        return _TO_GGUF_GLOBAL[hf_name]
    _, _, layer, *module, kind = hf_name.split(".")  # model.layers.N.<module>.<kind>
    return f"blk.{layer}.{_TO_GGUF_LAYER['.'.join(module)]}.{kind}"


def write_gguf(path: Path, model: LlamaForCausalLM, qtype_name: str) -> dict[str, torch.Tensor]:
    """Matrices in `qtype_name`, vectors in F32 (as llama.cpp does). Returns the HF-named weights
    a correct loader must produce: each matrix quantized then dequantized, in HF row order."""
    cfg = model.config
    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(str(path), cfg.arch)
    writer.add_block_count(cfg.num_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_eos_token_id(2)
    writer.add_bos_token_id(1)
    expected = {}
    state = hf_state_dict(model)
    if cfg.tie_word_embeddings:
        del state["lm_head.weight"]
    for name, tensor in state.items():
        w = tensor.float().numpy()
        if w.ndim == 1:
            writer.add_tensor(gguf_tensor_name(name), w)
            expected[name] = tensor.float()
            continue
        stored = quantize(w, qtype)
        expected[name] = torch.from_numpy(np.array(dequantize(stored, qtype), dtype=np.float32))
        if cfg.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_heads if "q_proj" in name else cfg.num_kv_heads
            stored = permute_rope_rows(stored, heads)  # whole rows move: quantization commutes
        writer.add_tensor(gguf_tensor_name(name), stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected
