"""Tests for the documented training order and the two ways of feeding it.

``experiments/data/order.py`` defines the order; the tfds + grain host pipeline
(``Dataset.train_iter``) and the device-resident path (``experiments/data/feed.py``
over ``Dataset.device_data``) must both give exactly its batches. Everything runs
under ``tfds.testing.mock_data`` (no download, no TensorFlow) on the 8 fake CPU
devices of the root conftest, in one process: the multi-host rule is checked by
comparing the device path's global batches with the host pipeline's host shards.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.config.plan import plan_of
from experiments.configs import cifar10_resnet44
from experiments.data import base, feed, images, order
from experiments.run.build import build
from experiments.run.evaluation import evaluate
from pmm_jax import training
from tests.mock_tfds import mock, take


@pytest.fixture(scope="module")
def mesh():
    return training.make_mesh()


# --------------------------------------------------------------------------------------
# The order itself


@pytest.mark.parametrize(
    "seed, epoch, n", [(0, 0, 1), (0, 0, 10), (3, 7, 1000), (2**32 - 1, 2**31, 777)]
)
def test_numpy_and_jax_compute_the_same_permutation(seed, epoch, n):
    expected = order.permutation(seed, epoch, n)
    assert sorted(expected.tolist()) == list(range(n))
    on_device = jax.jit(order.permutation, static_argnums=(2, 3))(
        jnp.uint32(seed), jnp.uint32(epoch), n, jnp
    )
    np.testing.assert_array_equal(np.asarray(on_device), expected)


def test_permutations_differ_by_seed_and_epoch():
    n = 1000
    perms = {(s, e): order.permutation(s, e, n) for s in range(3) for e in range(3)}
    for a in perms:
        for b in perms:
            if a != b:
                assert (perms[a] != perms[b]).mean() > 0.9
    # Pinned: the documented order must not change silently (it decides resumed runs).
    np.testing.assert_array_equal(order.permutation(0, 0, 10), [8, 6, 2, 1, 3, 0, 5, 9, 7, 4])
    np.testing.assert_array_equal(order.permutation(1, 0, 10), [8, 9, 0, 7, 6, 1, 4, 3, 5, 2])


def test_train_order_is_epoch_permutations_with_the_remainder_dropped():
    n, batch = 23, 5  # 4 steps per epoch, 3 records dropped per epoch
    stream = order.TrainOrder(11, n, batch)
    assert len(stream) % batch == 0
    for epoch in range(3):
        perm = order.permutation(11, epoch, n)
        got = [stream[epoch * 20 + q] for q in range(20)]
        np.testing.assert_array_equal(got, perm[:20])
    assert stream[-1] == stream[len(stream) - 1] and stream[3:6] == [stream[q] for q in (3, 4, 5)]
    with pytest.raises(IndexError):
        stream[len(stream)]
    with pytest.raises(ValueError, match="at least"):
        order.TrainOrder(0, 4, 5)
    with pytest.raises(ValueError, match="seed"):
        order.TrainOrder(2**32, 10, 5)


def test_gathered_block_spans_epochs():
    """Blocks crossing an epoch boundary take each step from its own epoch's order."""
    n, batch, steps = 23, 5, 6
    table = {"x": np.arange(100, 100 + n + 3), "y": np.zeros(n + 3, np.int32)}
    fn = jax.jit(
        lambda t, s, step0: feed.gather_train_block(
            t, s, step0, start=3, n=n, global_batch_size=batch, steps=steps
        )
    )
    for step0 in (0, 2, 7):
        block = fn(table, jnp.asarray([0, 9], jnp.uint32), step0)
        assert block["x"].shape == (steps, 2, batch)
        for t in range(steps):
            epoch, j = divmod(step0 + t, n // batch)
            for s, seed in enumerate((0, 9)):
                rows = order.permutation(seed, epoch, n)[j * batch : (j + 1) * batch]
                np.testing.assert_array_equal(block["x"][t, s], 103 + rows)


# --------------------------------------------------------------------------------------
# The grain pipeline and the device path give the documented order


def record_ids(name, x):
    """Record index of each image of ``x`` ``[steps, batch, 32, 32, 3]`` (the mock's
    images are distinct)."""
    source = tfds.data_source(name, split="train", download=False)
    ids = {np.asarray(source[i]["image"]).tobytes(): i for i in range(len(source))}
    return np.array([[ids[image.tobytes()] for image in batch] for batch in x])


@pytest.mark.parametrize("seeds", [(0,), (5, 1)])
def test_grain_and_device_give_the_documented_batches(seeds, mesh):
    n, batch, steps = 100, 16, 3  # 6 steps per epoch, 4 records dropped; blocks cross epochs
    with mock(110):
        ds = images.get_dataset("cifar10", validation_size=10)
        assert ds.device_data is not None and ds.num_train == n
        blocks = take(feed.train_blocks(ds, seeds, batch, steps, mesh), 5)  # 15 steps
        assert blocks[0]["x"].sharding == training.batch_sharding(mesh, batch_axis=2)
        device = {k: np.concatenate([np.asarray(b[k]) for b in blocks]) for k in ("x", "y")}
        assert device["x"].shape == (15, len(seeds), batch, 32, 32, 3)
        for s, seed in enumerate(seeds):
            host = take(ds.train_iter(seed, batch, 0, 1), 15)
            np.testing.assert_array_equal(device["x"][:, s], np.stack([b["x"] for b in host]))
            np.testing.assert_array_equal(device["y"][:, s], np.stack([b["y"] for b in host]))
            ids = record_ids("cifar10", device["x"][:, s])
            for t in range(15):
                epoch, j = divmod(t, n // batch)
                expected = order.permutation(seed, epoch, n)[j * batch : (j + 1) * batch]
                np.testing.assert_array_equal(ids[t], expected)


def test_both_resume_mid_epoch_in_the_same_order(mesh):
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)  # 80 records, 5 steps per epoch
        full = take(ds.train_iter(7, 16, 0, 1), 12)
        host = take(ds.train_iter(7, 16, 0, 1, start_step=7), 5)
        device = take(feed.train_blocks(ds, [7], 16, 1, mesh, start_step=7), 5)
        for t in range(5):
            for key in ("x", "y"):
                np.testing.assert_array_equal(host[t][key], full[7 + t][key])
                np.testing.assert_array_equal(np.asarray(device[t][key])[0, 0], full[7 + t][key])


@pytest.mark.parametrize("process_count", [2, 4])
def test_device_batches_are_the_hosts_shards_in_process_order(process_count, mesh):
    """One process here: the device path's global batch is what ``P`` hosts' grain
    pipelines read, concatenated in process order (the rows each host's devices get)."""
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)
        device = take(feed.train_blocks(ds, [3], 16, 1, mesh), 6)
        hosts = [take(ds.train_iter(3, 16, p, process_count), 6) for p in range(process_count)]
        for t in range(6):
            np.testing.assert_array_equal(
                np.asarray(device[t]["x"])[0, 0], np.concatenate([h[t]["x"] for h in hosts])
            )


