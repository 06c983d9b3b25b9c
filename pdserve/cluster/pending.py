"""Prompts routed to an instance but not started there yet, by block hash.

The prefix index learns a prompt's blocks only after the instance computed them (KV events), so
a burst of requests sharing a new prefix would scatter over the fleet before the first one is
indexed. Routing reads the index and this overlay together: a prompt on its way to an instance
counts as cached there. Entries leave when the request's first event arrives (its blocks are in
the index by then) or when it ends. Pure; only dicts (insertion-ordered).

Every entry is a whole chain (a prompt's block hashes from the first block), so an instance's
pending hashes are prefix-closed: a chained hash at depth d implies the same blocks 0..d-1.
Whether an instance holds a query's block d is then true up to some depth and false after it,
and its matched depth is found by bisection (O(log blocks) per instance with pending prompts)
instead of walking the whole prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pdserve.cluster.prefix_index import PrefixIndex


class PendingPrefixes:
    def __init__(self) -> None:
        # instance_id -> {block hash: pending requests holding it}; no instance without entries
        self._counts: dict[str, Counter[int]] = {}

    def __len__(self) -> int:
        """(instance, block hash) pairs pending."""
        return sum(len(counts) for counts in self._counts.values())

    def add(self, instance_id: str, block_hashes: Sequence[int]) -> None:
        """A prompt's chain (from its first block) is on its way to `instance_id`."""
        if not block_hashes:
            return
        counts = self._counts.get(instance_id)
        if counts is None:
            counts = self._counts[instance_id] = Counter()
        counts.update(block_hashes)  # one C loop

    def remove(self, instance_id: str, block_hashes: Sequence[int]) -> None:
        """Undo one `add(instance_id, block_hashes)` (hashes not pending there are skipped)."""
        counts = self._counts.get(instance_id)
        if counts is None or not block_hashes:
            return
        get, pop = counts.get, counts.pop  # pop: Counter's __delitem__ is Python code
        for h in block_hashes:
            n = get(h, 0)
            if n > 1:
                counts[h] = n - 1
            elif n:
                pop(h)
        if not counts:
            del self._counts[instance_id]

    def matched(self, index: PrefixIndex, block_hashes: Sequence[int]) -> dict[str, int]:
        """{instance_id: leading blocks cached or on their way}, the larger of the two views."""
        matched = index.longest_prefix(block_hashes)
        if not self._counts or not block_hashes:
            return matched
        first, end = block_hashes[0], len(block_hashes)
        for instance_id, counts in self._counts.items():
            if first not in counts:
                continue
            if block_hashes[-1] in counts:
                depth = end
            else:  # block depth-1 is pending here, block hi-1 is not
                depth, hi = 1, end
                while hi - depth > 1:
                    mid = (depth + hi) // 2
                    if block_hashes[mid - 1] in counts:
                        depth = mid
                    else:
                        hi = mid
            if matched.get(instance_id, 0) < depth:
                matched[instance_id] = depth
        return matched
