import random

import pytest

from pdserve.bench.floor import H100_REFERENCE, SHAPES, floor
from pdserve.bench.workload import w1_workload


def _reference_prompt_lens():
    # /work/shared/reference/floors.py draws only the lengths from Random(0)
    rng = random.Random(0)
    return [rng.randint(100, 1024) for _ in range(256)]


@pytest.mark.parametrize(
    "shape, out_tok_per_s, prefill_s, decode_s",
    [("llama-3.1-8b", 10880, 2.77, 3.25), ("qwen3-0.6b", 31965, 0.22, 1.83)],
)
def test_floor_reproduces_the_reference_numbers(shape, out_tok_per_s, prefill_s, decode_s):
    f = floor(SHAPES[shape], _reference_prompt_lens(), [256] * 256, H100_REFERENCE)
    assert round(f.output_tok_per_s) == out_tok_per_s
    assert round(f.prefill_s, 2) == prefill_s and round(f.decode_s, 2) == decode_s


def test_floor_of_w1_itself():
    w1 = w1_workload()
    lens = [r.prompt_len for r in w1], [r.output_len for r in w1]
    assert round(floor(SHAPES["llama-3.1-8b"], *lens, H100_REFERENCE).output_tok_per_s) == 11099
    assert round(floor(SHAPES["qwen3-0.6b"], *lens, H100_REFERENCE).output_tok_per_s) == 32667


def test_shorter_outputs_leave_the_batch_early():
    m = SHAPES["qwen3-0.6b"]
    both = floor(m, [100, 100], [10, 10], H100_REFERENCE)
    one_short = floor(m, [100, 100], [10, 5], H100_REFERENCE)
    assert one_short.decode_s < both.decode_s
    assert one_short.output_tokens == 15
