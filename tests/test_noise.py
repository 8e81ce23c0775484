"""Tests for experiments/data/noise.py (symmetric label noise)."""

import numpy as np
import pytest

from experiments.data import mnist1d
from experiments.data.noise import noisy_splits, symmetric_label_noise

N, K = 20_000, 10


def labels(n=N, k=K, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n).astype(np.int32)


def test_rate_zero_changes_nothing():
    y = labels()
    noisy, flipped = symmetric_label_noise(y, 0.0, K, seed=3)
    np.testing.assert_array_equal(noisy, y)
    assert not flipped.any() and noisy.dtype == y.dtype and noisy is not y


def test_rate_one_flips_every_label_to_another_class():
    y = labels()
    noisy, flipped = symmetric_label_noise(y, 1.0, K, seed=3)
    assert flipped.all() and np.all(noisy != y)
    assert noisy.min() >= 0 and noisy.max() < K


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.8])
def test_flipped_fraction_is_binomial_and_flips_are_real(rate):
    y = labels()
    noisy, flipped = symmetric_label_noise(y, rate, K, seed=11)
    np.testing.assert_array_equal(flipped, noisy != y)  # a flip never lands on the own class
    sd = np.sqrt(rate * (1 - rate) / N)
    assert abs(flipped.mean() - rate) < 5 * sd


def test_new_class_uniform_over_the_others():
    # Per true class c, the new labels of the flipped examples are uniform over the k - 1
    # other classes: chi-square with (k - 2) dof per class, pooled.
    y = labels(60_000)
    noisy, flipped = symmetric_label_noise(y, 0.5, K, seed=5)
    chi2, dof = 0.0, 0
    for c in range(K):
        new = noisy[flipped & (y == c)]
        counts = np.bincount(new, minlength=K).astype(float)
        assert counts[c] == 0
        others = np.delete(counts, c)
        expected = others.sum() / (K - 1)
        chi2 += ((others - expected) ** 2 / expected).sum()
        dof += K - 2
    # mean dof, sd sqrt(2 dof): 6 sd is a generous bound (p < 1e-6 for a correct sampler).
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_deterministic_per_seed_and_rates_are_coupled():
    y = labels(5000)
    a, fa = symmetric_label_noise(y, 0.3, K, seed=7)
    b, fb = symmetric_label_noise(y.copy(), 0.3, K, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    c, _ = symmetric_label_noise(y, 0.3, K, seed=8)
    assert np.mean(a != c) > 0.2
    d, _ = symmetric_label_noise(y, 0.3, K, seed=7, stream=1)
    assert np.mean(a != d) > 0.2
    low, flow = symmetric_label_noise(y, 0.1, K, seed=7)
    assert np.all(fa[flow]) and np.array_equal(low[flow], a[flow])  # nested flips


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan"), float("inf"), "a lot", None])
def test_bad_rate_names_rate(rate):
    with pytest.raises(ValueError, match="`rate`"):
        symmetric_label_noise(labels(10), rate, K, seed=0)


def test_bad_labels_and_classes():
    with pytest.raises(ValueError, match="`num_classes`"):
        symmetric_label_noise(labels(10), 0.1, 1, seed=0)
    with pytest.raises(ValueError, match="`labels` must be in"):
        symmetric_label_noise(np.array([0, 10]), 0.1, 10, seed=0)
    with pytest.raises(ValueError, match="`labels` must be a 1-D integer"):
        symmetric_label_noise(np.zeros(3, np.float32), 0.1, 10, seed=0)


def test_noisy_splits_on_in_memory_splits():
    rng = np.random.default_rng(0)
    splits = {
        "train": {"x": rng.normal(size=(3000, 4)), "y": labels(3000)},
        "validation": {"x": {"ids": np.zeros((1000, 2))}, "y": labels(1000, seed=1)},
        "test": {"x": rng.normal(size=(1000, 4)), "y": labels(1000, seed=2)},
    }
    before = {s: v["y"].copy() for s, v in splits.items()}
    out, record = noisy_splits(splits, rate=0.4, num_classes=K, seed=9)
    for s in splits:  # nothing in place
        np.testing.assert_array_equal(splits[s]["y"], before[s])
        assert out[s]["x"] is splits[s]["x"]
    assert out["test"]["y"] is splits["test"]["y"]  # the test split stays clean
    assert set(record) == {"rate", "seed", "flipped_fraction"}
    assert record["rate"] == 0.4 and record["seed"] == 9
    assert set(record["flipped_fraction"]) == {"train", "validation"}
    for s in ("train", "validation"):
        frac = np.mean(out[s]["y"] != before[s])
        assert record["flipped_fraction"][s] == pytest.approx(frac)
        assert abs(frac - 0.4) < 0.06
    # Train and validation use different streams.
    t, _ = symmetric_label_noise(before["train"][:1000], 0.4, K, seed=9)
    assert not np.array_equal(out["validation"]["y"], t)
    again, _ = noisy_splits(splits, rate=0.4, num_classes=K, seed=9)
    for s in splits:
        np.testing.assert_array_equal(again[s]["y"], out[s]["y"])


def test_noisy_splits_without_validation_and_errors():
    splits = {"train": {"y": labels(100)}, "test": {"y": labels(50)}}
    _, record = noisy_splits(splits, rate=0.0, num_classes=K, seed=0)
    assert record["flipped_fraction"] == {"train": 0.0}
    with pytest.raises(ValueError, match="'train'"):
        noisy_splits({"test": {"y": labels(5)}}, rate=0.1, num_classes=K, seed=0)
    with pytest.raises(ValueError, match="`rate`"):
        noisy_splits(splits, rate=2.0, num_classes=K, seed=0)


def test_works_on_mnist1d_labels():
    y = mnist1d.load_arrays()["y"]
    noisy, flipped = symmetric_label_noise(y, 0.2, mnist1d.NUM_CLASSES, seed=0)
    assert noisy.dtype == y.dtype == np.int32 and abs(flipped.mean() - 0.2) < 0.05
