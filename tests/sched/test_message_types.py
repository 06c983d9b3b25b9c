"""The messages built per step or per request keep the dataclass contract with their faster
`__init__` (`types.fast_init`): the same parameters and defaults, a fresh default per factory,
frozen instances, equality, hashing and `dataclasses.replace`."""

from __future__ import annotations

import dataclasses

import pytest

from pdserve.types import InstanceSnapshot, Request, SamplingParams, TokenEvent


def test_fast_init_takes_the_generated_parameters_and_defaults():
    event = TokenEvent("r1", (11,), num_prompt_tokens=7)
    assert dataclasses.astuple(event) == ("r1", (11,), None, (), None, 7, 0, None)
    snap = InstanceSnapshot("i0", num_free_blocks=3)
    assert snap.num_free_blocks == 3 and snap.block_size == 16 and snap.role == "fused"
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'new_token_ids'"):
        TokenEvent("r1")
    with pytest.raises(TypeError, match="unexpected keyword argument 'tokens'"):
        TokenEvent("r1", (), tokens=1)


def test_a_default_factory_gives_each_instance_its_own_value():
    a, b = Request("a", (1, 2)), Request("b", (3,))
    assert a.sampling == SamplingParams() and a.sampling is not b.sampling
    given = SamplingParams(max_tokens=3)
    assert Request("c", (1,), given).sampling is given


def test_instances_stay_frozen_comparable_hashable_and_replaceable():
    event = TokenEvent("r1", (11,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.request_id = "r2"  # type: ignore[misc]
    assert event == TokenEvent("r1", (11,)) and hash(event) == hash(TokenEvent("r1", (11,)))
    assert dataclasses.replace(event, request_id="r2") == TokenEvent("r2", (11,))
    assert TokenEvent.__init__.__qualname__ == "TokenEvent.__init__"
