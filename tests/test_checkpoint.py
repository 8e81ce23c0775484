"""Checkpoints: resume equality, restore across device counts, corrupt-latest fallback."""

import os

import chex
import jax
import numpy as np
import pytest

from pmm_jax import training
from tests.conftest import NUM_DEVICES, ON_CPU
from tests.toy import ToyNet, toy_data, toy_state


def _batches(n):
    return [toy_data(n=32, seed=100 + i) for i in range(n)]


def _run(state, step, batches, ckpt=None):
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if ckpt is not None:
            ckpt.save(state)
    return state, losses


def test_resume_gives_identical_losses(tmp_path):
    step = jax.jit(training.make_train_step(alpha=1e-3))
    batches = _batches(10)
    full_state, full_losses = _run(toy_state(ToyNet(dropout_rate=0.2)), step, batches)

    ckpt = training.Checkpointer(tmp_path / "ckpt", save_every=3, keep=2)
    _run(toy_state(ToyNet(dropout_rate=0.2)), step, batches[:7], ckpt)  # "crashes" after 7
    ckpt.close()
    assert training.Checkpointer(tmp_path / "ckpt").all_steps() == [3, 6]  # keep=2

    fresh = toy_state(ToyNet(dropout_rate=0.2), seed=123)  # restored values must win
    resumed = training.Checkpointer(tmp_path / "ckpt").restore_latest(fresh)
    assert int(resumed.step) == 6
    resumed, resumed_losses = _run(resumed, step, batches[6:])
    if ON_CPU:
        assert resumed_losses == full_losses[6:]  # bit-identical
        chex.assert_trees_all_equal(resumed.params, full_state.params)
    else:
        np.testing.assert_allclose(resumed_losses, full_losses[6:], rtol=1e-5)


def test_no_checkpoint_returns_none(tmp_path):
    assert training.Checkpointer(tmp_path / "empty").restore_latest(toy_state()) is None


@pytest.mark.skipif(jax.device_count() < NUM_DEVICES, reason="needs 8 devices")
def test_checkpoint_moves_between_8_and_1_devices(tmp_path):
    mesh8 = training.make_mesh()
    mesh1 = training.make_mesh(num_devices=1)
    step = training.make_train_step(alpha=1e-3)
    state8 = training.replicate_on_mesh(toy_state(), mesh8)
    state8, _ = training.jit_sharded(step, mesh8, donate=False)(
        state8, training.shard_batch_on_mesh(toy_data(n=64), mesh8)
    )
    ckpt = training.Checkpointer(tmp_path / "a", save_every=1)
    ckpt.save(state8)
    ckpt.close()

    target1 = training.replicate_on_mesh(toy_state(seed=9), mesh1)
    state1 = training.Checkpointer(tmp_path / "a").restore_latest(target1)
    chex.assert_trees_all_equal(jax.device_get(state1.params), jax.device_get(state8.params))
    assert len(state1.params["head"]["kernel"].sharding.device_set) == 1

    # ... and back: 1 -> 8, then one more step on 8 devices.
    ckpt = training.Checkpointer(tmp_path / "b", save_every=1)
    ckpt.save(state1)
    ckpt.close()
    target8 = training.replicate_on_mesh(toy_state(seed=9), mesh8)
    back = training.Checkpointer(tmp_path / "b").restore_latest(target8)
    assert len(back.params["head"]["kernel"].sharding.device_set) == NUM_DEVICES
    chex.assert_trees_all_equal(jax.device_get(back.opt_state), jax.device_get(state8.opt_state))

    # A pmap run restores the same checkpoint after unreplicate/replicate.
    restored = training.Checkpointer(tmp_path / "b").restore_latest(toy_state(seed=9))
    pstate = training.replicate(restored)
    chex.assert_trees_all_equal(
        jax.device_get(training.unreplicate(pstate).params), jax.device_get(state8.params)
    )


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    step = jax.jit(training.make_train_step(alpha=1e-3))
    ckpt = training.Checkpointer(tmp_path / "ckpt", save_every=2, keep=3)
    _run(toy_state(), step, _batches(6), ckpt)
    ckpt.close()
    latest = tmp_path / "ckpt" / "6"
    # Truncate every data file of the latest checkpoint.
    truncated = 0
    for root, _, files in os.walk(latest):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0 and not name.endswith(".json"):
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                truncated += 1
    assert truncated > 0
    with pytest.warns(training.CheckpointCorruptWarning, match="step 6"):
        restored = training.Checkpointer(tmp_path / "ckpt").restore_latest(toy_state(seed=5))
    assert int(restored.step) == 4
    moved = os.listdir(str(tmp_path / "ckpt") + ".corrupt")
    assert len(moved) == 1 and moved[0].startswith("6-")  # kept, not deleted
    assert training.Checkpointer(tmp_path / "ckpt").all_steps() == [2, 4]
