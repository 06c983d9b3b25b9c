"""`pdserve profile` on the CPU with a tiny model: the grid's shapes, the warm-up pass and the
file the simulator loads."""

from __future__ import annotations

import argparse
import json

from pdserve.sim import profile_cli
from pdserve.sim.profiles import load_profile


def _profile(tmp_path, **overrides) -> dict:
    p = argparse.ArgumentParser()
    profile_cli.add_arguments(p)
    argv = ["--model", "dummy:tiny-llama", "--device", "cpu", "--threads", "1",
            "--prefill-lens", "8,24", "--batch-sizes", "1,3", "--context-lens", "40",
            "--decode-steps", "2", "--repeats", "1", "--mixed-prefill-len", "8",
            "--max-num-batched-tokens", "32", "--out", str(tmp_path / "p.json")]  # fmt: skip
    for flag, value in overrides.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    assert profile_cli.main(p.parse_args(argv)) == 0
    return json.loads((tmp_path / "p.json").read_text())


def test_profile_times_each_grid_point_once_per_pass_and_reaches_full_decode_batches(tmp_path):
    data = _profile(tmp_path)
    shapes = [tuple(s["shape"]) for s in data["samples"]]  # (prefill, pairs, decode, ctx)
    # lone prompts: one step each (8 and 24 tokens fit the 32-token budget)
    assert shapes[:2] == [(8, 8 * 9 // 2, 0, 0), (24, 24 * 25 // 2, 0, 0)]
    # 3 prompts of 40 tokens take 4 chunked steps of 32: the first ones decode beside the
    # later ones, and all 3 still decode together for `decode_steps` steps afterwards (before,
    # with 3 tokens each, the first had finished before the last was prefilled)
    full = [s for s in shapes if s[0] == 0 and s[2] == 3]
    assert len(full) >= 2 and all(ctx >= 3 * 40 for _, _, _, ctx in full)
    # the joining 8-token prompt ran beside the full batch: one mixed step
    assert any(s[0] == 8 and s[2] == 3 for s in shapes)
    # the untimed warm-up pass: a second pass doubles the samples, the warm-up adds none
    again = _profile(tmp_path, repeats=2)
    assert len(again["samples"]) == 2 * len(shapes)
    cold = _profile(tmp_path, warmup_passes=0)
    assert len(cold["samples"]) == len(shapes)


def test_profile_file_loads_as_a_measured_simulator_profile(tmp_path):
    data = _profile(tmp_path)
    assert data["kind"] == "measured" and data["model"] == "dummy:tiny-llama"
    assert data["max_num_batched_tokens"] == 32 and data["block_size"] > 0
    profile = load_profile(str(tmp_path / "p.json"))
    assert profile.num_blocks == data["num_blocks"]
    assert json.loads(json.dumps(profile.cost.to_dict())) == data["cost"]
