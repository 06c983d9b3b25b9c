"""StepPlan -> tensors + attention metadata -> forward -> sample -> StepResult."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from pdserve.model.ops import AttentionMetadata
from pdserve.model.sampler import Sampler, SeqSampling
from pdserve.sched.plan import ScheduledSeq, StepPlan, StepResult
from pdserve.types import Logprob


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    sample_rows: list[ScheduledSeq]  # seqs that sample, in logits order
    sample_index: list[int]  # row of each sampling seq's last new token
    prompt_rows: list[tuple[ScheduledSeq, int, int]]  # (seq, first row, num prompt targets)


class ModelRunner:
    """Runs the model for a scheduler's plans. Implements `sched.plan.Executor`."""

    def __init__(self, model, kv_cache: torch.Tensor, block_size: int, seed: int = 0):
        self.model = model
        self.kv_cache = kv_cache  # [num_layers, num_blocks, 2, block_size, kv_heads, head_dim]
        self.block_size = block_size
        self.device = kv_cache.device
        self.sampler = Sampler(seed, self.device)
        self._generators: dict[str, torch.Generator] = {}

    # ---- inputs --------------------------------------------------------------------------

    def prepare(self, plan: StepPlan) -> StepInputs:
        bs = self.block_size
        ids, pos, slots, starts, seq_lens, tables = [], [], [], [0], [], []
        sample_rows, sample_index, prompt_rows = [], [], []
        for seq in plan.seqs:
            req = seq.request
            begin, end = seq.num_computed_tokens, seq.context_len
            positions = np.arange(begin, end)
            num_blocks = -(-end // bs)
            table = np.asarray(req.block_ids[:num_blocks], dtype=np.int64)
            ids.append(np.asarray(req.token_ids[begin:end], dtype=np.int64))
            pos.append(positions)
            slots.append(table[positions // bs] * bs + positions % bs)
            if seq.needs_prompt_logprobs:
                # Logits at row p predict token p + 1; prompt targets stop at the prompt's end.
                num_targets = min(end, req.prompt_len - 1) - begin
                prompt_rows.append((seq, starts[-1], max(num_targets, 0)))
            starts.append(starts[-1] + end - begin)
            seq_lens.append(end)
            tables.append(table)
            if seq.samples:
                sample_rows.append(seq)
                sample_index.append(starts[-1] - 1)
        max_blocks = max(len(t) for t in tables)
        block_tables = np.zeros((len(tables), max_blocks), dtype=np.int32)
        for i, table in enumerate(tables):
            block_tables[i, : len(table)] = table
        to = self._to_device
        meta = AttentionMetadata(
            slot_mapping=to(np.concatenate(slots)),
            query_start_loc=to(np.asarray(starts, dtype=np.int32)),
            seq_lens=to(np.asarray(seq_lens, dtype=np.int32)),
            block_tables=to(block_tables),
            max_query_len=max(b - a for a, b in zip(starts, starts[1:])),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        return StepInputs(
            to(np.concatenate(ids)),
            to(np.concatenate(pos)),
            meta,
            sample_rows,
            sample_index,
            prompt_rows,
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    # ---- the step ------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        for request_id in plan.finished_ids:
            self._generators.pop(request_id, None)
        result = StepResult()
        if plan.is_empty:
            return result
        inputs = self.prepare(plan)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.meta)
        if inputs.sample_rows:
            logits = self.model.compute_logits(hidden[inputs.sample_index])
            self._sample(logits, inputs.sample_rows, result)
        for seq, first_row, num_targets in inputs.prompt_rows:
            if num_targets > 0:
                self._prompt_logprobs(hidden, seq, first_row, num_targets, result)
        result.duration_s = time.perf_counter() - start
        return result

    def _sample(self, logits: torch.Tensor, seqs: list[ScheduledSeq], result: StepResult) -> None:
        rows = [self._sampling_row(seq) for seq in seqs]
        wants_logprobs = [seq.request.sampling.logprobs is not None for seq in seqs]
        raw_logprobs = logits.log_softmax(dim=-1) if any(wants_logprobs) else None
        token_ids = self.sampler(logits, rows).tolist()
        for i, (seq, token_id) in enumerate(zip(seqs, token_ids)):
            result.sampled_token_ids[seq.request_id] = token_id
            if wants_logprobs[i]:
                result.logprobs[seq.request_id] = _logprob(
                    raw_logprobs[i], token_id, seq.request.sampling.logprobs
                )

    def _sampling_row(self, seq: ScheduledSeq) -> SeqSampling:
        req = seq.request
        params = req.sampling
        generator = None
        if params.seed is not None and not params.is_greedy:
            generator = self._generators.get(req.request_id)
            if generator is None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(params.seed)
                self._generators[req.request_id] = generator
        suppressed = ()
        if req.num_output_tokens < params.min_tokens:
            suppressed = (*params.stop_token_ids, *(() if params.ignore_eos else req.eos_token_ids))
        return SeqSampling(
            params=params,
            prompt_token_ids=req.token_ids[: req.prompt_len],
            output_token_ids=req.output_token_ids if params.needs_penalties else (),
            generator=generator,
            suppressed_token_ids=suppressed,
        )

    def _prompt_logprobs(self, hidden, seq: ScheduledSeq, first_row, num_targets, result) -> None:
        req = seq.request
        begin = seq.num_computed_tokens
        logprobs = self.model.compute_logits(hidden[first_row : first_row + num_targets])
        logprobs = logprobs.log_softmax(dim=-1)
        targets = req.token_ids[begin + 1 : begin + 1 + num_targets]
        k = req.sampling.prompt_logprobs
        chunk: list[Logprob | None] = [None] if begin == 0 else []
        chunk.extend(_logprob(logprobs[i], t, k) for i, t in enumerate(targets))
        result.prompt_logprobs[req.request_id] = chunk


def _logprob(row: torch.Tensor, token_id: int, top_k: int) -> Logprob:
    """row: [vocab] log-probabilities."""
    chosen = row[token_id]
    rank = int((row > chosen).sum()) + 1
    top = ()
    if top_k:
        values, indices = row.topk(top_k)
        top = tuple(zip(indices.tolist(), values.tolist()))
    return Logprob(token_id, float(chosen), rank, top)
