"""The one host-batching rule (experiments/data/hosts.py) that every pipeline uses."""

import grain
import numpy as np
import pytest

from experiments.data import arrays
from experiments.data.hosts import host_batch_size, host_batches, host_rows


def test_host_rows_cover_each_global_batch_in_process_order():
    assert [host_rows(12, p, 3) for p in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert host_batch_size(12, 2, 3) == 4
    with pytest.raises(ValueError, match="does not split over 5 processes"):
        host_batch_size(12, 0, 5)
    with pytest.raises(ValueError, match="process_index"):
        host_rows(12, 3, 3)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_grain_and_array_pipelines_split_the_same_global_batches(process_count):
    """host_batches (grain) and host_rows (numpy) give host p the same rows of the
    global stream, whatever the number of hosts."""
    stream = grain.MapDataset.range(40).shuffle(seed=5)
    global_batches = [np.asarray(b) for b in stream.batch(8)]
    values = {"v": np.arange(40)}
    for p in range(process_count):
        mine = [np.asarray(b) for b in host_batches(stream, 8, p, process_count)]
        rows = host_rows(8, p, process_count)
        assert len(mine) == len(global_batches)
        for got, full in zip(mine, global_batches, strict=True):
            np.testing.assert_array_equal(got, full[rows])
        for got, full in zip(
            arrays.eval_stream(values, 8, p, process_count),
            arrays.eval_stream(values, 8, 0, 1),
            strict=True,
        ):
            np.testing.assert_array_equal(got["v"], full["v"][rows])
