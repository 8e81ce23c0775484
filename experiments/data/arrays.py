"""In-memory datasets (small arrays): deterministic shuffled training stream, padded eval.

Used by MNIST-1D and any dataset that fits in host memory as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from experiments.data.base import Batch
from experiments.data.hosts import host_rows


def train_stream(
    arrays: dict[str, np.ndarray],
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    *,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Infinite host-local batches; epoch ``e`` uses permutation ``rng([seed, e])``.

    The last incomplete global batch of an epoch is dropped. ``start_step``
    jumps straight to that batch (no iteration), so resuming is exact.
    """
    n = len(next(iter(arrays.values())))
    per_epoch = n // global_batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {global_batch_size} exceeds the {n} training examples")
    rows = host_rows(global_batch_size, process_index, process_count)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        for b in range(offset, per_epoch):
            idx = perm[b * global_batch_size : (b + 1) * global_batch_size][rows]
            yield {name: value[idx] for name, value in arrays.items()}
        epoch, offset = epoch + 1, 0


def eval_stream(
    arrays: dict[str, np.ndarray],
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Every example once, in order; the last batch padded with ``mask=False`` rows."""
    n = len(next(iter(arrays.values())))
    rows = host_rows(global_batch_size, process_index, process_count)
    for start in range(0, n, global_batch_size):
        idx = np.arange(start, start + global_batch_size)
        mask = idx < n
        idx = np.minimum(idx, n - 1)[rows]
        batch = {name: value[idx] for name, value in arrays.items()}
        batch["mask"] = mask[rows]
        yield batch


def steps_per_epoch(num_train: int, global_batch_size: int) -> int:
    return num_train // global_batch_size
