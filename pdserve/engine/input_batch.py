"""A step's integer inputs: numpy staging in (pinned) host memory, one upload to the device.

The runner writes a step's token ids, positions, slots, sequence lengths and block table into
numpy views of one host buffer, then `upload` sends them with two copies (the fixed region and
the used part of the block table) instead of one small tensor per array. On the CPU the "device"
tensors are views of the host buffer itself.

Fixed region (bytes), each array at a fixed offset sized for the largest step:

    | input_ids T | positions T | slot_mapping T | sample_index S |  (int64)
    | pending_dst S | pending_src S |                                (int64)
    | seq_lens S | query_start_loc S + 1 |                           (int32)

Block table: [num_seqs, width] int32, compact (width = this step's widest row), so a step copies
num_seqs * width entries whatever the model's context length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pdserve.sched.request import SchedRequest


@dataclass(slots=True)
class HostInputs:
    """numpy views into the pinned staging buffer (write [:n] of each)."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64; -1 = padding, stores nothing
    sample_index: np.ndarray  # [S] int64: row of each sampling seq's last new token
    pending_dst: np.ndarray  # [S] int64: input row of a pending token (async scheduling)
    pending_src: np.ndarray  # [S] int64: its index in the previous step's sampled ids
    seq_lens: np.ndarray  # [S] int32
    query_start_loc: np.ndarray  # [S + 1] int32
    block_tables: np.ndarray  # [num_seqs, width] int32 (compact)


@dataclass(slots=True)
class DeviceInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64
    sample_index: torch.Tensor  # [num_samples] int64
    pending_dst: torch.Tensor  # [num_pending] int64
    pending_src: torch.Tensor  # [num_pending] int64
    seq_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    block_tables: torch.Tensor  # [num_seqs, width] int32


class InputBuffers:
    """Staging for one step at a time. `host()` waits until the previous upload has left the
    pinned buffer (a step that samples nothing never synchronizes), so reuse is safe."""

    def __init__(self, device: torch.device, max_num_tokens: int, max_num_seqs: int, width: int):
        self.device = device
        self.is_cuda = device.type == "cuda"
        self._uploaded: torch.cuda.Event | None = None
        self._alloc(max_num_tokens, max_num_seqs, width)

    def _alloc(self, max_num_tokens: int, max_num_seqs: int, width: int) -> None:
        t, s = max_num_tokens, max_num_seqs
        self.max_num_tokens, self.max_num_seqs, self.max_width = t, s, width
        self._i64 = 3 * t + 3 * s
        self._i32 = 2 * s + 2  # even, so the region ends 8-byte aligned
        self._fixed_bytes = 8 * self._i64 + 4 * self._i32
        pin = self.is_cuda
        self._host = torch.zeros(self._fixed_bytes, dtype=torch.uint8, pin_memory=pin)
        self._host_bt = torch.zeros(s * width, dtype=torch.int32, pin_memory=pin)
        if self.is_cuda:
            self._dev = torch.zeros(self._fixed_bytes, dtype=torch.uint8, device=self.device)
            self._dev_bt = torch.zeros(s * width, dtype=torch.int32, device=self.device)
        else:
            self._dev, self._dev_bt = self._host, self._host_bt
        self._host_views = self._views(self._host)
        self._np = [v.numpy() for v in self._host_views]
        self._dev_views = self._views(self._dev)

    def _views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        t, s = self.max_num_tokens, self.max_num_seqs
        i64 = buf[: 8 * self._i64].view(torch.int64)
        i32 = buf[8 * self._i64 :].view(torch.int32)
        per_token = [i64[k * t : (k + 1) * t] for k in range(3)]
        per_seq = [i64[3 * t + k * s : 3 * t + (k + 1) * s] for k in range(3)]
        return [*per_token, *per_seq, i32[:s], i32[s:]]

    def host(self, num_tokens: int, num_seqs: int, width: int) -> HostInputs:
        if self._uploaded is not None:
            self._uploaded.synchronize()
        if (
            num_tokens > self.max_num_tokens
            or num_seqs > self.max_num_seqs
            or (width > self.max_width)
        ):
            self._alloc(
                max(num_tokens, self.max_num_tokens),
                max(num_seqs, self.max_num_seqs),
                max(width, self.max_width),
            )
        bt = self._host_bt.numpy()[: num_seqs * width].reshape(num_seqs, width)
        return HostInputs(*self._np, bt)

    def upload(
        self, num_tokens: int, num_seqs: int, width: int, num_samples: int, num_pending: int = 0
    ) -> DeviceInputs:
        num_bt = num_seqs * width
        if self.is_cuda:
            self._dev.copy_(self._host, non_blocking=True)
            self._dev_bt[:num_bt].copy_(self._host_bt[:num_bt], non_blocking=True)
            if self._uploaded is None:
                self._uploaded = torch.cuda.Event()
            self._uploaded.record()
        ids, pos, slots, sample, dst, src, seq_lens, qsl = self._dev_views
        return DeviceInputs(
            ids[:num_tokens],
            pos[:num_tokens],
            slots[:num_tokens],
            sample[:num_samples],
            dst[:num_pending],
            src[:num_pending],
            seq_lens[:num_seqs],
            qsl[: num_seqs + 1],
            self._dev_bt[:num_bt].view(num_seqs, width),
        )


class BlockTableRows:
    """Each running request's block table as a numpy row, extended as `block_ids` grows.

    `block_ids` only grows between admission and preemption or finish (KVManager appends,
    `free` clears), so a row stays valid until `drop` is called for those requests.
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[np.ndarray, int]] = {}

    def row(self, req: SchedRequest) -> np.ndarray:
        block_ids = req.block_ids
        n = len(block_ids)
        row, filled = self._rows.get(req.request_id, (None, 0))
        if row is None or n > len(row):
            grown = np.zeros(max(2 * n, 64), dtype=np.int32)
            if row is not None:
                grown[:filled] = row[:filled]
            row = grown
        if n > filled:
            row[filled:n] = block_ids[filled:n]
            self._rows[req.request_id] = (row, n)
        return row

    def drop(self, request_id: str) -> None:
        self._rows.pop(request_id, None)