@pytest.mark.parametrize("split, batch", [("test", 32), ("validation", 8), ("train", 24)])
def test_device_eval_batches_equal_the_host_ones(split, batch, mesh):
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)
        on_device = list(feed.eval_batches(ds, split, batch, mesh))
        host = list(ds.eval_iter(split, batch, 0, 1))
        assert len(on_device) == len(host)
        for a, b in zip(on_device, host, strict=True):
            assert a["x"].sharding == training.batch_sharding(mesh)
            for key in ("x", "y", "mask"):
                np.testing.assert_array_equal(np.asarray(a[key]), b[key])
        with pytest.raises(ValueError, match="Unknown eval split"):
            feed.eval_batches(ds, "dev", 8, mesh)


def test_on_device_choice():
    with mock(50):
        for value, expected in (("auto", True), (True, True), ("true", True), (False, False)):
            ds = images.get_dataset("cifar10", validation_size=10, on_device=value)
            assert (ds.device_data is not None) == expected
        assert ds.device_data is None  # on_device=False: fed from grain
        data = images.get_dataset("cifar100", validation_size=10).device_data
        assert data.train == ("train", 0, 40) and data.eval["validation"] == ("train", 40, 50)
        assert data.nbytes == 100 * (32 * 32 * 3 + 4) and data._tables is None  # nothing read yet
        tables = data.tables()
        assert tables["train"]["x"].shape == (50, 32, 32, 3)
        assert tables["test"]["y"].dtype == np.int32
        assert data.tables() is tables
        with pytest.raises(ValueError, match="on_device"):
            images.get_dataset("cifar10", validation_size=10, on_device="yes")
        with pytest.raises(ValueError, match="cannot be held"):
            images.get_dataset("imagenet2012", raw_jpeg=False, on_device=True)
        assert images.get_dataset("imagenet2012", raw_jpeg=False).device_data is None
    assert base.wants_device_data("auto", base.DEVICE_BUDGET_BYTES)
    assert not base.wants_device_data("auto", base.DEVICE_BUDGET_BYTES + 1)


def test_feed_checks_its_arguments(mesh):
    with mock(50):
        ds = images.get_dataset("cifar10", validation_size=10)
        with pytest.raises(ValueError, match="devices"):
            feed.train_blocks(ds, [0], 12, 1, mesh)  # 12 rows over 8 devices
        with pytest.raises(ValueError, match="at least"):
            feed.train_blocks(ds, [0], 64, 1, mesh)  # a batch larger than the split
        with pytest.raises(ValueError, match="seed"):
            feed.train_blocks(ds, [-1], 8, 1, mesh)


# --------------------------------------------------------------------------------------
# The trainer's hook: both sources train to the same state


@pytest.mark.slow
def test_trainer_trains_the_same_from_the_host_and_the_device(mesh):
    config = cifar10_resnet44.get_config("local")
    config.num_train_steps = 6
    config.steps_per_call = 3
    config.batch_size = 16
    for what in ("log", "eval", "checkpoint"):
        config[f"{what}_every_steps"] = 3
    with mock(60):  # 50 training records: 3 steps per epoch, blocks cross epochs
        ds = images.get_dataset("cifar10", validation_size=10)
        trainee = build(config, ds, mesh, plan_of(config, ds.num_train))
        start = trainee.initial_state()
        losses, params = [], []
        for source in (ds, images.get_dataset("cifar10", validation_size=10, on_device=False)):
            assert (source.device_data is None) == (len(losses) == 1)
            state = jax.tree.map(jnp.copy, start)
            blocks = feed.train_blocks(source, trainee.seeds, 16, 3, mesh)
            out = []
            for _ in range(2):
                state, metrics = trainee.train_steps(state, next(blocks))
                out.append(np.asarray(metrics["loss"]))
            losses.append(np.concatenate(out))
            params.append(jax.device_get(state.params))
            evaluated = evaluate(trainee, state, source, "validation", 8)
            losses[-1] = np.append(losses[-1], evaluated["loss"])
    np.testing.assert_array_equal(losses[0], losses[1])
    jax.tree.map(np.testing.assert_array_equal, params[0], params[1])
