"""Paged attention in Triton: one kernel for decode, chunked prefill and prefix hits.

Tiling. A program owns one (query tile, sequence, kv head, split). Its query tile packs
BLOCK_Q new tokens x HEADS_PAD query heads of ONE kv-head group into BLOCK_M = BLOCK_Q *
HEADS_PAD rows, so every K/V tile read from the cache serves the whole GQA group:

    row r -> token q_idx = q_tile * BLOCK_Q + r // HEADS_PAD, head kv_head * group + r % HEADS_PAD

Decode (q_len 1) is the case BLOCK_Q = 1: one program per (seq, kv head) reads the context once.

Split-K ("flash-decoding"). The keys a tile can see, [0, ctx_end), are cut into num_splits
chunks of `chunk` tokens (a multiple of BLOCK_N, chosen per sequence so long and short
sequences both spread over every split):

    keys: |-- split 0 --|-- split 1 --|-- split 2 --|- split 3 (maybe empty) -|
          0          chunk         2*chunk                                 ctx_end

With num_splits > 1 each split writes an unnormalised partial (acc, running max m, running sum
l); the last split of a tile to finish (an atomic arrival counter) combines them and writes
the output, so split-K costs no second launch (`_reduce_kernel`, the separate combine, is kept
behind FUSED_REDUCE = False). With 1 split the kernel writes the output directly. The grid
depends on shapes and num_splits only (never on values), so decode is CUDA-graph capturable
when the caller fixes num_splits.

Causality. New token j of a sequence sits at position seq_len - q_len + j and sees keys
0 .. that position. Inside a tile, keys below the first row's position are seen by every row,
so they run unmasked; only the diagonal tiles apply the causal mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, row_pos, start, k_end,
    kv_ptr, bt_row, kv_head, stride_block, stride_kv, stride_tok, stride_head,
    qk_scale,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys [start, start + BLOCK_N) read from the paged cache."""
    k_pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions in the sequence
    d = tl.arange(0, BLOCK_D)
    in_ctx = k_pos < k_end
    if MASKED:
        block_ids = tl.load(bt_row + k_pos // BLOCK_SIZE, mask=in_ctx, other=0).to(tl.int64)
    else:  # the caller guarantees the whole tile is inside the context
        block_ids = tl.load(bt_row + k_pos // BLOCK_SIZE).to(tl.int64)
    # [BLOCK_N, BLOCK_D] offsets of K rows: block, slot within block, kv head, dim.
    offs = (
        block_ids[:, None] * stride_block
        + (k_pos % BLOCK_SIZE)[:, None] * stride_tok
        + kv_head * stride_head
        + d[None, :]
    )
    if MASKED or BLOCK_D != HEAD_DIM:
        load_mask = in_ctx[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(kv_ptr + offs, mask=load_mask, other=0.0)
        v = tl.load(kv_ptr + stride_kv + offs, mask=load_mask, other=0.0)
    else:
        k = tl.load(kv_ptr + offs)
        v = tl.load(kv_ptr + stride_kv + offs)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if MASKED:
        visible = (k_pos[None, :] <= row_pos[:, None]) & in_ctx[None, :]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row that has seen no key yet keeps m = -inf; subtract 0 then so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attn_kernel(
    q_ptr, kv_ptr, out_ptr, part_acc_ptr, part_ml_ptr, counter_ptr,
    query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
    qk_scale, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_block, stride_kv, stride_tok, stride_head, stride_bt,
    GROUP: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
    NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr, PRECISION: tl.constexpr,
    FUSED_REDUCE: tl.constexpr,
):  # fmt: skip
    q_tile = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2) // NUM_SPLITS
    split = tl.program_id(2) % NUM_SPLITS

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_start = seq_len - q_len  # position of the sequence's first new token

    r = tl.arange(0, BLOCK_M)
    q_idx = q_tile * BLOCK_Q + r // HEADS_PAD  # [BLOCK_M] new-token index within the sequence
    h_in_group = r % HEADS_PAD
    row_ok = (q_idx < q_len) & (h_in_group < GROUP)
    head = kv_head * GROUP + h_in_group
    row_pos = ctx_start + q_idx
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    io_mask = row_ok[:, None] & d_ok[None, :]
    tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=io_mask, other=0.0)  # fmt: skip
    if INTERPRET:  # its bf16 tl.dot is wrong (triton 3.6): multiply in float32 there
        q = q.to(tl.float32)

    # Keys this tile can see: [0, ctx_end); [0, full_end) is visible to every row.
    last_pos = ctx_start + tl.minimum(q_tile * BLOCK_Q + BLOCK_Q, q_len) - 1
    ctx_end = last_pos + 1
    full_end = ((ctx_start + q_tile * BLOCK_Q + 1) // BLOCK_N) * BLOCK_N
    chunk = tl.cdiv(tl.cdiv(ctx_end, NUM_SPLITS), BLOCK_N) * BLOCK_N
    k_lo = split * chunk
    k_hi = tl.minimum(k_lo + chunk, ctx_end)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # Unmasked tiles, then the diagonal (masked) ones. The interpreter (CPU tests) cannot take
    # loaded values as `range` bounds under numpy 2, so it walks the same tiles with `while`.
    full_hi = tl.minimum(k_hi, full_end)
    diag_lo = tl.maximum(k_lo, full_end)
    if INTERPRET:
        start = k_lo
        while start < full_hi:
            acc, m_i, l_i = _attend_tile(
                acc, m_i, l_i, q, row_pos, start, k_hi,
                kv_ptr, bt_row, kv_head, stride_block, stride_kv, stride_tok, stride_head,
                qk_scale, BLOCK_N, BLOCK_SIZE, HEAD_DIM, BLOCK_D, False, True, PRECISION,
            )  # fmt: skip
            start += BLOCK_N
        start = diag_lo
        while start < k_hi:
            acc, m_i, l_i = _attend_tile(
                acc, m_i, l_i, q, row_pos, start, k_hi,
                kv_ptr, bt_row, kv_head, stride_block, stride_kv, stride_tok, stride_head,
                qk_scale, BLOCK_N, BLOCK_SIZE, HEAD_DIM, BLOCK_D, True, True, PRECISION,
            )  # fmt: skip
            start += BLOCK_N
    else:
        for start in tl.range(k_lo, full_hi, BLOCK_N, num_stages=NUM_STAGES):
            acc, m_i, l_i = _attend_tile(
                acc, m_i, l_i, q, row_pos, start, k_hi,
                kv_ptr, bt_row, kv_head, stride_block, stride_kv, stride_tok, stride_head,
                qk_scale, BLOCK_N, BLOCK_SIZE, HEAD_DIM, BLOCK_D, False, False, PRECISION,
            )  # fmt: skip
        for start in tl.range(diag_lo, k_hi, BLOCK_N, num_stages=NUM_STAGES):
            acc, m_i, l_i = _attend_tile(
                acc, m_i, l_i, q, row_pos, start, k_hi,
                kv_ptr, bt_row, kv_head, stride_block, stride_kv, stride_tok, stride_head,
                qk_scale, BLOCK_N, BLOCK_SIZE, HEAD_DIM, BLOCK_D, True, False, PRECISION,
            )  # fmt: skip

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_offs = tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=io_mask)
    else:
        # Partials: acc [num_tokens, num_heads, NUM_SPLITS, HEAD_DIM], (m, l) [.., NUM_SPLITS, 2].
        part = (tok * num_heads + head) * NUM_SPLITS + split  # [BLOCK_M]
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=io_mask)
        tl.store(part_ml_ptr + part * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=row_ok)
        if FUSED_REDUCE:
            # The last split of this (q tile, seq, kv head) to arrive combines all of them.
            # Every thread's partial stores precede the barrier; the counter's acq_rel atomic
            # (one thread) releases them to, and acquires the others' for, whoever is last.
            tl.debug_barrier()
            tile_id = (q_tile * tl.num_programs(1) + seq) * (tl.num_programs(2) // NUM_SPLITS)
            counter = counter_ptr + tile_id + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == NUM_SPLITS - 1:
                tl.store(counter, 0)  # every launch leaves the counters at 0 (graph replays)
                _combine_splits(out_ptr, part_acc_ptr, part_ml_ptr, part - split, tok, head,
                                d, row_ok, io_mask, stride_ot, stride_oh,
                                NUM_SPLITS, HEAD_DIM)  # fmt: skip


@triton.jit
def _combine_splits(
    out_ptr, part_acc_ptr, part_ml_ptr, part0, tok, head, d, row_ok, io_mask,
    stride_ot, stride_oh, NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """out = sum_s w_s acc_s / sum_s w_s l_s over the splits' partials, w_s = 2^(m_s - max m),
    as a running (online) combine; part0: [BLOCK_M] index of each row's split 0. The loads
    bypass L1 (.cg): other SMs wrote these partials during this kernel."""
    m_run = tl.full(part0.shape, float("-inf"), dtype=tl.float32)
    l_run = tl.zeros(part0.shape, dtype=tl.float32)
    o_run = tl.zeros(io_mask.shape, dtype=tl.float32)
    for s in range(NUM_SPLITS):
        part = part0 + s
        m_s = tl.load(part_ml_ptr + part * 2, mask=row_ok, other=float("-inf"),
                      cache_modifier=".cg")  # fmt: skip
        l_s = tl.load(part_ml_ptr + part * 2 + 1, mask=row_ok, other=0.0, cache_modifier=".cg")
        acc_s = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], mask=io_mask,
                        other=0.0, cache_modifier=".cg")  # fmt: skip
        m_new = tl.maximum(m_run, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: weights 0
        alpha = tl.exp2(m_run - m_safe)
        beta = tl.exp2(m_s - m_safe)
        o_run = o_run * alpha[:, None] + acc_s * beta[:, None]
        l_run = l_run * alpha + l_s * beta
        m_run = m_new
    out = o_run / tl.where(l_run == 0.0, 1.0, l_run)[:, None]
    o_offs = tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _reduce_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, num_heads, stride_ot, stride_oh,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Combine the splits of BLOCK_H heads of one token: out = sum_s w_s acc_s / sum_s w_s l_s."""
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, BLOCK_D)
    hs_ok = (head < num_heads)[:, None] & (s < NUM_SPLITS)[None, :]  # [BLOCK_H, SPLITS_PAD]
    part = (tok * num_heads + head)[:, None] * NUM_SPLITS + s[None, :]
    m = tl.load(part_ml_ptr + part * 2, mask=hs_ok, other=float("-inf"))
    l_s = tl.load(part_ml_ptr + part * 2 + 1, mask=hs_ok, other=0.0)
    m_max = tl.max(m, axis=1)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max)[:, None])  # empty splits: 0
    mask = hs_ok[:, :, None] & (d < HEAD_DIM)[None, None, :]
    acc = tl.load(part_acc_ptr + part[:, :, None] * HEAD_DIM + d[None, None, :], mask=mask,
                  other=0.0)  # fmt: skip
    l_sum = tl.sum(w * l_s, axis=1)
    out = tl.sum(acc * w[:, :, None], axis=1) / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
    o_offs = tok * stride_ot + head[:, None] * stride_oh + d[None, :]
    o_mask = (head < num_heads)[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


def default_num_splits(num_ctas: int, max_seq_len: int, num_sms: int) -> int:
    """Splits so the grid covers the GPU ~4 times, each split still >= 256 keys; a power of two,
    so that the kernel has six variants (1..32) to compile, all at start-up.

    Short contexts at batch 1 (the single stream: 8 kv heads, 512-640 keys) still split, on
    purpose. One split is 8 programs on 8 of 132 SMs, each streaming ~320 KB of K/V at one SM's
    share of L2 bandwidth (~100 GB/s): ~3 us. Two or three splits of >= 256 keys read <= 128 KB
    each, and since the last split combines the partials inside the kernel (FUSED_REDUCE) there
    is no second launch to pay for it (that launch, ~2 us in a graph, is what made a single
    pass competitive before). Contexts under 257 keys get one split: one 128-key tile or two
    per program, nothing to spread. CUDA graphs fix the count from their longest context; the
    splits a shorter sequence does not need are empty and cost a few hundred ns each.
    """
    if max_seq_len <= 0:
        return 1
    want = triton.cdiv(4 * num_sms, max(num_ctas, 1))
    splits = max(1, min(want, triton.cdiv(max_seq_len, 256), MAX_SPLITS))
    return 1 << (splits.bit_length() - 1)


MAX_SPLITS = 32


def default_config(
    max_query_len: int, heads_pad: int, head_dim: int, num_rows_ctas: int, num_sms: int
) -> dict[str, int]:
    """Tile shape for a step, from the H100 sweep in benchmarks/bench_kernels.py.

    num_rows_ctas: programs the step would launch with 128-row tiles (before splits).
    Decode is memory-bound: 128-key tiles keep the most bytes in flight (4 warps, any of 2-4
    stages within 1 %). Prefill takes 128x128 tiles (8 warps) once that fills the GPU twice,
    else 64x32 tiles (4 warps) for more programs. Head dims over 128 halve the key tile to fit
    shared memory.
    """
    rows = max(16, min(128, triton.next_power_of_2(max_query_len * heads_pad)))
    wide = 128 if head_dim <= 128 else 64
    if rows <= 16:
        return {"block_m": rows, "block_n": wide, "num_warps": 4, "num_stages": 3}
    if rows <= 64:
        return {"block_m": rows, "block_n": 64, "num_warps": 4, "num_stages": 3}
    if num_rows_ctas < 2 * num_sms:
        return {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}
    return {"block_m": 128, "block_n": wide, "num_warps": 8, "num_stages": 3 if wide == 128 else 2}


def warm_up(kv_cache: torch.Tensor, num_heads: int) -> int:
    """Compile every variant `attention` can pick for this model on this GPU (each tile config
    `default_config` returns x each split count), on one short sequence; -> variants run.

    Triton also specializes integer arguments divisible by 16: the block table's row stride is
    the step's widest row (compact tables), so each variant is compiled with a width that is a
    multiple of 16 and with one that is not (a W1 prefill once compiled the former mid-run)."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    heads_pad = triton.next_power_of_2(num_heads // num_kv_heads)
    num_sms = torch.cuda.get_device_properties(kv_cache.device).multi_processor_count
    configs = {
        tuple(sorted(default_config(q_len, heads_pad, head_dim, ctas, num_sms).items()))
        for q_len in (1, 2, 4, 8, 16, 32, 64, 128)
        for ctas in (1, 4 * num_sms)
    }
    splits = [1 << k for k in range(MAX_SPLITS.bit_length())]
    device = kv_cache.device
    num_runs = 0
    for cfg in configs:
        cfg = dict(cfg)
        q_len = max(1, cfg["block_m"] // heads_pad)
        for num_splits in splits:
            seq_len = q_len + 256 * num_splits
            q = torch.zeros(q_len, num_heads, head_dim, dtype=kv_cache.dtype, device=device)
            num_blocks = triton.cdiv(seq_len, block_size)
            for width in sorted({num_blocks | 1, triton.cdiv(num_blocks, 16) * 16}):
                attention(
                    q,
                    kv_cache,
                    torch.tensor([0, q_len], dtype=torch.int32, device=device),
                    torch.tensor([seq_len], dtype=torch.int32, device=device),
                    torch.zeros(1, width, dtype=torch.int32, device=device),
                    q_len,
                    seq_len,
                    1.0,
                    num_splits=num_splits,
                    config=cfg,
                )
                num_runs += 1
    return num_runs


# Split-K partials are combined inside the attention kernel by the last split to finish (one
# launch). False falls back to the separate `_reduce_kernel` launch (the pre-fusion path).
FUSED_REDUCE = True

# Arrival counters of the fused combine, int32, one per (q tile, seq, kv head) of a launch,
# one buffer per device: zero between launches (the last split resets its own), so launches
# must not overlap in time on one device (pdserve runs attention on one stream per device).
# Never freed: a CUDA graph keeps the address it captured. A capture cannot allocate one (its
# zeroing memset would only run at replay), so the eager warm-up before a capture does.
_COUNTERS: dict[str, list[torch.Tensor]] = {}
_MIN_COUNTERS = 1 << 16


def _counters(device: torch.device, size: int) -> torch.Tensor:
    buffers = _COUNTERS.setdefault(str(device), [])
    if buffers and buffers[-1].numel() >= size:
        return buffers[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"paged attention needs {size} split counters but none were allocated before this "
            "CUDA-graph capture: run the same step once eagerly first (the warm-up does)"
        )
    size = max(size, _MIN_COUNTERS, 2 * buffers[-1].numel() if buffers else 0)
    buffers.append(torch.zeros(size, dtype=torch.int32, device=device))
    return buffers[-1]


# The interpreter (CPU tests): 32-key tiles so that small contexts take both the unmasked and
# the diagonal loop, 16..64-row tiles so that prefill spans several query tiles.
_INTERPRETER_CONFIG = {"block_n": 32, "num_warps": 4, "num_stages": 1}


def attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    *,
    num_splits: int | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """q: [T, num_heads, head_dim] -> out [T, num_heads, head_dim] (see ops/__init__ contract).

    kv_cache: one layer, [num_blocks, 2, block_size, num_kv_heads, head_dim].
    num_splits: None picks from the grid size and max_seq_len; pass a fixed number (e.g. the
    split count for the largest context a CUDA graph will replay) to make the launch
    independent of max_seq_len. Splits a sequence does not need are empty and cost ~nothing.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    group = num_heads // num_kv_heads
    heads_pad = triton.next_power_of_2(group)
    num_seqs = seq_lens.shape[0]
    is_cuda = q.is_cuda
    num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if is_cuda else 1
    if config is not None:
        cfg = config
    elif is_cuda:
        tiles_128 = triton.cdiv(max(max_query_len, 1), max(128 // heads_pad, 1))
        num_rows_ctas = tiles_128 * num_seqs * num_kv_heads
        cfg = default_config(max_query_len, heads_pad, head_dim, num_rows_ctas, num_sms)
    else:
        rows = triton.next_power_of_2(max(max_query_len, 1) * heads_pad)
        cfg = {"block_m": max(16, min(64, rows)), **_INTERPRETER_CONFIG}
    block_m = max(cfg["block_m"], heads_pad, 16)
    block_q = block_m // heads_pad
    num_q_tiles = triton.cdiv(max(max_query_len, 1), block_q)
    if num_splits is None:
        num_ctas = num_q_tiles * num_seqs * num_kv_heads
        num_splits = default_num_splits(num_ctas, max_seq_len, num_sms)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if num_splits > 1:
        part_acc = torch.empty(
            num_tokens, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device
        )
        part_ml = torch.empty(num_tokens, num_heads, num_splits, 2, dtype=torch.float32,
                              device=q.device)  # fmt: skip
    else:
        part_acc = part_ml = out  # unused
    fused_reduce = FUSED_REDUCE and num_splits > 1
    grid = (num_q_tiles, num_seqs, num_kv_heads * num_splits)
    counters = _counters(q.device, num_q_tiles * num_seqs * num_kv_heads) if fused_reduce else out
    block_d = triton.next_power_of_2(head_dim)
    _attn_kernel[grid](
        q, kv_cache, out, part_acc, part_ml, counters, query_start_loc, seq_lens, block_tables,
        scale * LOG2E, num_heads,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_tables.stride(0),
        GROUP=group, HEADS_PAD=heads_pad, BLOCK_Q=block_q, BLOCK_M=block_m,
        BLOCK_N=cfg["block_n"], BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d,
        NUM_SPLITS=num_splits, NUM_STAGES=cfg["num_stages"], INTERPRET=not is_cuda,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", FUSED_REDUCE=fused_reduce,
        num_warps=cfg["num_warps"],
    )  # fmt: skip
    if num_splits > 1 and not fused_reduce:
        # The interpreter pays per program: one program per token there.
        block_h = triton.next_power_of_2(num_heads) if not is_cuda else 4
        _reduce_kernel[(num_tokens, triton.cdiv(num_heads, block_h))](
            out, part_acc, part_ml, num_heads, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=block_h, num_warps=4,
        )  # fmt: skip
    return out
