"""The controller's global prefix index: block hash -> {instance_id: tier}.

Fed by each instance's KV cache events (BlockStored / BlockRemoved), published in batches numbered
0, 1, 2 ... per instance. A batch that skips a number means messages were lost: `apply` refuses it
and returns False, and the caller asks the instance for a full resync (`replace_instance`) instead
of drifting. Pure Python, deterministic: only dicts (insertion-ordered), no sets.

Chained hashes make the walk exact: block i's hash covers every token before it, so a request's
cached prefix on an instance is the longest run of its block hashes, from the first, that the
instance holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

from pdserve.types import BlockRemoved, BlockStored, KVCacheEvent

_NOWHERE: dict[str, str] = {}  # the holders of a block no instance holds (never written)


class PrefixIndex:
    def __init__(self) -> None:
        self._where: dict[int, dict[str, str]] = {}  # block hash -> {instance_id: tier}
        self._next_seq_no: dict[str, int] = {}  # instance_id -> the batch number expected next
        self._num_blocks: dict[str, int] = {}  # instance_id -> blocks it holds (index view)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def instance_ids(self) -> list[str]:
        return list(self._next_seq_no)

    def expected_seq_no(self, instance_id: str) -> int:
        return self._next_seq_no.get(instance_id, 0)

    def num_blocks(self, instance_id: str) -> int:
        return self._num_blocks.get(instance_id, 0)

    # ---- feeding -------------------------------------------------------------------------

    def apply(self, instance_id: str, seq_no: int, events: Iterable[KVCacheEvent]) -> bool:
        """Apply batch `seq_no` of an instance's events. False (nothing applied) if it is not the
        batch expected next: a gap (replay or resync needed) or a duplicate (already applied)."""
        if seq_no != self._next_seq_no.get(instance_id, 0):
            return False
        for event in events:
            if isinstance(event, BlockStored):
                self._add(instance_id, event.block_hash, event.tier)
            elif isinstance(event, BlockRemoved):
                self._remove(instance_id, event.block_hash)
        self._next_seq_no[instance_id] = seq_no + 1
        return True

    def replace_instance(
        self, instance_id: str, block_hashes: Iterable[int], seq_no: int, tier: str = "device"
    ) -> None:
        """Full resync: the instance holds exactly `block_hashes` as of batch `seq_no - 1`; the
        next batch expected is `seq_no`."""
        self.drop_instance(instance_id)
        for block_hash in block_hashes:
            self._add(instance_id, block_hash, tier)
        self._next_seq_no[instance_id] = seq_no

    def drop_instance(self, instance_id: str) -> None:
        """Forget everything an instance holds (it died, or is about to be resynced)."""
        if self._num_blocks.get(instance_id, 0):
            for block_hash in [h for h, where in self._where.items() if instance_id in where]:
                self._remove(instance_id, block_hash)
        self._num_blocks.pop(instance_id, None)
        self._next_seq_no.pop(instance_id, None)

    def _add(self, instance_id: str, block_hash: int, tier: str) -> None:
        where = self._where.setdefault(block_hash, {})
        if instance_id not in where:
            self._num_blocks[instance_id] = self._num_blocks.get(instance_id, 0) + 1
        where[instance_id] = tier

    def _remove(self, instance_id: str, block_hash: int) -> None:
        where = self._where.get(block_hash)
        if where is None or instance_id not in where:
            return  # removal of a block the index never saw stored: nothing to undo
        del where[instance_id]
        self._num_blocks[instance_id] -= 1
        if not where:
            del self._where[block_hash]

    # ---- queries -------------------------------------------------------------------------

    def holders(self, block_hash: int) -> dict[str, str]:
        """{instance_id: tier} of the instances holding this block (a copy)."""
        return dict(self._where.get(block_hash, {}))

    def hashes_of(self, instance_id: str) -> list[int]:
        return [h for h, where in self._where.items() if instance_id in where]

    def longest_prefix(self, block_hashes: Sequence[int]) -> dict[str, int]:
        """{instance_id: number of leading blocks of `block_hashes` it holds}, for every instance
        holding at least the first block; in the order instances first appear on the chain.

        One membership loop per instance holding the first block (usually one or two), over
        the chain's holder dicts looked up once; a plain loop is the cheapest walk in CPython."""
        where_of = self._where.get
        first = where_of(block_hashes[0]) if block_hashes else None
        if not first:
            return {}
        rest = islice(block_hashes, 1, None)
        if len(first) == 1:
            (instance_id,) = first
            depth = 1
            for block_hash in rest:
                where = where_of(block_hash)
                if where is None or instance_id not in where:
                    break
                depth += 1
            return {instance_id: depth}
        wheres = [where_of(h, _NOWHERE) for h in rest]
        depths: dict[str, int] = {}
        for instance_id in first:
            depth = 1
            for where in wheres:
                if instance_id not in where:
                    break
                depth += 1
            depths[instance_id] = depth
        return depths
