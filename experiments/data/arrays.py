"""In-memory datasets (small arrays): deterministic shuffled training stream, padded eval.

Used by MNIST-1D, scikit-learn's digits and any dataset that fits in host memory as
numpy arrays: :func:`dataset` builds the :class:`Dataset` from its splits, with
optional symmetric label noise on the training and validation splits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np

from experiments.data.base import Batch, Dataset
from experiments.data.hosts import host_rows
from experiments.data.noise import LabelNoise


def _identity(rng, batch, train):
    del rng, train
    return batch


def dataset(
    name: str,
    splits: dict[str, dict[str, np.ndarray]],
    *,
    num_classes: int,
    input_spec: dict,
    label_noise: float = 0.0,
    label_noise_seed: int = 0,
    preprocess: Callable = _identity,
) -> Dataset:
    """A :class:`Dataset` over in-memory ``splits`` (``{"train", "test"[, "validation"]}``
    of ``{"x", "y"}`` arrays).

    ``label_noise > 0`` corrupts the training labels (one draw per training seed) and
    the validation labels (one draw), never the test labels
    (:class:`experiments.data.noise.LabelNoise`); ``extra["label_noise"](seeds)``
    reports the fractions flipped.
    """
    extra, train_iter = {}, functools.partial(train_stream, splits["train"])
    if label_noise:
        noise = LabelNoise(label_noise, num_classes, label_noise_seed)
        if "validation" in splits:
            splits = {**splits, "validation": dict(splits["validation"])}
            splits["validation"]["y"] = noise.validation(splits["validation"]["y"])
        train_iter = noise.train_iter(splits["train"], train_stream)
        extra["label_noise"] = functools.partial(noise.report, train_labels=splits["train"]["y"])

    def eval_iter(split, global_batch_size, process_index=0, process_count=1):
        if split not in splits:
            raise ValueError(f"{name} has no split {split!r}; it has {sorted(splits)}.")
        return eval_stream(splits[split], global_batch_size, process_index, process_count)

    return Dataset(
        name=name,
        num_classes=num_classes,
        num_train=len(splits["train"]["y"]),
        input_spec=input_spec,
        train_iter=train_iter,
        eval_iter=eval_iter,
        eval_splits=tuple(s for s in ("validation", "test") if s in splits),
        preprocess=preprocess,
        extra=extra,
    )


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
