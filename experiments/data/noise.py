"""Symmetric label noise for the noisy-label experiments.

Symmetric (uniform) noise at rate ``p``: each example, independently, keeps its label
with probability ``1 - p``, and otherwise gets a class drawn uniformly from the
``k - 1`` *other* classes (never its own, so ``p`` is exactly the expected fraction
of wrong labels). Only the training and validation splits are corrupted; the test
split stays clean, so that test accuracy measures what was learned about the true
labels (and validation, like training, is what one would have in practice).

Determinism: the draws come from ``np.random.default_rng([seed, _SALT, stream])``.
For one ``seed`` and ``stream`` every example's uniform draw and its offset are fixed,
whatever the rate: the examples flipped at a lower rate are a subset of those flipped
at a higher one (the rates are coupled), which makes a sweep over rates smoother.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# A fixed salt so that the noise stream differs from other streams seeded by `seed`
# (e.g. the training order uses default_rng([seed, epoch])).
_SALT = 0x6E6F6973  # "nois"

NOISY_SPLITS = ("train", "validation")


def symmetric_label_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int, *, stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flips each label with probability ``rate`` to a uniformly drawn *other* class.

    For example ``i``: ``u_i ~ U[0, 1)`` and ``o_i ~ U{1, ..., k - 1}``; if
    ``u_i < rate`` the new label is ``(y_i + o_i) mod k`` (uniform over the classes
    other than ``y_i``), else ``y_i``. The fraction actually flipped is
    ``flipped.mean()`` (binomial around ``rate``).

    Args:
      labels: ``int[N]`` labels in ``[0, num_classes)``.
      rate: flip probability in ``[0, 1]`` (1: every label is wrong).
      num_classes: ``k >= 2``.
      seed: the noise seed (deterministic: the same seed gives the same labels).
      stream: independent streams for one seed (e.g. one per split).

    Returns:
      ``(noisy_labels, flipped)``: the new labels (same dtype and shape as ``labels``, a
      new array) and ``bool[N]``, True where the label was changed.

    Raises:
      ValueError: ``rate`` outside ``[0, 1]`` or not a number, ``num_classes < 2``,
        labels not a 1-D integer array in ``[0, num_classes)``.

    Example:
      >>> import numpy as np
      >>> y = np.zeros(10_000, np.int32)
      >>> noisy, flipped = symmetric_label_noise(y, 0.3, 10, seed=0)
      >>> bool(np.all((noisy != y) == flipped)), round(float(flipped.mean()), 2)
      (True, 0.3)
    """
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"`rate` must be a number in [0, 1]; got {rate!r}.") from None
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ValueError(f"`rate` must be in [0, 1]; got {rate!r}.")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be a 1-D integer array; got {labels.dtype}{list(labels.shape)}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must be in [0, {num_classes}); got [{labels.min()}, {labels.max()}]."
        )
    rng = np.random.default_rng([int(seed), _SALT, int(stream)])
    u = rng.random(labels.shape[0])
    offset = rng.integers(1, num_classes, size=labels.shape[0])
    flipped = u < rate
    noisy = np.where(flipped, (labels.astype(np.int64) + offset) % num_classes, labels)
    return noisy.astype(labels.dtype), flipped


def _stream(split: str) -> int:
    """A stable stream id per split name (not Python's salted ``hash``)."""
    return zlib.crc32(split.encode())


