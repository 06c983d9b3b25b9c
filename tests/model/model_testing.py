"""Test helpers: a tiny paged-cache driver for our model, and HF transformers references."""

from __future__ import annotations

import random

import torch

from pdserve.model.hf_compat import hf_state_dict, to_hf_config
from pdserve.model.llama import LlamaForCausalLM
from pdserve.model.ops import AttentionMetadata


class PagedRunner:
    """Drives the model over a paged KV cache the way the engine does, for any number of sequences.

    Blocks are handed out in a shuffled order so block tables are not contiguous.
    """

    def __init__(self, model: LlamaForCausalLM, block_size: int = 4, num_blocks: int = 128) -> None:
        cfg = model.config
        self.model = model
        self.block_size = block_size
        dtype = model.model.embed_tokens.weight.dtype
        shape = (cfg.num_layers, num_blocks, 2, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=dtype)
        self.free_block_ids = list(range(num_blocks))
        random.Random(0).shuffle(self.free_block_ids)
        self.block_tables: dict[int, list[int]] = {}
        self.seq_lens: dict[int, int] = {}

    @torch.no_grad()
    def step(self, chunks: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        """Run one step over (seq_id, new token ids) chunks; logits [n_new, vocab] per chunk."""
        input_ids, positions, slots, starts, seq_lens = [], [], [], [0], []
        for seq_id, token_ids in chunks:
            table = self.block_tables.setdefault(seq_id, [])
            start = self.seq_lens.get(seq_id, 0)
            end = start + len(token_ids)
            while len(table) * self.block_size < end:
                table.append(self.free_block_ids.pop())
            for pos in range(start, end):
                slots.append(
                    table[pos // self.block_size] * self.block_size + pos % self.block_size
                )
            input_ids += token_ids
            positions += range(start, end)
            starts.append(starts[-1] + len(token_ids))
            seq_lens.append(end)
            self.seq_lens[seq_id] = end
        max_blocks = max(len(self.block_tables[s]) for s, _ in chunks)
        tables = [
            self.block_tables[s] + [0] * (max_blocks - len(self.block_tables[s])) for s, _ in chunks
        ]
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            max_query_len=max(len(t) for _, t in chunks),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        ids = torch.tensor(input_ids, dtype=torch.int64)
        hidden = self.model(ids, torch.tensor(positions, dtype=torch.int64), self.kv_cache, meta)
        logits = self.model.compute_logits(hidden)  # [T, vocab]
        return [logits[starts[i] : starts[i + 1]] for i in range(len(chunks))]


def greedy_generate(
    model: LlamaForCausalLM,
    prompts: list[list[int]],
    max_new_tokens: int,
    block_size: int = 4,
    prefill_chunk: int | None = None,
) -> list[list[int]]:
    """Batched greedy decoding: (chunked) prefill of all prompts together, then decode steps."""
    runner = PagedRunner(model, block_size)
    pending = {i: list(p) for i, p in enumerate(prompts)}
    outputs: list[list[int]] = [[] for _ in prompts]
    last_logits: dict[int, torch.Tensor] = {}
    while pending:  # prefill, `prefill_chunk` tokens per sequence per step
        chunks = []
        for seq_id, rest in list(pending.items()):
            size = prefill_chunk or len(rest)
            chunks.append((seq_id, rest[:size]))
            pending[seq_id] = rest[size:]
            if not pending[seq_id]:
                del pending[seq_id]
        for (seq_id, _), logits in zip(chunks, runner.step(chunks)):
            last_logits[seq_id] = logits[-1]
    for _ in range(max_new_tokens):
        chunks = []
        for seq_id in range(len(prompts)):
            token = int(last_logits[seq_id].argmax())
            outputs[seq_id].append(token)
            chunks.append((seq_id, [token]))
        if len(outputs[0]) == max_new_tokens:
            break
        for (seq_id, _), logits in zip(chunks, runner.step(chunks)):
            last_logits[seq_id] = logits[-1]
    return outputs


def hf_twin(model: LlamaForCausalLM):
    """The HF transformers model of the same config holding the same float32 weights."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(to_hf_config(model.config), dtype=torch.float32)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    return hf.eval()


@torch.no_grad()
def hf_greedy(hf_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    ids = torch.tensor([prompt])
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt) :].tolist()


@torch.no_grad()
def hf_logits(hf_model, prompt: list[int]) -> torch.Tensor:
    return hf_model(torch.tensor([prompt])).logits[0].float()  # [T, vocab]
