"""PD disaggregation as scheduler states: a decode instance reserves blocks and waits for KV; a
prefill instance holds its blocks under a lease until the transfer is confirmed."""

from pdserve.sched.request import RequestStatus
from pdserve.types import FinishReason, KVRole, Request, SamplingParams
from tests.sched.test_scheduler import BLOCK, make, req, run

PROMPT = list(range(200, 200 + 3 * BLOCK + 2))  # 14 tokens: 3 full blocks and a partial one


def step_until_done(sched, ex, outputs, now=0):
    while sched.has_unfinished:
        plan = sched.schedule(now)
        for event in sched.update(plan, ex.execute(plan), now):
            outputs.extend(event.new_token_ids)
        sched.check_integrity()
        now += 1
    return now


def copy_kv(src_ex, src_block_ids, dst_ex, reservation, prompt_len):
    """What a transport does: move the prompt tokens the receiver lacks into its blocks."""
    for pos in range(reservation.num_cached_tokens, prompt_len):
        src = src_ex._slot(src_block_ids, pos)
        offset = pos - reservation.num_cached_tokens  # hits are whole blocks
        dst = reservation.block_ids[offset // BLOCK] * BLOCK + offset % BLOCK
        dst_ex.slots[dst] = src_ex.slots[src]


def hand_off(prompt, max_tokens=8, decode=None):
    """Prefill on one scheduler, decode on another; returns (tokens, prefill, decode)."""
    prefill = make()
    decode = decode or make()
    d_sched, d_ex = decode
    p_sched, p_ex = prefill
    d_sched.add_request(
        Request("a", tuple(prompt), SamplingParams(max_tokens=max_tokens), kv_role=KVRole.RECEIVE)
    )
    assert d_sched.schedule(0).is_empty  # reserving is not computing
    (reservation,) = d_sched.drain_kv_reservations()
    assert d_sched.receiving["a"].status is RequestStatus.WAITING_FOR_KV
    p_sched.add_request(
        Request("a", tuple(prompt), SamplingParams(max_tokens=1), kv_role=KVRole.SEND)
    )
    first = []
    step_until_done(p_sched, p_ex, first)
    held = p_sched.sending["a"]
    assert held.status is RequestStatus.SENDING_KV and held.block_ids
    copy_kv(p_ex, held.block_ids, d_ex, reservation, len(prompt))
    assert p_sched.release_kv("a")
    assert p_sched.kv.pool.num_free_blocks == p_sched.kv.num_blocks
    tokens = [t for e in d_sched.finish_receiving("a", first[0]) for t in e.new_token_ids]
    step_until_done(d_sched, d_ex, tokens, now=1)
    return tokens, reservation, prefill, decode


def test_handoff_output_equals_fused():
    fused, _ = run(*make(), [req("a", PROMPT)])
    tokens, reservation, _, (d_sched, d_ex) = hand_off(PROMPT)
    assert tokens == fused["a"]
    assert reservation.num_cached_tokens == 0 and len(reservation.block_ids) == 4
    # the decode side never computed a prompt token
    assert all(s.num_computed_tokens >= len(PROMPT) for p in d_ex.plans for s in p.seqs)


def test_receiver_with_partial_prefix_hit_reserves_only_the_rest():
    fused, _ = run(*make(), [req("a", PROMPT)])
    decode = make()
    run(*decode, [req("warm", PROMPT[: 2 * BLOCK] + [1, 2, 3], max_tokens=1)])
    tokens, reservation, _, _ = hand_off(PROMPT, decode=decode)
    assert reservation.num_cached_tokens == 2 * BLOCK
    assert len(reservation.block_ids) == 2
    assert tokens == fused["a"]


def test_failed_transfer_recomputes_on_the_receiver():
    fused, _ = run(*make(), [req("a", PROMPT)])
    sched, ex = make()
    sched.add_request(
        Request("a", tuple(PROMPT), SamplingParams(max_tokens=8), kv_role=KVRole.RECEIVE)
    )
    sched.schedule(0)
    assert sched.finish_receiving("a", None) == []
    tokens = []
    step_until_done(sched, ex, tokens, now=1)
    assert tokens == fused["a"]


def test_sender_lease_expires_and_frees_blocks():
    sched, ex = make(kv_lease_s=5.0)
    sched.add_request(
        Request("a", tuple(PROMPT), SamplingParams(max_tokens=1), kv_role=KVRole.SEND)
    )
    step_until_done(sched, ex, [])
    assert "a" in sched.sending
    sched.schedule(10.0)  # starts the lease: deadline 15
    sched.schedule(14.0)
    assert "a" in sched.sending
    sched.schedule(15.0)
    assert "a" not in sched.sending
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks
    sched.check_integrity()


def test_abort_while_waiting_for_kv_frees_the_reservation():
    sched, _ = make()
    sched.add_request(
        Request("a", tuple(PROMPT), SamplingParams(max_tokens=8), kv_role=KVRole.RECEIVE)
    )
    sched.schedule(0)
    assert sched.kv.num_blocks_held("a") == 4
    assert sched.finish("a", FinishReason.ABORT)
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks
    assert sched.finish_receiving("a", 5) == []
    sched.check_integrity()


def test_aborted_sender_releases_at_once():
    sched, ex = make()
    sched.add_request(
        Request("a", tuple(PROMPT), SamplingParams(max_tokens=1), kv_role=KVRole.SEND)
    )
    step_until_done(sched, ex, [])
    assert sched.finish("a")  # the decode side gave up
    assert sched.kv.pool.num_free_blocks == sched.kv.num_blocks
