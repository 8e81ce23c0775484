"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

``mnist1d.data.make_dataset(get_dataset_args())`` builds the official 4000/1000
train/test split from ten hand-drawn templates with a fixed seed (42), with no
download. A validation split, when asked for, is the *last* ``validation_size``
training examples (the training split shrinks accordingly), so that
hyperparameters are never picked on the test set.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np

from experiments.data import arrays
from experiments.data.base import Dataset

LENGTH = 40
NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def load_arrays(seed: int = 42) -> dict[str, np.ndarray]:
    """The raw official split as float32 / int32 numpy arrays (cached).

    If the environment variable ``MNIST1D_NPZ`` names a file written by
    ``python -m experiments.data.mnist1d --export FILE`` (same seed), the arrays
    are read from it instead: for machines without the ``mnist1d`` package.
    """
    path = os.environ.get("MNIST1D_NPZ")
    if path:
        with np.load(path) as f:
            if int(f["seed"]) != seed:
                raise ValueError(f"{path} holds MNIST-1D seed {int(f['seed'])}, not {seed}.")
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return {
        "x": np.asarray(data["x"], np.float32),
        "y": np.asarray(data["y"], np.int32),
        "x_test": np.asarray(data["x_test"], np.float32),
        "y_test": np.asarray(data["y_test"], np.int32),
    }


def get_dataset(
    *,
    validation_size: int = 0,
    data_seed: int = 42,
    label_noise: float = 0.0,
    label_noise_seed: int = 0,
) -> Dataset:
    """MNIST-1D as a :class:`experiments.data.base.Dataset`.

    Args:
      validation_size: hold out the last this-many training examples as the
        ``"validation"`` split (0: no validation split).
      data_seed: the generator's seed (42 is the official dataset).
      label_noise: symmetric label noise on the training and validation splits, each
        noisy label a uniformly drawn other class (``experiments/data/noise.py``:
        one draw per training seed, the test split clean); 0 = none.
      label_noise_seed: the noise's seed (recorded in the results).
    """
    raw = load_arrays(data_seed)
    n = len(raw["y"])
    if not 0 <= validation_size < n:
        raise ValueError(f"`validation_size` must be in [0, {n}); got {validation_size}.")
    cut = n - validation_size
    splits = {
        "train": {"x": raw["x"][:cut], "y": raw["y"][:cut]},
        "test": {"x": raw["x_test"], "y": raw["y_test"]},
    }
    if validation_size:
        splits["validation"] = {"x": raw["x"][cut:], "y": raw["y"][cut:]}
    return arrays.dataset(
        "mnist1d",
        splits,
        num_classes=NUM_CLASSES,
        input_spec={"x": ((LENGTH,), "float32")},
        label_noise=label_noise,
        label_noise_seed=label_noise_seed,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Export MNIST-1D arrays for offline machines.")
    parser.add_argument("--export", required=True, help="the .npz file to write")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    np.savez_compressed(args.export, seed=args.seed, **load_arrays(args.seed))
    print(f"wrote {args.export}")
