"""Same new params from the single-device, pmap and sharded-jit train steps (8 fake CPUs)."""

import chex
import jax
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import AxisType

import pmm_jax
from pmm_jax import training
from tests.conftest import NUM_DEVICES
from tests.toy import ToyNet, toy_data, toy_state

pytestmark = pytest.mark.skipif(
    jax.device_count() < NUM_DEVICES, reason="needs 8 (fake CPU) devices"
)

GLOBAL_BATCH = 64
ALPHA = 1.28e-2  # mean reduction: the penalty term is about the size of the cross-entropy


def _batch():
    # Example 45 (on device 5 of 8) has by far the largest feature norm.
    return toy_data(n=GLOBAL_BATCH, big_row=45)


def _single_step(batch, steps=2):
    state = toy_state(ToyNet())
    step = jax.jit(training.make_train_step(alpha=ALPHA))
    for _ in range(steps):
        state, metrics = step(state, batch)
    return state, metrics


def _close(a, b):
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5)


def test_pmap_step_equals_single_device_step():
    batch = _batch()
    want, want_metrics = _single_step(batch)
    state = training.replicate(toy_state(ToyNet(bn_axis_name="batch")))
    step = training.pmap_step(training.make_train_step(alpha=ALPHA, axis_name="batch"))
    for _ in range(2):
        state, metrics = step(state, training.split_for_devices(batch))
    got = training.unreplicate(state)
    _close(got.params, want.params)
    _close(got.batch_stats, want.batch_stats)
    for name in ("loss", "penalty", "radius", "accuracy", "mean_margin", "min_margin"):
        np.testing.assert_allclose(metrics[name][0], want_metrics[name], rtol=1e-5, atol=1e-6)


def test_pmap_with_per_device_radius_differs():
    """Proves the comparison above can fail: a per-device radius gives other params."""
    batch = _batch()
    want, _ = _single_step(batch, steps=1)

    def per_device_radius_step(state, batch):
        def loss_fn(params):
            (logits, aux), upd = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["x"],
                train=True,
                mutable=["batch_stats"],
            )
            kernel = params["head"]["kernel"]
            loss, _ = pmm_jax.pmm_loss(logits, batch["y"], aux["pre_logits"], kernel, alpha=ALPHA)
            return loss, upd

        grads, _ = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, "batch")
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    state = training.replicate(toy_state(ToyNet(bn_axis_name="batch")))
    got = jax.pmap(per_device_radius_step, axis_name="batch")(
        state, training.split_for_devices(batch)
    )
    with pytest.raises(AssertionError):
        _close(training.unreplicate(got).params, want.params)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_jit_step_equals_single_device_step(axis_type):
    batch = _batch()
    want, want_metrics = _single_step(batch)
    mesh = training.make_mesh(axis_type=axis_type)
    assert mesh.devices.size == NUM_DEVICES
    state = training.replicate_on_mesh(toy_state(ToyNet()), mesh)
    step = training.jit_sharded(training.make_train_step(alpha=ALPHA), mesh)
    for _ in range(2):
        state, metrics = step(state, training.shard_batch_on_mesh(batch, mesh))
    _close(state.params, want.params)
    _close(state.batch_stats, want.batch_stats)
    for name in ("loss", "penalty", "radius", "min_margin"):
        np.testing.assert_allclose(metrics[name], want_metrics[name], rtol=1e-5, atol=1e-6)
    assert state.params["head"]["kernel"].sharding.is_fully_replicated


def test_batch_that_does_not_split_gives_a_clear_error():
    mesh = training.make_mesh()
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        training.shard_batch_on_mesh(toy_data(n=60), mesh)
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        training.split_for_devices(toy_data(n=60))
    with pytest.raises(ValueError, match="num_devices"):
        training.make_mesh(num_devices=99)


