"""StepPlan -> tensors + attention metadata -> forward -> sample -> StepResult."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from pdserve.engine.input_batch import BlockTableRows, InputBuffers
from pdserve.engine.step_timer import StepTimer
from pdserve.model.ops import AttentionMetadata
from pdserve.model.sampler import Sampler, SeqSampling
from pdserve.sched.plan import ScheduledSeq, StepPlan, StepResult
from pdserve.types import Logprob

# An eager step on a GPU pads its rows to a multiple of this: every new row count costs the host
# ~17 ms more to launch an 8B prefill (the libraries pick kernels per shape; H100, 2026-11-27:
# 34 ms for lengths 256-768 against 17 ms for multiples of 128, benchmarks/probe_prefill_launch.py).
EAGER_TOKEN_BUCKET = 128


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    sample_rows: list[ScheduledSeq]  # seqs that sample, in logits order
    sample_index: torch.Tensor  # [num_samples] int64: row of each sampling seq's last new token
    prompt_rows: list[tuple[ScheduledSeq, int, int]]  # (seq, first row, num prompt targets)


@dataclass(slots=True)
class LaunchedStep:
    """A step on the device whose sampled ids are not read yet (async scheduling)."""

    sample_rows: list[ScheduledSeq]
    token_ids: torch.Tensor | None  # [num_samples] on the host once `ready` has happened
    ready: torch.cuda.Event | None
    start_s: float


class ModelRunner:
    """Runs the model for a scheduler's plans. Implements `sched.plan.Executor`.

    On a GPU, pure-decode steps (one new token per seq, at most the largest captured batch)
    replay a CUDA graph once `capture_cuda_graphs()` ran; every other step runs eagerly.

    `launch`/`collect` split a step for async scheduling: `launch` enqueues it and returns at
    once, with the sampled ids copied to pinned host memory behind it; the next plan's pending
    tokens (decode seqs whose last token this step samples) are gathered from this step's ids on
    the device, so the host never waits between steps.
    """

    def __init__(
        self,
        model,
        kv_cache: torch.Tensor,
        block_size: int,
        seed: int = 0,
        *,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 256,
        max_model_len: int = 4096,
    ):
        self.model = model
        self.kv_cache = kv_cache  # [num_layers, num_blocks, 2, block_size, kv_heads, head_dim]
        self.block_size = block_size
        self.device = kv_cache.device
        self.sampler = Sampler(seed, self.device)
        self._generators: dict[str, torch.Generator] = {}
        self.max_num_seqs = max_num_seqs
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.buffers = InputBuffers(
            self.device,
            max(max_num_batched_tokens, max_num_seqs),
            max_num_seqs,
            self.max_blocks_per_seq,
        )
        self.block_rows = BlockTableRows()
        self.graphs = None  # engine.cuda_graph.DecodeGraphs once captured
        self.timer = StepTimer(enabled=False)
        # The last launched step's sampled ids on the device, and each request's index in them.
        self._last_sampled: torch.Tensor | None = None
        self._last_index: dict[str, int] = {}
        pin = self.device.type == "cuda"
        self._host_ids = torch.zeros(2, max_num_seqs, dtype=torch.int64, pin_memory=pin)
        self._flip = 0
        self.token_bucket = EAGER_TOKEN_BUCKET if pin else 1  # the CPU pays padding in compute

    def capture_cuda_graphs(self) -> float:
        """Capture the decode graphs (GPU only); returns the seconds it took."""
        from pdserve.engine.cuda_graph import DecodeGraphs

        start = time.perf_counter()
        graphs = DecodeGraphs(self.model, self.kv_cache, self.max_num_seqs, self.max_blocks_per_seq)
        graphs.capture()
        self.graphs = graphs
        return time.perf_counter() - start

    @torch.inference_mode()
    def warm_up_kernels(self, max_model_len: int) -> float:
        """Run the eager path over the shapes that pick different kernel variants (query length
        buckets, 1..32 context splits, row counts 1 / 16k / other), so that Triton compiles them
        all before the first request instead of inside it. Writes no KV (every slot is -1)."""
        start = time.perf_counter()
        max_tokens = self.buffers.max_num_tokens
        bs = self.block_size
        lens = [
            n for n in (1, 2, 3, 16, 17, 64, 100, 128, 512, 1024, 2048, 4096) if n <= max_tokens
        ]
        for num_new in lens:
            contexts = {num_new} | {num_new + 256 * 2**k for k in range(6)}
            for context in sorted(c for c in contexts if c <= max_model_len):
                num_blocks = -(-context // bs)
                meta = AttentionMetadata(
                    slot_mapping=torch.full((num_new,), -1, dtype=torch.int64, device=self.device),
                    query_start_loc=torch.tensor(
                        [0, num_new], dtype=torch.int32, device=self.device
                    ),
                    seq_lens=torch.tensor([context], dtype=torch.int32, device=self.device),
                    block_tables=torch.zeros(1, num_blocks, dtype=torch.int32, device=self.device),
                    max_query_len=num_new,
                    max_seq_len=context,
                    query_start_loc_cpu=[0, num_new],
                    seq_lens_cpu=[context],
                )
                ids = torch.zeros(num_new, dtype=torch.int64, device=self.device)
                positions = torch.arange(context - num_new, context, device=self.device)
                hidden = self.model(ids, positions, self.kv_cache, meta)
                self.model.compute_logits(hidden[-1:]).argmax(dim=-1)
        if self.device.type == "cuda":
            from pdserve.model.ops import triton_attention

            triton_attention.warm_up(self.kv_cache[0], self.model.config.num_heads)
            torch.cuda.synchronize()
        return time.perf_counter() - start

    # ---- inputs --------------------------------------------------------------------------

    def prepare(self, plan: StepPlan, pad_to: int = 0, pad_tokens: int = 0) -> StepInputs:
        """Pack the plan's new tokens (varlen) into device tensors. `pad_to`: add padding seqs
        of one token each (slot -1, context 1, block 0) up to that many seqs (a graph's size);
        `pad_tokens`: add one padding seq of that many tokens (slots -1, blocks 0)."""
        bs = self.block_size
        seqs = plan.seqs
        num_seqs = len(seqs)
        num_pad_seqs = max(pad_to - num_seqs, 0)  # of one token each
        padded_seqs = num_seqs + num_pad_seqs + (pad_tokens > 0)
        q_lens = [seq.num_new_tokens for seq in seqs]
        num_tokens = sum(q_lens)
        padded_tokens = num_tokens + num_pad_seqs + pad_tokens
        width = max(-(-seq.context_len // bs) for seq in seqs)
        width = max(width, -(-pad_tokens // bs))
        host = self.buffers.host(padded_tokens, padded_seqs, width)
        ids: list[int] = []
        begins, seq_lens = [], []
        sample_rows, sample_index, prompt_rows = [], [], []
        pending_dst, pending_src = [], []
        row_start = 0
        bt = host.block_tables
        for i, seq in enumerate(seqs):
            req = seq.request
            begin, end = seq.num_computed_tokens, seq.context_len
            if end - begin == 1:
                if begin < len(req.token_ids):
                    ids.append(req.token_ids[begin])
                else:  # sampled by the step still running: gathered on the device below
                    pending_dst.append(row_start)
                    pending_src.append(self._last_index[req.request_id])
                    ids.append(0)
            else:
                ids.extend(req.token_ids[begin:end])
            num_blocks = -(-end // bs)
            bt[i, :num_blocks] = self.block_rows.row(req)[:num_blocks]
            if seq.needs_prompt_logprobs:
                # Logits at row p predict token p + 1; prompt targets stop at the prompt's end.
                num_targets = min(end, req.prompt_len - 1) - begin
                prompt_rows.append((seq, row_start, max(num_targets, 0)))
            row_start += end - begin
            begins.append(begin)
            seq_lens.append(end)
            if seq.samples:
                sample_rows.append(seq)
                sample_index.append(row_start - 1)
        qsl = host.query_start_loc
        qsl[0] = 0
        np.cumsum(q_lens, out=qsl[1 : num_seqs + 1])
        host.seq_lens[:num_seqs] = seq_lens
        host.input_ids[:num_tokens] = ids
        if num_tokens == num_seqs:  # every seq has one new token (decode)
            positions = np.asarray(begins, dtype=np.int64)
            seq_index = np.arange(num_seqs)
        else:
            offsets = np.asarray(begins, dtype=np.int64) - qsl[:num_seqs]
            seq_index = np.repeat(np.arange(num_seqs), q_lens)
            positions = offsets[seq_index] + np.arange(num_tokens)
        host.positions[:num_tokens] = positions
        host.slot_mapping[:num_tokens] = bt[seq_index, positions // bs] * bs + positions % bs
        host.sample_index[: len(sample_index)] = sample_index
        num_pending = len(pending_dst)
        if num_pending:
            host.pending_dst[:num_pending] = pending_dst
            host.pending_src[:num_pending] = pending_src
        if pad_tokens:
            pad = slice(num_tokens, padded_tokens)
            host.input_ids[pad] = 0
            host.positions[pad] = np.arange(pad_tokens)
            host.slot_mapping[pad] = -1
            host.seq_lens[num_seqs] = pad_tokens
            qsl[num_seqs + 1] = padded_tokens
            bt[num_seqs, : -(-pad_tokens // bs)] = 0
        elif num_pad_seqs:
            pad = slice(num_tokens, padded_tokens)
            host.input_ids[pad] = 0
            host.positions[pad] = 0
            host.slot_mapping[pad] = -1
            host.seq_lens[num_seqs:padded_seqs] = 1
            qsl[num_seqs + 1 : padded_seqs + 1] = np.arange(num_tokens + 1, padded_tokens + 1)
            bt[num_seqs:padded_seqs, 0] = 0
        dev = self.buffers.upload(padded_tokens, padded_seqs, width, len(sample_index), num_pending)
        if num_pending:
            pending_ids = self._last_sampled.index_select(0, dev.pending_src)
            dev.input_ids.index_copy_(0, dev.pending_dst, pending_ids)
        query_start_loc_cpu = qsl[: padded_seqs + 1].tolist()
        meta = AttentionMetadata(
            slot_mapping=dev.slot_mapping,
            query_start_loc=dev.query_start_loc,
            seq_lens=dev.seq_lens,
            block_tables=dev.block_tables,
            max_query_len=max(max(q_lens), pad_tokens),
            max_seq_len=max(max(seq_lens), pad_tokens),
            query_start_loc_cpu=query_start_loc_cpu,
            seq_lens_cpu=host.seq_lens[:padded_seqs].tolist(),
        )
        return StepInputs(
            dev.input_ids,
            dev.positions,
            meta,
            sample_rows,
            dev.sample_index,
            prompt_rows,
        )

    # ---- the step ------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        result = StepResult()
        inputs, logits, hidden = self._forward(plan)
        if inputs is None:
            return result
        waited = time.perf_counter()
        if logits is not None:
            self._sample(logits, inputs.sample_rows, result)
        for seq, first_row, num_targets in inputs.prompt_rows:
            if num_targets > 0:
                self._prompt_logprobs(hidden, seq, first_row, num_targets, result)
        self.timer.synced(time.perf_counter() - waited)
        result.duration_s = time.perf_counter() - start
        return result

    def can_launch(self, plan: StepPlan) -> bool:
        """Whether the plan can run without its tokens' host-side results: no logprobs, prompt
        logprobs, penalties or min_tokens still to enforce (those execute synchronously)."""
        for seq in plan.seqs:
            if seq.needs_prompt_logprobs:
                return False
            if seq.samples:
                req = seq.request
                params = req.sampling
                if params.logprobs is not None or params.needs_penalties:
                    return False
                if req.num_output_tokens < params.min_tokens:
                    return False
        return True

    @torch.inference_mode()
    def launch(self, plan: StepPlan) -> LaunchedStep:
        """Enqueue the step; its sampled ids come from `collect`. Needs `can_launch(plan)`."""
        start = time.perf_counter()
        inputs, logits, _ = self._forward(plan)
        if logits is None:  # nothing samples (a middle prefill chunk)
            return LaunchedStep([], None, None, start)
        seqs = inputs.sample_rows
        if all(_is_plain_greedy(seq) for seq in seqs):
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = self.sampler(logits, [self._sampling_row(seq) for seq in seqs])
        self._last_sampled = token_ids
        self._last_index = {seq.request_id: i for i, seq in enumerate(seqs)}
        ready = None
        if self.device.type == "cuda":
            host = self._host_ids[self._flip, : len(seqs)]
            self._flip ^= 1
            host.copy_(token_ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            token_ids = host
        return LaunchedStep(seqs, token_ids, ready, start)

    def collect(self, step: LaunchedStep) -> StepResult:
        """Wait for a launched step's sampled ids (the step's one host synchronization)."""
        result = StepResult()
        waited = time.perf_counter()
        if step.ready is not None:
            step.ready.synchronize()
        if step.token_ids is not None:
            ids = step.token_ids.tolist()
            result.sampled_token_ids.update(zip((s.request_id for s in step.sample_rows), ids))
        self.timer.synced(time.perf_counter() - waited)
        result.duration_s = time.perf_counter() - step.start_s
        return result

    def _forward(self, plan: StepPlan) -> tuple[StepInputs | None, torch.Tensor | None, object]:
        """Drop finished requests' state, then prepare and run the model: -> (inputs, logits of
        the sampling rows or None, hidden states of an eager step or None)."""
        for request_id in plan.finished_ids:
            self._generators.pop(request_id, None)
            self.block_rows.drop(request_id)
        for request_id in plan.preempted_ids:  # a seeded request's noise goes on where it was
            self.block_rows.drop(request_id)
        if plan.is_empty:
            return None, None, None
        self.timer.start(len(plan.seqs))
        graph_size = self._graph_size(plan)
        if graph_size:
            inputs = self.prepare(plan, pad_to=graph_size)
        else:
            inputs = self.prepare(plan, pad_tokens=self._bucket_pad(plan))
        self.timer.prepared(graph_size)
        hidden = logits = None
        if graph_size:
            logits = self.graphs.replay(graph_size, inputs.input_ids, inputs.positions, inputs.meta)
            logits = logits[: len(inputs.sample_rows)]
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.meta)
            if inputs.sample_rows:
                logits = self.model.compute_logits(hidden[inputs.sample_index])
        self.timer.launched()
        return inputs, logits, hidden

    def _bucket_pad(self, plan: StepPlan) -> int:
        """Padding tokens that make an eager step's rows a multiple of `token_bucket` (none
        where the staging buffers would have to grow)."""
        bucket, buffers = self.token_bucket, self.buffers
        if bucket <= 1 or len(plan.seqs) >= buffers.max_num_seqs:
            return 0
        num_tokens = plan.num_batched_tokens
        return min(-num_tokens % bucket, buffers.max_num_tokens - num_tokens)

    def _graph_size(self, plan: StepPlan) -> int | None:
        """The captured batch size that runs this plan, or None to run it eagerly."""
        if self.graphs is None:
            return None
        for seq in plan.seqs:
            if seq.num_new_tokens != 1 or seq.needs_prompt_logprobs or not seq.samples:
                return None
        return self.graphs.batch_size_for(len(plan.seqs))

    def _sample(self, logits: torch.Tensor, seqs: list[ScheduledSeq], result: StepResult) -> None:
        if all(_is_plain_greedy(seq) for seq in seqs):
            # Argmax on the device; the one host sync of the step is copying the ids back.
            token_ids = logits.argmax(dim=-1).tolist()
            result.sampled_token_ids.update(zip((s.request_id for s in seqs), token_ids))
            return
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


def _is_plain_greedy(seq: ScheduledSeq) -> bool:
    req = seq.request
    params = req.sampling
    return (
        params.is_greedy
        and params.logprobs is None
        and not params.needs_penalties
        and req.num_output_tokens >= params.min_tokens
    )


def _logprob(row: torch.Tensor, token_id: int, top_k: int) -> Logprob:
    """row: [vocab] log-probabilities."""
    chosen = row[token_id]
    rank = int((row > chosen).sum()) + 1
    top = ()
    if top_k:
        values, indices = row.topk(top_k)
        top = tuple(zip(indices.tolist(), values.tolist()))
    return Logprob(token_id, float(chosen), rank, top)
