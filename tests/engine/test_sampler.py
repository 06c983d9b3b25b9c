import math

import pytest
import torch

from pdserve.model.sampler import Sampler, SeqSampling, apply_penalties
from pdserve.types import SamplingParams


def row(seed=None, prompt=(), output=(), **params):
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    return SeqSampling(SamplingParams(**params), prompt, output, gen)


def test_greedy_takes_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert Sampler()(logits, [row(temperature=0), row(temperature=0)]).tolist() == [1, 0]


def test_top_k_one_is_greedy_at_any_temperature():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    expected = logits.argmax(-1).tolist()
    got = Sampler(seed=1)(logits.clone(), [row(temperature=5.0, top_k=1)] * 4).tolist()
    assert got == expected


def test_top_p_keeps_only_the_nucleus():
    # probs 0.5, 0.3, 0.2: top_p=0.6 keeps the first two tokens only
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(400, 1)
    got = Sampler(seed=3)(logits, [row(temperature=1.0, top_p=0.6)] * 400)
    assert set(got.tolist()) == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = torch.log(torch.tensor([[0.6, 0.35, 0.05]])).repeat(400, 1)
    got = Sampler(seed=4)(logits, [row(temperature=1.0, min_p=0.1)] * 400)
    assert set(got.tolist()) == {0, 1}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(5000, 1)
    got = Sampler(seed=5)(logits, [row(temperature=1.0)] * 5000)
    freq = torch.bincount(got, minlength=3).float() / 5000
    assert torch.allclose(freq, probs, atol=0.03)


def test_seeded_row_is_independent_of_its_batch():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(0))
    alone = [
        Sampler(seed=0)(logits.clone(), [row(seed=42, temperature=1.0)]).item() for _ in range(1)
    ]
    batch = torch.cat([torch.randn(3, 100), logits])
    rows = [
        row(temperature=1.0),
        row(temperature=0.5),
        row(temperature=0),
        row(seed=42, temperature=1.0),
    ]
    assert Sampler(seed=9)(batch, rows)[3].item() == alone[0]


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    out = apply_penalties(logits.clone(), [row(prompt=(0, 1), repetition_penalty=2.0)])
    assert out.tolist() == [[1.0, -4.0, 1.0, 1.0]]
    out = apply_penalties(
        logits.clone(), [row(output=(2, 2, 3), presence_penalty=0.5, frequency_penalty=0.25)]
    )
    assert out.tolist() == [[2.0, -2.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25]]


def test_suppressed_tokens_are_never_picked():
    logits = torch.tensor([[9.0, 1.0, 0.0]])
    r = SeqSampling(SamplingParams(temperature=0), (), (), None, suppressed_token_ids=(0,))
    assert Sampler()(logits, [r]).item() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": -1}, "max_tokens must be >= 0, got -1"),
        ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"temperature": math.nan}, "temperature must be >= 0, got nan"),
        ({"logprobs": 21}, r"logprobs must be in \[0, 20\], got 21"),
    ],
)
def test_invalid_sampling_params_name_value_and_limit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
