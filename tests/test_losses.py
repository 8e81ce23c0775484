"""Tests for the composed loss pmm_loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import pmm_jax
from tests import reference
from tests.test_penalty import make_batch


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return lse - logits[np.arange(len(labels)), np.asarray(labels)]


class PmmLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_default_reduction_is_the_papers_mean(self):
        logits, labels, feats, kernel = make_batch(0, 16, 6, 10)
        total, parts = self.variant(lambda *a: pmm_jax.pmm_loss(*a, alpha=1e-3))(
            logits, labels, feats, kernel
        )
        pen = reference.penalty_loop(logits, labels, feats, kernel)
        ce = _ce(logits, labels)
        np.testing.assert_allclose(parts["base_risk"], ce.mean(), rtol=1e-5)
        np.testing.assert_allclose(parts["penalty"], pen.mean(), rtol=1e-5)
        np.testing.assert_allclose(total, ce.mean() + 1e-3 * pen.mean(), rtol=1e-5)
        np.testing.assert_allclose(parts["radius"], np.linalg.norm(feats, axis=-1).max(), rtol=1e-6)
        r = float(parts["radius"])
        np.testing.assert_allclose(
            parts["mean_margin"],
            reference.margins_loop(logits, labels, kernel, r).mean(),
            rtol=1e-5,
        )
        assert float(parts["num_examples"]) == 16
        for v in jax.tree.leaves(parts):
            chex.assert_shape(v, ())
            chex.assert_type(v, jnp.float32)

    def test_sum_reduction_is_batch_size_times_mean(self):
        logits, labels, feats, kernel = make_batch(1, 16, 6, 10)
        total, parts = pmm_jax.pmm_loss(
            logits, labels, feats, kernel, alpha=0.5, penalty_reduction="sum"
        )
        pen = reference.penalty_loop(logits, labels, feats, kernel)
        np.testing.assert_allclose(parts["penalty"], pen.sum(), rtol=1e-5)
        np.testing.assert_allclose(total, _ce(logits, labels).mean() + 0.5 * pen.sum(), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_official_reduction_squares_the_mean_norm(self):
        logits, labels, feats, kernel = make_batch(7, 16, 6, 10)
        where = jnp.arange(16) < 13
        total, parts = self.variant(
            lambda *a: pmm_jax.pmm_loss(*a, alpha=0.5, penalty_reduction="official", where=where)
        )(logits, labels, feats, kernel)
        m = reference.competitors_loop(logits, labels)
        kern, lab = np.asarray(kernel, np.float64), np.asarray(labels)
        norms = [np.linalg.norm(kern[:, lab[i]] - kern[:, m[i]]) for i in range(13)]
        r = np.linalg.norm(np.asarray(feats, np.float64)[:13], axis=-1).max()
        want = (r * np.mean(norms)) ** 2
        np.testing.assert_allclose(parts["penalty"], want, rtol=1e-5)
        ce = _ce(logits, labels)[:13].mean()
        np.testing.assert_allclose(total, ce + 0.5 * want, rtol=1e-5)
        # (mean s)^2 <= mean s^2: never stronger than the paper's per-example mean.
        mean_pen = reference.penalty_loop(logits, labels, feats, kernel, where)[:13].mean()
        assert want < mean_pen

    @parameterized.parameters("mean", "official", "sum")
    def test_reductions_are_finite_where_classes_coincide(self, reduction):
        """``w_y = w_m`` for some rows (s_i = 0), then for all: finite values and gradients."""
        logits, labels, feats, kernel = make_batch(8, 8, 4, 5)
        some = kernel.at[:, 1].set(kernel[:, 0])  # classes 0 and 1 coincide
        same = jnp.zeros_like(kernel)  # every column equal: every s_i = 0

        def f(kernel, feats):
            logits = feats @ kernel
            return pmm_jax.pmm_loss(
                logits, labels, feats, kernel, alpha=1.0, penalty_reduction=reduction
            )[0]

        for kern in (some, same):
            value, grads = jax.value_and_grad(f, (0, 1))(kern, feats)
            assert np.isfinite(float(value))
            for g in grads:
                assert np.all(np.isfinite(np.asarray(g))), reduction

        # All s_i = 0: the penalty is 0 and so is its kernel gradient (the logits are
        # held fixed here, so the base risk does not depend on the kernel).
        def penalty_only(kernel):
            return pmm_jax.pmm_loss(
                logits, labels, feats, kernel, alpha=1.0, penalty_reduction=reduction
            )[1]["penalty"]

        value, g_pen = jax.value_and_grad(penalty_only)(same)
        assert float(value) == 0.0
        np.testing.assert_array_equal(g_pen, np.zeros_like(g_pen))

    def test_hinge_base_loss(self):
        logits, labels, feats, kernel = make_batch(2, 16, 6, 10)
        _, parts = pmm_jax.pmm_loss(
            logits, labels, feats, kernel, alpha=0.0, base_loss=optax.losses.multiclass_hinge_loss
        )
        m = reference.competitors_loop(logits, labels)
        lg = np.asarray(logits, np.float64)
        idx = np.arange(16)
        xi = lg[idx, np.asarray(labels)] - lg[idx, m]
        np.testing.assert_allclose(parts["base_risk"], np.maximum(0, 1 - xi).mean(), rtol=1e-5)

    def test_alpha_schedule_needs_step(self):
        logits, labels, feats, kernel = make_batch(3, 8, 4, 5)
        sched = pmm_jax.linear_alpha_schedule(0.0, 1.0, total_steps=10)
        with pytest.raises(ValueError, match="`step` is required"):
            pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=sched)
        _, parts = jax.jit(
            lambda s: pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=sched, step=s)
        )(jnp.asarray(5))
        np.testing.assert_allclose(parts["alpha"], 0.5)

    def test_zero_alpha_gradient_is_plain_ce(self):
        _logits, labels, feats, kernel = make_batch(4, 8, 4, 5)

        def ours(kernel):
            return pmm_jax.pmm_loss(feats @ kernel, labels, feats, kernel, alpha=0.0)[0]

        def plain(kernel):
            return optax.losses.softmax_cross_entropy_with_integer_labels(
                feats @ kernel, labels
            ).mean()

        np.testing.assert_allclose(jax.grad(ours)(kernel), jax.grad(plain)(kernel), rtol=1e-6)

    def test_where_excludes_padding(self):
        logits, labels, feats, kernel = make_batch(5, 12, 4, 5)
        where = jnp.arange(12) < 9
        padded = pmm_jax.pmm_loss(
            logits, labels, feats.at[9:].set(1e4), kernel, alpha=1e-2, where=where
        )
        sliced = pmm_jax.pmm_loss(logits[:9], labels[:9], feats[:9], kernel, alpha=1e-2)
        chex.assert_trees_all_close(padded, sliced, rtol=1e-6)

    def test_bad_options(self):
        logits, labels, feats, kernel = make_batch(6, 4, 3, 3)
        with pytest.raises(ValueError, match="penalty_reduction"):
            pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1.0, penalty_reduction="max")
        with pytest.raises(TypeError, match="base_loss"):
            pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1.0, base_loss="ce")
        with pytest.raises(ValueError, match="base_loss"):
            pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1.0, base_loss=lambda lg, lb: lg)
        with pytest.raises(ValueError, match="alpha"):
            pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=jnp.ones(2))