def test_step_rng_differs_per_device_and_per_step():
    from pmm_jax.training.steps import step_rng

    state = training.replicate(toy_state(ToyNet(dropout_rate=0.5)))
    keys = np.asarray(jax.pmap(lambda s: step_rng(s, "b"), axis_name="b")(state))
    assert len({tuple(k) for k in keys}) == NUM_DEVICES
    later = state.replace(step=state.step + 1)
    keys2 = np.asarray(jax.pmap(lambda s: step_rng(s, "b"), axis_name="b")(later))
    assert not np.any(np.all(keys == keys2, axis=-1))


def _stacked_toy(seeds=(0, 1)):
    """A toy state stacked over seeds (as the trainer trains them) and its vmapped step."""
    state = training.create_train_state(
        ToyNet(), optax.sgd(0.1, momentum=0.9), np.zeros((2, 6), np.float32), seed=list(seeds)
    )
    step = training.make_train_step(alpha=ALPHA)
    return state, step


def test_stacked_seed_batches_shard_on_their_batch_axis():
    """[steps, seeds, batch, ...] batches (batch_axis=2), steps scanned, seeds vmapped:
    the same params as the same program unsharded."""
    steps, seeds = 2, 2
    data = toy_data(n=steps * seeds * GLOBAL_BATCH, big_row=45)
    batches = {k: v.reshape(steps, seeds, GLOBAL_BATCH, *v.shape[1:]) for k, v in data.items()}
    state, step = _stacked_toy()

    def multi_step(state, batches):
        return lax.scan(jax.vmap(step), state, batches)

    want, want_metrics = jax.jit(multi_step)(state, batches)
    mesh = training.make_mesh()
    placed = training.shard_batch_on_mesh(batches, mesh, batch_axis=2)
    assert placed["x"].sharding.spec == training.batch_sharding(mesh, batch_axis=2).spec
    assert placed["x"].sharding.spec == jax.sharding.PartitionSpec(None, None, "data")
    assert placed["x"].addressable_shards[0].data.shape == (steps, seeds, 8, 6)
    sharded = training.jit_sharded(multi_step, mesh, batch_axis=2)
    got, metrics = sharded(training.replicate_on_mesh(state, mesh), placed)
    _close(got.params, want.params)
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5, atol=1e-6)
    assert metrics["loss"].shape == (steps, seeds) and metrics["loss"].sharding.is_fully_replicated


def test_per_example_outputs_stay_sharded_and_gather_to_host():
    """An eval step vmapped over seeds: outputs [seeds, batch] sharded on axis 1
    (out_batch_axis=1), gathered to numpy on the host."""
    state, _ = _stacked_toy()
    eval_step = jax.vmap(training.make_eval_step(), in_axes=(0, None))
    batch = _batch()
    want = jax.jit(eval_step)(state, batch)
    mesh = training.make_mesh()
    step = training.jit_sharded(eval_step, mesh, donate=False, out_batch_axis=1)
    out = step(training.replicate_on_mesh(state, mesh), training.shard_batch_on_mesh(batch, mesh))
    assert out["loss"].sharding.spec == jax.sharding.PartitionSpec(None, "data")
    assert out["loss"].shape == (2, GLOBAL_BATCH)
    host = training.gather_to_host(out)
    assert all(isinstance(v, np.ndarray) for v in host.values())
    for name in ("loss", "correct", "pred", "raw_margin", "pre_logits"):
        np.testing.assert_allclose(host[name], np.asarray(want[name]), rtol=1e-5, atol=1e-6)


def test_leaf_without_the_batch_axis_gets_a_clear_error():
    mesh = training.make_mesh()
    batch = {"x": np.zeros((2, 3), np.float32)}
    with pytest.raises(ValueError, match=r"\['x'\] has shape \(2, 3\).*batch axis 2"):
        training.shard_batch_on_mesh(batch, mesh, batch_axis=2)
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        training.shard_batch_on_mesh({"x": np.zeros((2, 3, 12))}, mesh, batch_axis=2)
    with pytest.raises(ValueError, match="batch_axis"):
        training.batch_sharding(mesh, batch_axis=-1)