def noisy_splits(
    splits: Mapping[str, Mapping[str, Any]], *, rate: float, num_classes: int, seed: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Symmetric noise on the ``"train"`` and ``"validation"`` splits; others untouched.

    ``splits`` is the per-split dict of arrays the in-memory datasets build
    (``experiments/data/mnist1d.py``, ``tweets.py``: ``{split: {"x": ..., "y":
    int[N]}}``, ``"x"`` possibly a dict). Each noisy split gets its own stream of
    :func:`symmetric_label_noise` (derived from the split's name), so train and
    validation noise are independent; ``"test"`` and any other split are passed
    through as they are. Nothing is modified in place.

    Note that with MNIST-1D the validation split is the tail of the official training
    set: changing ``validation_size`` changes which examples each stream sees.

    Args:
      splits: split name -> ``{"y": int[N], ...}``.
      rate: flip probability in ``[0, 1]``.
      num_classes: ``k``.
      seed: the noise seed.

    Returns:
      ``(new_splits, record)``: the splits with noisy ``"y"`` in train/validation (new
      dicts; other entries shared), and ``{"rate": float, "seed": int,
      "flipped_fraction": {split: float}}`` for the noisy splits present.

    Raises:
      ValueError: as :func:`symmetric_label_noise`; also if ``"train"`` is missing.
    """
    if "train" not in splits:
        raise ValueError(f"`splits` has no 'train' split; it has {sorted(splits)}.")
    out: dict[str, dict[str, Any]] = {}
    fractions: dict[str, float] = {}
    for name, arrays in splits.items():
        arrays = dict(arrays)
        if name in NOISY_SPLITS:
            arrays["y"], flipped = symmetric_label_noise(
                arrays["y"], rate, num_classes, seed, stream=_stream(name)
            )
            fractions[name] = float(flipped.mean()) if flipped.size else 0.0
        out[name] = arrays
    record = {"rate": float(rate), "seed": int(seed), "flipped_fraction": fractions}
    return out, record


class LabelNoise:
    """Symmetric label noise on an in-memory dataset: one draw per training seed.

    * the training labels of training seed ``s``: :func:`symmetric_label_noise` with
      noise seed ``seed`` and stream ``1 + s``, drawn once (cached) -- every method
      trained with seed ``s`` sees the same noisy labels, and each seed its own draw;
    * the validation labels: one draw, stream 0, shared by every seed (the split the
      hyperparameters are chosen on, as noisy as training);
    * the test labels: never touched.

    Args:
      rate: flip probability in ``[0, 1]``.
      num_classes: ``k``.
      seed: the recorded noise seed (``dataset_kwargs.label_noise_seed``).
    """

    def __init__(self, rate: float, num_classes: int, seed: int):
        self.rate, self.num_classes, self.seed = float(rate), int(num_classes), int(seed)
        self._train: dict[int, tuple[np.ndarray, float]] = {}
        self.validation_flipped: float | None = None

    def validation(self, labels: np.ndarray) -> np.ndarray:
        noisy, flipped = symmetric_label_noise(labels, self.rate, self.num_classes, self.seed)
        self.validation_flipped = float(flipped.mean()) if flipped.size else 0.0
        return noisy

    def train_labels(self, labels: np.ndarray, train_seed: int) -> np.ndarray:
        """Training seed ``train_seed``'s noisy copy of ``labels`` (drawn once)."""
        if train_seed not in self._train:
            noisy, flipped = symmetric_label_noise(
                labels, self.rate, self.num_classes, self.seed, stream=1 + int(train_seed)
            )
            self._train[train_seed] = (noisy, float(flipped.mean()) if flipped.size else 0.0)
        return self._train[train_seed][0]

    def train_iter(self, split: Mapping[str, np.ndarray], stream_fn):
        """``stream_fn(arrays, seed, ...)`` (e.g. ``arrays.train_stream``) over ``split``
        with the seed's noisy labels."""

        def train_iter(seed, *args, **kwargs):
            noisy = dict(split, y=self.train_labels(split["y"], seed))
            return stream_fn(noisy, seed, *args, **kwargs)

        return train_iter

    def report(self, train_seeds, train_labels: np.ndarray) -> dict[str, Any]:
        """What was flipped: ``{"rate", "seed", "flipped_fraction": {"train": [per
        seed], "validation": ...}}`` (JSON)."""
        for s in train_seeds:
            self.train_labels(train_labels, int(s))
        return {
            "rate": self.rate,
            "seed": self.seed,
            "flipped_fraction": {
                "train": [self._train[int(s)][1] for s in train_seeds],
                "validation": self.validation_flipped,
            },
        }
