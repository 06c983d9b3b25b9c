"""Build one instance's engine from an EngineConfig: device, model, tokenizer, KV cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from pdserve.config import EngineConfig, ModelConfig
from pdserve.engine.core import EngineCore
from pdserve.engine.kv_cache import (
    allocate_kv_cache,
    gpu_num_blocks,
    num_blocks_for_bytes,
    profile_max_step,
)
from pdserve.engine.runner import ModelRunner
from pdserve.model.loader import DUMMY_PREFIX, load_model
from pdserve.model.ops import get_ops
from pdserve.sched.scheduler import Scheduler

log = logging.getLogger(__name__)

EMBEDDED_VOCAB_SIZE = 49152  # SmolLM2's tokenizer, borrowed by dummy models that can hold it
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class Engine:
    core: EngineCore
    tokenizer: object | None  # pdserve.model.tokenizer.Tokenizer, None for dummy weights
    model_config: ModelConfig
    config: EngineConfig
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def set_ops(model: torch.nn.Module, ops) -> None:
    """Swap the op bundle of every module of the model (speed applied from outside)."""
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = ops


def load_tokenizer(spec: str, model_config: ModelConfig):
    """The model's tokenizer. Dummy weights borrow the embedded one when their vocabulary can
    hold its ids, and take token ids only otherwise (None)."""
    from pdserve.model.tokenizer import load_tokenizer as load

    if spec.startswith(DUMMY_PREFIX) and model_config.vocab_size < EMBEDDED_VOCAB_SIZE:
        return None
    try:
        return load(spec)
    except ValueError:
        if not spec.startswith(DUMMY_PREFIX):
            raise
        log.warning("the embedded tokenizer is not installed: %s takes token ids only", spec)
        return None


def build_engine(config: EngineConfig, instance_id: str = "") -> Engine:
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is not None:
        # Triton kernels, CUDA graphs and streams follow the current device, not the tensors'.
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.dtype, device)
    torch.manual_seed(config.seed)
    model, model_config = load_model(config.model, dtype=dtype, device=device)
    if device.type == "cuda":
        set_ops(model, get_ops("triton"))
    tokenizer = load_tokenizer(config.model, model_config)

    sched_config = config.scheduler
    max_len = sched_config.max_model_len or model_config.max_position_embeddings
    if max_len > model_config.max_position_embeddings:
        raise ValueError(
            f"max_model_len={max_len} exceeds the model's context of "
            f"{model_config.max_position_embeddings} tokens"
        )
    sched_config = replace(sched_config, max_model_len=max_len)
    cache = config.cache
    num_blocks = cache.num_blocks
    if num_blocks is None:
        if device.type == "cuda":
            num_blocks = gpu_num_blocks(
                model_config,
                cache,
                dtype,
                device,
                lambda: profile_max_step(
                    model,
                    model_config,
                    sched_config.max_num_batched_tokens,
                    sched_config.max_num_seqs,
                    cache.block_size,
                ),
            )
        else:
            num_blocks = num_blocks_for_bytes(model_config, cache, dtype, cache.cpu_kv_gib * 2**30)
    kv_cache = allocate_kv_cache(model_config, num_blocks, cache.block_size, dtype, device)
    log.info("KV cache: %d blocks of %d tokens on %s", num_blocks, cache.block_size, device)
    runner = ModelRunner(
        model,
        kv_cache,
        cache.block_size,
        seed=config.seed,
        max_num_batched_tokens=sched_config.max_num_batched_tokens,
        max_num_seqs=sched_config.max_num_seqs,
        max_model_len=max_len,
    )
    if device.type == "cuda":
        log.info("compiled the eager kernels in %.1f s", runner.warm_up_kernels(max_len))
        if not config.enforce_eager:
            log.info("captured decode CUDA graphs in %.1f s", runner.capture_cuda_graphs())
    scheduler = Scheduler(sched_config, num_blocks, cache.block_size, cache.enable_prefix_caching)
    run_ahead = config.async_scheduling
    if run_ahead is None:
        run_ahead = device.type == "cuda"
    core = EngineCore(scheduler, runner, instance_id=instance_id, async_scheduling=run_ahead)
    return Engine(
        core, tokenizer, model_config, replace(config, scheduler=sched_config), device, dtype
    )
