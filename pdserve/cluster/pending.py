"""Prompts routed to an instance but not started there yet, by block hash.

The prefix index learns a prompt's blocks only after the instance computed them (KV events), so
a burst of requests sharing a new prefix would scatter over the fleet before the first one is
indexed. Routing reads the index and this overlay together: a prompt on its way to an instance
counts as cached there. Entries leave when the request's first event arrives (its blocks are in
the index by then) or when it ends. Pure; only dicts (insertion-ordered).
"""

from __future__ import annotations

from collections.abc import Sequence

from pdserve.cluster.prefix_index import PrefixIndex


class PendingPrefixes:
    def __init__(self) -> None:
        self._holders: dict[int, dict[str, int]] = {}  # block hash -> {instance_id: requests}

    def __len__(self) -> int:
        return len(self._holders)

    def add(self, instance_id: str, block_hashes: Sequence[int]) -> None:
        for h in block_hashes:
            holders = self._holders.setdefault(h, {})
            holders[instance_id] = holders.get(instance_id, 0) + 1

    def remove(self, instance_id: str, block_hashes: Sequence[int]) -> None:
        for h in block_hashes:
            holders = self._holders.get(h)
            if holders is None or instance_id not in holders:
                continue
            holders[instance_id] -= 1
            if not holders[instance_id]:
                del holders[instance_id]
                if not holders:
                    del self._holders[h]

    def matched(self, index: PrefixIndex, block_hashes: Sequence[int]) -> dict[str, int]:
        """{instance_id: leading blocks cached or on their way}, the larger of the two views."""
        matched = index.longest_prefix(block_hashes)
        if not self._holders:
            return matched
        alive: dict[str, int] | None = None  # instances still matching at this depth
        for depth, h in enumerate(block_hashes):
            holders = self._holders.get(h)
            if not holders:
                break
            if alive is None:
                alive = holders
            elif any(i not in holders for i in alive):
                alive = {i: 1 for i in alive if i in holders}
            if not alive:
                break
            for instance_id in alive:
                if matched.get(instance_id, 0) <= depth:
                    matched[instance_id] = depth + 1
        return matched
