"""A model-free executor: it stores each token id in its KV slot and checks that every step reads
back exactly the request's own context, so wrong block tables or bad prefix hits fail loudly.
The next token is a pure function of the whole context, as a greedy model's would be."""

from __future__ import annotations

import hashlib

from pdserve.sched.plan import StepPlan, StepResult


def next_token(context: list[int], vocab_size: int) -> int:
    digest = hashlib.blake2b(repr(context).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % vocab_size


class FakeExecutor:
    def __init__(self, num_blocks: int, block_size: int, vocab_size: int = 1000):
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.slots: list[int | None] = [None] * (num_blocks * block_size)
        self.plans: list[StepPlan] = []

    def _slot(self, block_ids: list[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def execute(self, plan: StepPlan) -> StepResult:
        self.plans.append(plan)
        result = StepResult()
        for seq in plan.seqs:
            req = seq.request
            end = seq.context_len
            assert len(req.block_ids) * self.block_size >= end, "blocks missing for new tokens"
            for pos in range(seq.num_computed_tokens, end):
                self.slots[self._slot(req.block_ids, pos)] = req.token_ids[pos]
            context = [self.slots[self._slot(req.block_ids, p)] for p in range(end)]
            assert context == req.token_ids[:end], f"{req.request_id} reads a foreign context"
            if seq.samples:
                result.sampled_token_ids[req.request_id] = next_token(context, self.vocab_size)
        return result
