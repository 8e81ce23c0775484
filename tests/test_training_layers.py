"""The train step's options for PMM at hidden layers and head-reading objectives.

``make_train_step(pmm_layers=...)`` puts ``pmm_jax.layer_pmm_loss`` in the step: a
layer the model marks with ``training.layer_point`` gets ``fn`` = the rest of the
network in inference mode with the batch's BatchNorm statistics held constant. Checked
against the same penalty written out by hand; ``("head",)`` is today's step bit for bit.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pmm_jax
from pmm_jax import training


class Net(nn.Module):
    """Dense -> ReLU -> point "mid" -> BatchNorm -> Dense -> ReLU -> head."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.relu(nn.Dense(8, name="d1")(x))
        h = training.layer_point(self, "mid", h)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        f = nn.relu(nn.Dense(6, name="d2")(h))
        return nn.Dense(4, name="head")(f), {"pre_logits": f}


def _setup(seed=0):
    state = training.create_train_state(Net(), optax.sgd(0.1), jnp.zeros((2, 5)), seed=0)
    rng = np.random.default_rng(seed)
    batch = {
        "x": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 4, 16)),
    }
    return state, batch


def test_head_alone_is_todays_step_bit_for_bit():
    state, batch = _setup()
    default = jax.jit(training.make_train_step(alpha=1e-2))(state, batch)
    head = jax.jit(training.make_train_step(alpha=1e-2, pmm_layers=("head",)))(state, batch)
    jax.tree.map(np.testing.assert_array_equal, default, head)


def _manual_penalty(state, batch, weights):
    """``layer_pmm_loss`` with ``fn`` written out: BatchNorm with this batch's statistics."""
    p = state.params
    h = nn.relu(batch["x"] @ p["d1"]["kernel"] + p["d1"]["bias"])
    mean, var = h.mean(0), h.var(0)  # flax BatchNorm: the biased variance

    def tail(hh, *, constant):
        m, v = (mean, var) if constant else (hh.mean(0), hh.var(0))
        z = (hh - m) / jnp.sqrt(v + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
        f = nn.relu(z @ p["d2"]["kernel"] + p["d2"]["bias"])
        return f @ p["head"]["kernel"] + p["head"]["bias"], f

    logits, f = tail(h, constant=False)
    layers = [(lambda hh: tail(hh, constant=True)[0], h, weights[0])]
    layers.append((lambda ff: ff @ p["head"]["kernel"] + p["head"]["bias"], f, weights[1]))
    return pmm_jax.layer_pmm_loss(logits, batch["y"], layers, alpha=1e-2)


def test_a_hidden_layer_holds_the_batch_statistics_constant():
    state, batch = _setup()
    step = jax.jit(training.make_train_step(alpha=1e-2, pmm_layers=(("mid", 2.0), "head")))
    _, metrics = step(state, batch)
    total, parts = _manual_penalty(state, batch, (2.0, 1.0))
    np.testing.assert_allclose(metrics["penalty"], parts["penalty"], rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-5)
    alone = jax.jit(training.make_train_step(alpha=1e-2, pmm_layers=("mid",)))(state, batch)[1]
    assert 0 < float(alone["penalty"]) < float(metrics["penalty"])


def test_gradients_flow_through_a_hidden_layer_penalty():
    state, batch = _setup()
    plain = jax.jit(training.make_train_step(alpha=1e-2))(state, batch)[0]
    hidden = jax.jit(training.make_train_step(alpha=1e-2, pmm_layers=("mid",)))(state, batch)[0]
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), plain.params, hidden.params)
    assert moved["d1"]["kernel"] > 0  # the layer below the point feels the penalty


def test_unknown_layers_and_bad_weights_are_named():
    state, batch = _setup()
    with pytest.raises(
        ValueError, match=r"'nope', which the model does not mark: it marks \['mid'\]"
    ):
        training.make_train_step(alpha=1e-2, pmm_layers=("nope",))(state, batch)
    with pytest.raises(ValueError, match="pmm_layers"):
        training.make_train_step(alpha=1e-2, pmm_layers=(("mid", -1.0),))
    with pytest.raises(ValueError, match="names no layer"):
        training.make_train_step(alpha=1e-2, pmm_layers=())


def test_a_head_reading_loss_and_its_scores():
    from experiments import objectives

    state, batch = _setup()
    loss = objectives.get_objective("am_softmax", scale=10.0, margin=0.2)
    scores = objectives.prediction_scores("am_softmax", scale=10.0, margin=0.2)
    step = training.make_train_step(alpha=None, base_loss=loss, base_loss_uses_head=True)
    _, metrics = jax.jit(step)(state, batch)
    logits, aux = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["x"],
        train=True,
        mutable=["batch_stats"],
    )[0]
    want = loss(
        logits, batch["y"], features=aux["pre_logits"], kernel=state.params["head"]["kernel"]
    ).mean()
    np.testing.assert_allclose(metrics["base_risk"], want, rtol=1e-5)
    eval_step = training.make_eval_step(base_loss=loss, base_loss_uses_head=True, scores=scores)
    out = jax.jit(eval_step)(state, batch)
    logits, aux = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["x"], train=False
    )
    cos = scores(logits, features=aux["pre_logits"], kernel=state.params["head"]["kernel"])
    np.testing.assert_array_equal(out["pred"], jnp.argmax(cos, -1))
