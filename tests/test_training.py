"""The train and eval steps on one device."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pmm_jax
from pmm_jax import training
from tests.toy import ToyNet, toy_data, toy_state


def test_train_step_decreases_loss_and_reports_metrics():
    state = toy_state(ToyNet(dropout_rate=0.1))
    step = jax.jit(training.make_train_step(alpha=1e-3))
    batch = toy_data()
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] * 0.7
    assert set(metrics) == {
        "loss",
        "base_risk",
        "penalty",
        "alpha",
        "accuracy",
        "radius",
        "mean_margin",
        "min_margin",
        "nonfinite_steps",
    }
    for v in metrics.values():
        chex.assert_shape(v, ())
    assert int(state.step) == 30
    assert float(metrics["min_margin"]) <= float(metrics["mean_margin"])
    assert float(metrics["penalty"]) > 0


def test_loss_matches_pmm_loss_by_hand():
    state = toy_state(ToyNet(batch_norm=False))
    batch = toy_data()
    _, metrics = training.make_train_step(alpha=0.01)(state, batch)
    logits, aux = state.apply_fn({"params": state.params}, batch["x"], train=True)
    total, parts = pmm_jax.pmm_loss(
        logits, batch["y"], aux["pre_logits"], state.params["head"]["kernel"], alpha=0.01
    )
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-6)
    np.testing.assert_allclose(metrics["radius"], parts["radius"], rtol=1e-6)


def test_alpha_none_is_plain_cross_entropy():
    state = toy_state(ToyNet(batch_norm=False))
    batch = toy_data()
    new, metrics = training.make_train_step(alpha=None)(state, batch)
    assert float(metrics["penalty"]) == 0.0

    def ce(params):
        logits, _ = state.apply_fn({"params": params}, batch["x"], train=True)
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    grads = jax.grad(ce)(state.params)
    updates, _ = optax.sgd(0.1, momentum=0.9).update(grads, optax.sgd(0.1, 0.9).init(state.params))
    want = optax.apply_updates(state.params, updates)
    chex.assert_trees_all_close(new.params, want, rtol=1e-6)


def test_alpha_schedule_is_evaluated_at_the_step():
    state = toy_state()
    sched = pmm_jax.linear_alpha_schedule(0.0, 1.0, total_steps=10)
    step = jax.jit(training.make_train_step(alpha=sched))
    alphas = []
    for _ in range(3):
        state, metrics = step(state, toy_data())
        alphas.append(float(metrics["alpha"]))
    np.testing.assert_allclose(alphas, [0.0, 0.1, 0.2], atol=1e-7)


def test_batchnorm_statistics_update_and_dropout_varies_per_step():
    state = toy_state(ToyNet(dropout_rate=0.5))
    step = jax.jit(training.make_train_step(alpha=1e-3))
    batch = toy_data()
    s1, m1 = step(state, batch)
    assert not np.allclose(s1.batch_stats["BatchNorm_0"]["mean"], 0.0)
    # Same params, same batch, next step number -> a different dropout mask.
    _, m_a = step(state, batch)
    _, m_b = step(state.replace(step=state.step + 1), batch)
    assert float(m_a["loss"]) == float(m1["loss"])  # deterministic in (rng, step)
    assert float(m_a["base_risk"]) != float(m_b["base_risk"])


def test_nonfinite_step_is_skipped_and_counted():
    state = toy_state()
    step = jax.jit(training.make_train_step(alpha=1e-3))
    good = toy_data()
    bad = dict(good, x=good["x"].copy())
    bad["x"][3, 0] = np.nan
    s1, m1 = step(state, bad)
    chex.assert_trees_all_equal(s1.params, state.params)
    chex.assert_trees_all_equal(s1.batch_stats, state.batch_stats)
    assert float(m1["nonfinite_steps"]) == 1 and int(s1.step) == 1
    s2, m2 = step(s1, good)
    assert float(m2["nonfinite_steps"]) == 1
    assert not np.allclose(s2.params["head"]["kernel"], s1.params["head"]["kernel"])


def test_no_retracing_across_steps():
    state = toy_state()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return training.make_train_step(alpha=pmm_jax.linear_alpha_schedule(total_steps=5))(
            state, batch
        )

    for i in range(4):
        state, _ = step(state, toy_data(seed=i))


def test_eval_step_masks_padding():
    state = toy_state()
    batch = toy_data(n=10)
    padded = {
        "x": np.concatenate([batch["x"], 100 * np.ones((6, 6), np.float32)]),
        "y": np.concatenate([batch["y"], np.zeros(6, np.int32)]),
        "mask": np.arange(16) < 10,
    }
    eval_step = jax.jit(training.make_eval_step())
    out = eval_step(state, padded)
    ref = eval_step(state, dict(batch, mask=np.ones(10, bool)))
    np.testing.assert_allclose(out["margin"][:10], ref["margin"], rtol=1e-6)
    np.testing.assert_allclose(out["loss"][:10], ref["loss"], rtol=1e-6)
    assert not np.any(out["correct"][10:]) and np.all(out["loss"][10:] == 0)
    assert out["pre_logits"].shape == (16, 16)


def test_model_without_contract_gets_a_clear_error_and_the_adapter_works():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            h = nn.relu(nn.Dense(8)(x))
            return nn.Dense(3, name="classifier")(h)

    tx = optax.sgd(0.1)
    bare = training.create_train_state(
        training.with_pre_logits(Plain(), head="classifier"), tx, jnp.zeros((2, 4))
    )
    batch = {"x": np.ones((4, 4), np.float32), "y": np.array([0, 1, 2, 0], np.int32)}
    _, metrics = training.make_train_step(alpha=1e-2, head="classifier")(bare, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["penalty"]) > 0
    logits, aux = bare.apply_fn({"params": bare.params}, batch["x"], train=False)
    np.testing.assert_allclose(
        logits,
        aux["pre_logits"] @ bare.params["classifier"]["kernel"] + bare.params["classifier"]["bias"],
        rtol=1e-5,
    )
    plain = bare.replace(apply_fn=Plain().apply)
    with pytest.raises(TypeError, match="with_pre_logits"):
        training.make_train_step(alpha=1e-2, head="classifier")(plain, batch)
