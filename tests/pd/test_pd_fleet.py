"""PD disaggregation end to end on CPU: a controller, one prefill and one decode worker process,
the KV handed over NIXL. Outputs equal one fused engine's, whatever happens to the transfer."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import generate_latest

from pdserve.engine import protocol as P
from pdserve.types import FinishReason, KVRole, Request, SamplingParams
from tests.cluster.harness import request, run_request, token_ids
from tests.pd.conftest import LEASE_S, PD_CONFIG

MAX_TOKENS = 6


def prompts(seed: int, num: int) -> list[list[int]]:
    """`num` prompts of 30-57 tokens, none sharing a block with another seed's."""
    return [
        [(11 * i + 7 * j + 101 * seed) % 499 + 1 for j in range(30 + 9 * i)] for i in range(num)
    ]


PROMPTS = prompts(0, 4)


async def kv_status(controller, instance_id: str) -> dict:
    return await controller.call(instance_id, "kv_status")


async def prompt_tokens(controller, instance_id: str) -> int:
    return P.decode_status(await controller.call(instance_id, "status")).stats.prompt_tokens


def metric(controller, name: str) -> float:
    text = generate_latest(controller.metrics.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def live_ids(controller, role: str) -> list[str]:
    return [r.instance_id for r in controller.registry.live() if r.info.role == role]


async def inject(controller, fault: dict) -> None:
    """The fault on every live prefill instance (it matches only its request's transfer)."""
    for instance_id in live_ids(controller, "prefill"):
        await controller.call(instance_id, "kv_fault", fault)


async def holder_of(controller, prid: str) -> str:
    """The prefill instance with `prid`'s transfer in flight."""
    for instance_id in live_ids(controller, "prefill"):
        if prid in (await kv_status(controller, instance_id))["inflight"]:
            return instance_id
    raise AssertionError(f"no prefill instance is sending {prid}")


async def assert_both_sides_clean(controller) -> None:
    """No live instance holds KV for a hand-off, and every allocator is intact."""
    for record in controller.registry.live():
        status = await kv_status(controller, record.instance_id)
        assert not (status["sending"] or status["receiving"] or status["inflight"]), status
        await controller.call(record.instance_id, "check_integrity")


def test_pd_outputs_equal_fused_single_instance(pd_fleet, reference):
    ctrl = pd_fleet.controller

    async def main():
        blocks_before = metric(ctrl, "pdserve:pd_kv_transferred_blocks_total")
        got = []
        for i, prompt in enumerate(PROMPTS):
            got.append(token_ids(await run_request(ctrl, request(f"pd{i}", prompt, MAX_TOKENS))))
        moved = metric(ctrl, "pdserve:pd_kv_transferred_blocks_total") - blocks_before
        await assert_both_sides_clean(ctrl)
        return got, moved

    got, moved = pd_fleet.run(main())
    assert got == reference(PROMPTS, MAX_TOKENS)
    assert moved == sum(-(-len(p) // 16) for p in PROMPTS)  # every prompt block, none cached


def test_partial_prefix_hit_on_decode_sends_only_the_missing_blocks(pd_fleet, reference):
    ctrl = pd_fleet.controller
    prefix = [5 + j % 97 for j in range(32)]  # two full blocks
    warm = prefix + [401, 402, 403]  # 35 tokens
    hit = prefix + [300 + j for j in range(30)]  # 62 tokens: 30 uncached on decode

    async def main():
        await run_request(ctrl, request("warm", warm, MAX_TOKENS))
        await asyncio.sleep(0.3)  # the decode's KV events reach the prefix index
        blocks_before = metric(ctrl, "pdserve:pd_kv_transferred_blocks_total")
        events = await run_request(ctrl, request("hit", hit, MAX_TOKENS))
        moved = metric(ctrl, "pdserve:pd_kv_transferred_blocks_total") - blocks_before
        await assert_both_sides_clean(ctrl)
        return token_ids(events), moved

    got, moved = pd_fleet.run(main())
    assert got == reference([hit], MAX_TOKENS)[0]
    assert moved == 4 - 2  # blocks 2 and 3 of the prompt; 0 and 1 were cached on decode


def test_cost_mode_prefills_on_decode_when_the_hand_off_costs_more(pd_fleet, reference):
    ctrl = pd_fleet.controller
    prompt = [17, 18, 19, 20, 21, 22, 23, 24, 25, 26]
    slow_link = dataclasses.replace(PD_CONFIG, disaggregation="cost", link_latency_s=10.0)

    async def main():
        ids = [*live_ids(ctrl, "prefill"), "decode-0"]
        before = [await prompt_tokens(ctrl, i) for i in ids]
        ctrl.pd.configure(slow_link)  # any hand-off costs 10 s more than prefilling on decode
        try:
            got = token_ids(await run_request(ctrl, request("short", prompt, MAX_TOKENS)))
        finally:
            ctrl.pd.configure(PD_CONFIG)
        after = [await prompt_tokens(ctrl, i) for i in ids]
        return got, [a - b for a, b in zip(after, before)], ctrl.pd.last_choice

    got, computed, choice = pd_fleet.run(main())
    assert got == reference([prompt], MAX_TOKENS)[0]
    assert computed == [0, 0, len(prompt)]
    assert choice.prefill_id is None and choice.est_pair_s > 10.0 > choice.est_fused_s


def test_dropped_and_truncated_transfers_recompute_on_decode(pd_fleet, reference):
    ctrl = pd_fleet.controller
    fresh = prompts(1, 2)

    async def main():
        failures_before = metric(ctrl, "pdserve:pd_kv_transfer_failures_total")
        got = []
        for kind, prompt in zip(("drop", "truncate"), fresh):
            rid = f"fault-{kind}"
            fault = {"kind": kind, "request_id": rid + "@prefill"}
            await inject(ctrl, fault)
            got.append(token_ids(await run_request(ctrl, request(rid, prompt, MAX_TOKENS))))
        failures = metric(ctrl, "pdserve:pd_kv_transfer_failures_total") - failures_before
        await assert_both_sides_clean(ctrl)
        return got, failures

    got, failures = pd_fleet.run(main())
    assert got == reference(fresh, MAX_TOKENS)
    assert failures == 2


def test_abort_during_transfer_releases_both_sides(pd_fleet):
    ctrl = pd_fleet.controller

    async def main():
        fault = {"kind": "delay", "request_id": "abort-1@prefill", "delay_s": 0.5}
        await inject(ctrl, fault)
        stream = ctrl.generate(request("abort-1", prompts(2, 1)[0], MAX_TOKENS))
        first = await anext(stream)  # the prefill's token; its KV is on the way (delayed)
        assert len(first.new_token_ids) == 1
        held = await kv_status(ctrl, await holder_of(ctrl, "abort-1@prefill"))
        await stream.aclose()  # the client is gone
        await asyncio.sleep(1.0)  # the delayed transfer ends; then the decode side is aborted
        await assert_both_sides_clean(ctrl)
        return held

    held = pd_fleet.run(main())
    assert list(held["inflight"]) == ["abort-1@prefill"]


def test_controller_abort_during_transfer_ends_the_stream_and_releases_both_sides(pd_fleet):
    ctrl = pd_fleet.controller

    async def main():
        fault = {"kind": "delay", "request_id": "abort-2@prefill", "delay_s": 0.5}
        await inject(ctrl, fault)
        stream = ctrl.generate(request("abort-2", prompts(4, 1)[0], MAX_TOKENS))
        first = await anext(stream)
        held = await kv_status(ctrl, await holder_of(ctrl, "abort-2@prefill"))
        await ctrl.abort("abort-2")  # not the stream's owner closing it: the API call
        rest = [event async for event in stream]
        await asyncio.sleep(1.0)  # the delayed transfer ends; then the decode side is aborted
        await assert_both_sides_clean(ctrl)
        return first, held, rest

    first, held, rest = pd_fleet.run(main())
    assert len(first.new_token_ids) == 1
    assert list(held["inflight"]) == ["abort-2@prefill"]
    assert [(e.new_token_ids, e.finish_reason) for e in rest] == [((), FinishReason.ABORT)]


def test_kv_held_without_a_receiver_is_freed_when_its_lease_expires(pd_fleet):
    ctrl = pd_fleet.controller

    async def main():
        instance_id = live_ids(ctrl, "prefill")[0]
        record = ctrl.registry.get(instance_id)
        sampling = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        req = Request("orphan@prefill", tuple(PROMPTS[0]), sampling, kv_role=KVRole.SEND)
        ctrl._send(record, P.SUBMIT, P.encode_request(req))  # no KV_SEND will ever come
        await asyncio.sleep(0.5)
        held = (await kv_status(ctrl, instance_id))["sending"]
        await asyncio.sleep(LEASE_S + 0.3)
        await assert_both_sides_clean(ctrl)
        return held

    assert list(pd_fleet.run(main())) == ["orphan@prefill"]


def test_transfer_metrics_on_the_controller_registry(pd_fleet):
    ctrl = pd_fleet.controller
    pd_fleet.run(run_request(ctrl, request("metrics", prompts(3, 1)[0], 2)))
    text = generate_latest(ctrl.metrics.registry).decode()
    assert metric(ctrl, "pdserve:pd_kv_transferred_bytes_total") > 0
    assert metric(ctrl, "pdserve:pd_kv_transfer_seconds_count") >= 1
    assert 'pdserve:pd_requests_total{mode="disaggregated"}' in text
    assert "pdserve:pd_kv_transfer_failures_total" in text


def test_prefill_killed_mid_transfer_recomputes_on_decode_and_is_routed_around(pd_fleet, reference):
    """Runs last in this module: it kills one of the two prefill workers for good."""
    ctrl = pd_fleet.controller
    doomed, after = prompts(5, 1)[0], prompts(6, 2)

    async def main():
        await inject(ctrl, {"kind": "delay", "request_id": "kill@prefill", "delay_s": 30.0})
        stream = ctrl.generate(request("kill", doomed, MAX_TOKENS))
        events = [await anext(stream)]  # the prefill's token; its KV transfer is held back
        victim = await holder_of(ctrl, "kill@prefill")
        pd_fleet.workers["prefill"].kill(victim)  # SIGKILL while the transfer is pending
        events += [event async for event in stream]
        (survivor,) = [i for i in live_ids(ctrl, "prefill") if i != victim]
        before = await prompt_tokens(ctrl, survivor)
        got_after = [
            token_ids(await run_request(ctrl, request(f"after{i}", p, MAX_TOKENS)))
            for i, p in enumerate(after)
        ]
        computed = await prompt_tokens(ctrl, survivor) - before
        await asyncio.sleep(LEASE_S + 0.3)  # any lease the survivors hold has run out
        await assert_both_sides_clean(ctrl)
        return events, victim, live_ids(ctrl, "prefill"), got_after, computed

    events, victim, prefills, got_after, computed = pd_fleet.run(main())
    assert token_ids(events) == reference([doomed], MAX_TOKENS)[0]
    assert events[-1].finish_reason is FinishReason.LENGTH
    assert victim not in prefills and len(prefills) == 1
    assert got_after == reference(after, MAX_TOKENS)
    assert computed == sum(len(p) for p in after)  # both went to the surviving prefill
