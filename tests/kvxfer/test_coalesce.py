"""Block ids -> per-layer byte descriptors: runs of consecutive ids coalesce."""

import numpy as np
import pytest

from pdserve.kvxfer.coalesce import block_runs, check_block_ids, layer_descriptors, truncate
from pdserve.kvxfer.spec import KVLayout

SRC = KVLayout(num_layers=4, num_blocks=100, block_bytes=64)
DST = KVLayout(num_layers=4, num_blocks=50, block_bytes=64)


def test_runs_break_where_either_side_stops_being_consecutive():
    runs = block_runs([3, 4, 5, 9, 10, 11], [7, 8, 9, 2, 3, 20])
    assert runs.src_starts.tolist() == [3, 9, 11]
    assert runs.dst_starts.tolist() == [7, 2, 20]
    assert runs.lengths.tolist() == [3, 2, 1]


def test_one_consecutive_range_is_one_descriptor_per_layer():
    runs = block_runs(range(10, 74), range(0, 64))
    descs = layer_descriptors(runs, SRC, DST, 0, 4)
    assert len(descs) == 4
    assert descs.nbytes.tolist() == [64 * 64] * 4
    assert descs.total_bytes == 4 * 64 * 64


def test_descriptor_count_is_layers_times_runs():
    src_ids = [0, 1, 2, 5, 6, 9, 20, 21, 22, 23]  # 4 runs
    dst_ids = [10, 11, 12, 13, 14, 15, 30, 31, 32, 33]  # breaks at 5 and 20: same 4 runs
    descs = layer_descriptors(block_runs(src_ids, dst_ids), SRC, DST, 1, 3)
    assert len(descs) == 2 * 4


def test_offsets_follow_the_layer_major_layout():
    descs = layer_descriptors(block_runs([7, 30], [2, 40]), SRC, DST, 2, 4)
    # layer-major: (layer 2, run 0), (layer 2, run 1), (layer 3, run 0), (layer 3, run 1)
    assert descs.src_offsets.tolist() == [(2 * 100 + 7) * 64, (2 * 100 + 30) * 64,
                                          (3 * 100 + 7) * 64, (3 * 100 + 30) * 64]  # fmt: skip
    assert descs.dst_offsets.tolist() == [(2 * 50 + 2) * 64, (2 * 50 + 40) * 64,
                                          (3 * 50 + 2) * 64, (3 * 50 + 40) * 64]  # fmt: skip


def test_no_blocks_no_descriptors():
    assert len(layer_descriptors(block_runs([], []), SRC, DST, 0, 4)) == 0


def test_truncate_keeps_the_first_bytes_and_cuts_inside_a_descriptor():
    descs = layer_descriptors(block_runs([0, 1], [0, 1]), SRC, DST, 0, 4)  # 4 x 128 bytes
    cut = truncate(descs, 0.5 + 32 / 512)
    assert cut.nbytes.tolist() == [128, 128, 32]
    assert cut.src_offsets.tolist() == descs.src_offsets[:3].tolist()
    assert not cut.is_layer_major


def test_mismatched_id_lists_are_refused():
    with pytest.raises(ValueError, match="3 src block ids but 2 dst"):
        block_runs([1, 2, 3], [1, 2])


def test_ids_out_of_range_and_repeated_dst_ids_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        check_block_ids(np.array([49, 50]), DST, "dst")
    with pytest.raises(ValueError, match="repeat"):
        check_block_ids([4, 4], DST, "dst")
    check_block_ids([4, 4], SRC, "src")  # one source block may feed two places


def test_incompatible_layouts_and_bad_layer_ranges_are_refused():
    runs = block_runs([0], [0])
    with pytest.raises(ValueError, match="incompatible"):
        layer_descriptors(runs, SRC, KVLayout(4, 50, 128), 0, 4)
    with pytest.raises(ValueError, match="layer range"):
        layer_descriptors(runs, SRC, DST, 3, 5)
