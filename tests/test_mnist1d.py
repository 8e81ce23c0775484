"""MNIST-1D data and the 1-D CNN."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.data import arrays, mnist1d
from experiments.models.cnn1d import Conv1D, ConvNet1D


def test_official_split_shapes_and_determinism():
    a = mnist1d.load_arrays.__wrapped__(42)  # bypass the cache: really generate twice
    b = mnist1d.load_arrays.__wrapped__(42)
    assert a["x"].shape == (4000, 40) and a["x_test"].shape == (1000, 40)
    assert a["x"].dtype == np.float32 and a["y"].dtype == np.int32
    assert set(np.unique(a["y"])) == set(range(10))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = mnist1d.load_arrays.__wrapped__(7)
    assert not np.array_equal(a["x"], c["x"])


def test_validation_is_the_last_training_examples():
    raw = mnist1d.load_arrays()
    ds = mnist1d.get_dataset(validation_size=500)
    assert ds.num_train == 3500 and ds.eval_splits == ("validation", "test")
    val = np.concatenate([b["x"][b["mask"]] for b in ds.eval_iter("validation", 128)])
    np.testing.assert_array_equal(val, raw["x"][3500:])
    train_rows = np.concatenate([next(ds.train_iter(0, 100))["x"] for _ in range(1)])
    assert not any((raw["x"][3500:] == row).all(-1).any() for row in train_rows)
    with pytest.raises(ValueError, match="validation_size"):
        mnist1d.get_dataset(validation_size=4000)
    with pytest.raises(ValueError, match="no split 'validation'"):
        mnist1d.get_dataset().eval_iter("validation", 10)


def test_train_stream_is_deterministic_resumable_and_sharded():
    data = {"x": np.arange(50)[:, None].astype(np.float32), "y": np.arange(50, dtype=np.int32)}
    it = arrays.train_stream(data, seed=3, global_batch_size=8)
    first = [next(it) for _ in range(14)]  # 6 batches per epoch: crosses two epochs
    again = arrays.train_stream(data, seed=3, global_batch_size=8, start_step=9)
    for i in range(9, 14):
        np.testing.assert_array_equal(next(again)["y"], first[i]["y"])
    epoch0 = np.concatenate([b["y"] for b in first[:6]])
    assert len(set(epoch0.tolist())) == 48  # no repeats inside an epoch
    other = arrays.train_stream(data, seed=4, global_batch_size=8)
    assert not np.array_equal(next(other)["y"], first[0]["y"])
    halves = [next(arrays.train_stream(data, 3, 8, p, 2))["y"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first[0]["y"])
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        next(arrays.train_stream(data, 3, 8, 0, 3))


def test_eval_stream_pads_the_last_batch():
    data = {"y": np.arange(10, dtype=np.int32)}
    batches = list(arrays.eval_stream(data, 4))
    assert [b["y"].shape[0] for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[-1]["mask"], [True, True, False, False])
    np.testing.assert_array_equal(np.concatenate([b["y"][b["mask"]] for b in batches]), data["y"])


def test_conv1d_matches_flax_conv():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 40, 4)), jnp.float32)
    for k, s, p in [(5, 2, 1), (3, 2, 1), (3, 1, 0)]:
        ours = Conv1D(7, k, s, p)
        params = ours.init(jax.random.key(0), x)
        ref = nn.Conv(7, (k,), strides=(s,), padding=((p, p),))
        np.testing.assert_allclose(
            ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5
        )


def test_convbase_has_125_features_and_follows_the_contract():
    model = ConvNet1D(dropout_rate=0.2)
    x = jnp.zeros((4, 40))
    variables = model.init(jax.random.key(0), x, train=False)
    logits, aux = model.apply(variables, x, train=False)
    assert logits.shape == (4, 10) and aux["pre_logits"].shape == (4, 125)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        logits, aux["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6
    )
    n = sum(v.size for v in jax.tree.leaves(variables["params"]))
    assert n == (5 * 1 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)


def test_export_and_reload_without_the_package(tmp_path, monkeypatch):
    path = tmp_path / "mnist1d.npz"
    want = mnist1d.load_arrays.__wrapped__(42)  # from the package
    subprocess.run(
        [sys.executable, "-m", "experiments.data.mnist1d", "--export", str(path)],
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
    )
    monkeypatch.setenv("MNIST1D_NPZ", str(path))
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # the package is not needed now
    got = mnist1d.load_arrays.__wrapped__(42)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match="seed 42, not 7"):
        mnist1d.load_arrays.__wrapped__(7)
