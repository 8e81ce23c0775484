"""scikit-learn's handwritten digits (UCI ML digits): 1,797 real 8x8 images, 10 classes.

Shipped inside scikit-learn (``sklearn.datasets.load_digits``): nothing is downloaded.
The images (grey levels 0..16) are scaled to ``[0, 1]`` and flattened to 64 features.
A fixed split, stratified by class, from a fixed permutation (seed 0): 359 test
images (20% of each class), then ``validation_size`` (default 288) validation images,
the rest (1,150 by default) for training; nothing is ever selected on the test split.
"""

from __future__ import annotations

import functools

import numpy as np

from experiments.data import arrays
from experiments.data.base import Dataset

NUM_CLASSES = 10
FEATURES = 64
TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


def _stratified_order(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the test split and of the rest, each class split in the same ratio."""
    rng = np.random.default_rng(seed)
    test, rest = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(TEST_FRACTION * len(idx))
        test.append(idx[:n_test])
        rest.append(idx[n_test:])
    return np.sort(np.concatenate(test)), rng.permutation(np.concatenate(rest))


def get_dataset(
    *, validation_size: int = 288, label_noise: float = 0.0, label_noise_seed: int = 0
) -> Dataset:
    """The digits as a :class:`experiments.data.base.Dataset` (``x: float32[b, 64]``).

    Args:
      validation_size: images of the non-test part held out as ``"validation"``
        (0: none).
      label_noise, label_noise_seed: symmetric label noise on the training and
        validation splits (``experiments.data.arrays.dataset``).
    """
    x, y = _arrays()
    test, rest = _stratified_order(y, seed=0)
    if not 0 <= validation_size < len(rest):
        raise ValueError(f"`validation_size` must be in [0, {len(rest)}); got {validation_size}.")
    train, validation = rest[validation_size:], rest[:validation_size]
    splits = {"train": {"x": x[train], "y": y[train]}, "test": {"x": x[test], "y": y[test]}}
    if validation_size:
        splits["validation"] = {"x": x[validation], "y": y[validation]}
    return arrays.dataset(
        "digits",
        splits,
        num_classes=NUM_CLASSES,
        input_spec={"x": ((FEATURES,), "float32")},
        label_noise=label_noise,
        label_noise_seed=label_noise_seed,
    )
