"""The routing fast paths give what the generic code gave: `sample_two` draws exactly what
`random.Random.sample(range(n), 2)` draws (same pair, same generator state after), power-of-two
picks the less loaded of the pair (the first on a tie), `add_pending` copies every snapshot
field, and the messages' written-out `__init__`s (used by the mypyc build; `types.fast_init`
replaces them in pure Python) take the dataclass fields in order with the same defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import random
import sys

import pytest

from pdserve.cluster import policies
from pdserve.cluster.policies import PowerOfTwo, RouteDecision, add_pending, sample_two
from pdserve.types import InstanceSnapshot, Request, TokenEvent


@pytest.mark.parametrize("n", [2, 3, 5, 20, 21, 22, 33, 64, 100, 129])
def test_sample_two_draws_what_random_sample_draws(n):
    for seed in range(40):
        ours, theirs = random.Random(seed), random.Random(seed)
        for _ in range(25):
            assert sample_two(ours, n) == tuple(theirs.sample(range(n), 2))
        assert ours.getrandbits(64) == theirs.getrandbits(64)


def _snap(instance_id: str, waiting_tokens: int, free: int) -> InstanceSnapshot:
    return InstanceSnapshot(instance_id, num_waiting_tokens=waiting_tokens, num_free_blocks=free,
                            num_total_blocks=100)  # fmt: skip


def test_power_of_two_takes_the_less_loaded_of_its_pair_and_the_first_on_a_tie():
    snaps = [_snap(f"i{k}", 100 * k, 100) for k in range(8)]
    policy, rng = PowerOfTwo(), random.Random(0)
    for _ in range(50):
        pair = sorted(rng.sample(range(8), 2))
        assert policy.route(Request("r", (1,)), snaps, 0.0).instance_id == f"i{pair[0]}"
    tied = [_snap(f"i{k}", 0, 100) for k in range(8)]
    policy, rng = PowerOfTwo(), random.Random(0)
    for _ in range(50):
        decision = policy.route(Request("r", (1,)), tied, 0.0, {"i3": 2})
        first = min(rng.sample(range(8), 2))
        assert (decision.instance_id, decision.matched_blocks) == (
            f"i{first}", 2 if first == 3 else 0)  # fmt: skip


def test_add_pending_copies_every_field_and_adds_one_request():
    values = {f.name: f"v{k}" if f.type == "str" else k + 1.5 if f.type == "float" else k + 1
              for k, f in enumerate(dataclasses.fields(InstanceSnapshot))}  # fmt: skip
    snap = InstanceSnapshot(**values)
    expected = dataclasses.replace(snap, num_waiting=snap.num_waiting + 1,
                                   num_waiting_tokens=snap.num_waiting_tokens + 7)  # fmt: skip
    assert add_pending(snap, 7) == expected


@pytest.mark.parametrize("cls", [Request, TokenEvent, InstanceSnapshot, RouteDecision])
def test_written_out_inits_take_the_fields_in_order_with_their_defaults(cls):
    module = sys.modules[cls.__module__]
    tree = ast.parse(inspect.getsource(module))
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    (init,) = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    params = [a.arg for a in init.args.args[1:]]
    fields = dataclasses.fields(cls)
    assert params == [f.name for f in fields]
    defaults = dict(zip(params[len(params) - len(init.args.defaults) :], init.args.defaults))
    for f in fields:
        if f.default is not dataclasses.MISSING:
            value = eval(ast.unparse(defaults[f.name]), vars(module))  # noqa: S307 (own source)
            assert repr(value) == repr(f.default), f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert ast.unparse(defaults[f.name]) == "None", f.name  # None: a fresh default
        else:
            assert f.name not in defaults
    stored = [t.attr for s in init.body if isinstance(s, ast.Assign) for t in s.targets
              if isinstance(t, ast.Attribute)]  # fmt: skip
    assert stored == [f.name for f in fields]


def test_pure_python_builds_the_messages_with_fast_init():
    # The written-out __init__ would fail on a frozen instance in pure Python: replaced.
    for cls in (Request, TokenEvent, InstanceSnapshot, RouteDecision):
        assert cls.__init__.__code__.co_filename == "<string>", cls
    assert policies.RouteDecision("i0").reason == ""
