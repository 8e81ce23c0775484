"""Tests for competitor_classes, feature_radius, pmm_penalty, pairwise_margins."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized  # shipped with chex
from jax.test_util import check_grads

import pmm_jax
from tests import jax_compat, reference


def make_batch(seed=0, batch=16, dim=8, k=10, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(batch, dim)).astype(np.float32)
    kernel = rng.normal(size=(dim, k)).astype(np.float32)
    bias = rng.normal(size=(k,)).astype(np.float32)
    labels = rng.integers(0, k, size=batch).astype(np.int32)
    logits = feats @ kernel + bias
    return (
        jnp.asarray(logits, dtype),
        jnp.asarray(labels),
        jnp.asarray(feats, dtype),
        jnp.asarray(kernel, dtype),
    )


# --- values ------------------------------------------------------------------


class PenaltyValueTest(chex.TestCase, parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((4, 3, 2), (16, 8, 10), (33, 5, 100))
    def test_matches_loop_reference(self, batch, dim, k):
        logits, labels, feats, kernel = make_batch(1, batch, dim, k)
        got = self.variant(pmm_jax.pmm_penalty)(logits, labels, feats, kernel)
        chex.assert_shape(got, (batch,))
        chex.assert_type(got, jnp.float32)
        want = reference.penalty_loop(logits, labels, feats, kernel)
        np.testing.assert_allclose(got, want, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_all_pairs_reference(self):
        logits, labels, feats, kernel = make_batch(2, 12, 6, 7)
        got = self.variant(pmm_jax.pmm_penalty)(logits, labels, feats, kernel)
        want = reference.penalty_all_pairs(logits, labels, feats, kernel)
        np.testing.assert_allclose(got, want, rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_competitors_match_loop(self):
        logits, labels, _, _ = make_batch(3, 64, 4, 9)
        got = self.variant(pmm_jax.competitor_classes)(logits, labels)
        chex.assert_shape(got, (64,))
        np.testing.assert_array_equal(got, reference.competitors_loop(logits, labels))
        assert not np.any(np.asarray(got) == np.asarray(labels))

    @chex.variants(with_jit=True, without_jit=True)
    def test_margins_match_loop(self):
        logits, labels, feats, kernel = make_batch(4, 20, 5, 6)
        r = pmm_jax.feature_radius(feats)
        got = self.variant(pmm_jax.pairwise_margins)(logits, labels, kernel)
        np.testing.assert_allclose(got, reference.margins_loop(logits, labels, kernel), rtol=1e-5)
        got_n = self.variant(lambda *a: pmm_jax.pairwise_margins(*a, radius=r))(
            logits, labels, kernel
        )
        np.testing.assert_allclose(
            got_n, reference.margins_loop(logits, labels, kernel, float(r)), rtol=1e-5
        )


def test_hand_computed_three_classes():
    # d = 2, k = 3: w0 = (1, 0), w1 = (0, 1), w2 = (0, 0); bias 0.
    kernel = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    feats = jnp.array([[3.0, 4.0], [0.0, 1.0], [-1.0, 0.5]])  # norms 5, 1, ~1.118 -> r = 5
    labels = jnp.array([0, 2, 1])
    logits = feats @ kernel  # [[3,4,0], [0,1,0], [-1,.5,0]]
    # example 0: y=0, m=1 -> ||w0-w1||^2 = 2  -> 2 * 25 = 50
    # example 1: y=2, m=1 -> ||w2-w1||^2 = 1  -> 25
    # example 2: y=1, m=2 (0 > -1) -> ||w1-w2||^2 = 1 -> 25
    np.testing.assert_array_equal(pmm_jax.competitor_classes(logits, labels), [1, 1, 2])
    np.testing.assert_allclose(pmm_jax.pmm_penalty(logits, labels, feats, kernel), [50, 25, 25])
    np.testing.assert_allclose(pmm_jax.feature_radius(feats), 5.0)
    # margins: xi = (3-4, 0-1, .5-0) over ||w_y - w_m|| = (sqrt2, 1, 1)
    np.testing.assert_allclose(
        pmm_jax.pairwise_margins(logits, labels, kernel), [-1 / np.sqrt(2), -1.0, 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(
        pmm_jax.pairwise_margins(logits, labels, kernel, radius=5.0),
        [-1 / np.sqrt(2) / 5, -0.2, 0.1],
        rtol=1e-6,
    )


def test_margin_sign_matches_correctness():
    logits, labels, _, kernel = make_batch(5, 64, 6, 5)
    margins = np.asarray(pmm_jax.pairwise_margins(logits, labels, kernel))
    correct = np.asarray(jnp.argmax(logits, -1) == labels)
    np.testing.assert_array_equal(margins > 0, correct)


def test_competitor_with_all_wrong_scores_minus_inf():
    logits = jnp.array([[0.0, -jnp.inf, -jnp.inf], [-jnp.inf, -jnp.inf, -jnp.inf]])
    m = pmm_jax.competitor_classes(logits, jnp.array([0, 2]))
    assert np.all(np.asarray(m) != np.array([0, 2]))


def test_two_classes():
    logits, labels, feats, kernel = make_batch(6, 10, 3, 2)
    np.testing.assert_array_equal(pmm_jax.competitor_classes(logits, labels), 1 - labels)
    np.testing.assert_allclose(
        pmm_jax.pmm_penalty(logits, labels, feats, kernel),
        reference.penalty_loop(logits, labels, feats, kernel),
        rtol=1e-5,
    )


# --- invariances ----------------------------------------------------------------


def test_shift_of_all_scores_keeps_competitors():
    logits, labels, _feats, _kernel = make_batch(7, 32, 4, 12)
    m = pmm_jax.competitor_classes(logits, labels)
    np.testing.assert_array_equal(pmm_jax.competitor_classes(logits + 7.5, labels), m)
    np.testing.assert_array_equal(pmm_jax.competitor_classes(logits * 3.0, labels), m)


def test_feature_scaling_scales_penalty_quadratically():
    _, labels, feats, kernel = make_batch(8, 16, 6, 5)
    c = 3.0
    base = pmm_jax.pmm_penalty(feats @ kernel, labels, feats, kernel)
    scaled = pmm_jax.pmm_penalty((c * feats) @ kernel, labels, c * feats, kernel)
    np.testing.assert_allclose(scaled, c**2 * base, rtol=1e-5)
    # ... while the normalized margins do not move at all.
    r = pmm_jax.feature_radius(feats)
    m1 = pmm_jax.pairwise_margins(feats @ kernel, labels, kernel, radius=r)
    m2 = pmm_jax.pairwise_margins((c * feats) @ kernel, labels, kernel, radius=c * r)
    np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-6)


# --- masking ----------------------------------------------------------------------


class MaskTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_where_equals_slicing(self):
        logits, labels, feats, kernel = make_batch(9, 12, 5, 6)
        # Padding rows with a huge norm and an out-of-range label: must not leak in.
        feats = feats.at[8:].set(1e3)
        labels = labels.at[8:].set(-1)
        where = jnp.arange(12) < 8
        got = self.variant(lambda *a: pmm_jax.pmm_penalty(*a, where=where))(
            logits, labels, feats, kernel
        )
        want = pmm_jax.pmm_penalty(logits[:8], labels[:8], feats[:8], kernel)
        np.testing.assert_allclose(got[:8], want, rtol=1e-6)
        np.testing.assert_array_equal(got[8:], 0.0)
        np.testing.assert_allclose(
            pmm_jax.feature_radius(feats, where=where), pmm_jax.feature_radius(feats[:8])
        )
        margins = pmm_jax.pairwise_margins(logits, labels, kernel, where=where)
        np.testing.assert_allclose(
            margins[:8], pmm_jax.pairwise_margins(logits[:8], labels[:8], kernel), rtol=1e-6
        )
        np.testing.assert_array_equal(margins[8:], 0.0)

    def test_where_gradients_equal_slicing(self):
        logits, labels, feats, kernel = make_batch(10, 12, 5, 6)
        feats = feats.at[8:].set(1e3)
        where = jnp.arange(12) < 8

        def masked(kernel, feats):
            return jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel, where=where))

        def sliced(kernel, feats):
            return jnp.sum(pmm_jax.pmm_penalty(logits[:8], labels[:8], feats[:8], kernel))

        gk, gf = jax.grad(masked, (0, 1))(kernel, feats)
        wk, wf = jax.grad(sliced, (0, 1))(kernel, feats)
        np.testing.assert_allclose(gk, wk, rtol=1e-6)
        np.testing.assert_allclose(gf, wf, rtol=1e-6)  # wf[8:] is 0: unused rows
        np.testing.assert_array_equal(gf[8:], 0.0)

    def test_all_masked_gives_zero(self):
        logits, labels, feats, kernel = make_batch(11, 4, 3, 3)
        where = jnp.zeros(4, bool)
        np.testing.assert_array_equal(
            pmm_jax.pmm_penalty(logits, labels, feats, kernel, where=where), 0.0
        )
        assert float(pmm_jax.feature_radius(feats, where=where)) == 0.0


# --- gradients ----------------------------------------------------------------------


def _sum_penalty(stop):
    def f(logits, labels, feats, kernel):
        return jnp.sum(
            pmm_jax.pmm_penalty(logits, labels, feats, kernel, stop_radius_gradient=stop)
        )

    return f


@pytest.mark.parametrize("stop", [False, True])
def test_check_grads(stop):
    logits, labels, feats, kernel = make_batch(12, 6, 4, 5)
    with jax_compat.enable_x64(True):
        logits, feats, kernel = (jnp.asarray(x, jnp.float64) for x in (logits, feats, kernel))
        if stop:  # the radius is a constant to the gradient but not to finite
            # differences, so only the kernel gradient is checkable numerically.
            f = lambda kernel: _sum_penalty(stop)(logits, labels, feats, kernel)
            args = (kernel,)
        else:
            f = lambda feats, kernel: _sum_penalty(stop)(logits, labels, feats, kernel)
            args = (feats, kernel)
        check_grads(f, args, order=1, modes=["rev"], atol=1e-3, rtol=1e-3)


# The kernel gradient has two assemblies: a fused reduction for k <= 32 and a
# sort + segmented scan beyond; the gradient tests run both.
KS = [9, 40]


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("stop", [False, True])
def test_gradients_match_plain_jax_reference(stop, k):
    logits, labels, feats, kernel = make_batch(13, 24, 6, k)

    def ref(feats, kernel):
        r = reference.penalty_one_hot(logits, labels, feats, kernel)
        if stop:  # recompute with a constant radius
            r_sq = jnp.max(jnp.sum(feats**2, -1))
            r = r / r_sq * jax.lax.stop_gradient(r_sq)
        return jnp.sum(r * jnp.arange(1.0, 25.0))  # non-uniform upstream gradient

    def ours(feats, kernel):
        r = pmm_jax.pmm_penalty(logits, labels, feats, kernel, stop_radius_gradient=stop)
        return jnp.sum(r * jnp.arange(1.0, 25.0))

    gf, gk = jax.grad(ours, (0, 1))(feats, kernel)
    wf, wk = jax.grad(ref, (0, 1))(feats, kernel)
    np.testing.assert_allclose(gk, wk, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gf, wf, rtol=1e-4, atol=1e-4)
    if stop:
        np.testing.assert_array_equal(gf, 0.0)
    else:
        assert np.count_nonzero(np.abs(np.asarray(gf)).sum(-1)) == 1  # only the max-norm row


@pytest.mark.parametrize("k", KS)
def test_analytic_kernel_gradient(k):
    logits, labels, feats, kernel = make_batch(14, 10, 4, k)
    m = np.asarray(pmm_jax.competitor_classes(logits, labels))
    r_sq = float(np.max(np.sum(np.asarray(feats) ** 2, -1)))
    k_np = np.asarray(kernel, np.float64)
    want = np.zeros_like(k_np)
    for i, y in enumerate(np.asarray(labels)):
        diff = k_np[:, y] - k_np[:, m[i]]
        want[:, y] += 2 * r_sq * diff
        want[:, m[i]] -= 2 * r_sq * diff
    got = jax.grad(lambda k: jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, k)))(kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_no_gradient_through_competitor_choice():
    logits, labels, feats, kernel = make_batch(15, 8, 4, 5)
    g = jax.grad(lambda lg: jnp.sum(pmm_jax.pmm_penalty(lg, labels, feats, kernel)))(logits)
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("k", [5, 40])
def test_kernel_gradient_has_no_scatter_add(k):
    logits, labels, feats, kernel = make_batch(16, 8, 4, k)
    jaxpr = jax.make_jaxpr(
        jax.grad(lambda k: jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, k)))
    )(kernel)
    prims = _primitives(jaxpr.jaxpr)
    assert "scatter-add" not in prims and "scatter_add" not in prims, prims
    if k <= 32:  # one reduction over the batch, no scatter at all
        assert "scatter" not in prims and "reduce_sum" in prims, prims
    else:
        assert "sort" in prims and "scatter" in prims  # the unique-index write


@pytest.mark.parametrize("k", [10, 100])
def test_gradients_are_bitwise_reproducible(k):
    logits, labels, feats, kernel = make_batch(17, 256, 32, k)
    f = jax.jit(jax.grad(lambda k, f: jnp.sum(pmm_jax.pmm_penalty(logits, labels, f, k)), (0, 1)))
    a = f(kernel, feats)
    b = f(kernel, feats)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _primitives(jaxpr):
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax_compat.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


# --- numerics -----------------------------------------------------------------------


def test_zero_radius_is_finite():
    logits, labels, feats, kernel = make_batch(18, 6, 4, 3)
    feats = jnp.zeros_like(feats)
    pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    np.testing.assert_array_equal(pen, 0.0)
    gk, gf = jax.grad(_sum_penalty(False), (3, 2))(logits, labels, feats, kernel)
    assert np.all(np.isfinite(gk)) and np.all(np.isfinite(gf))
    g_r = jax.grad(lambda f: pmm_jax.feature_radius(f))(feats)
    assert np.all(np.isfinite(g_r))


def test_equal_columns_are_finite():
    logits, labels, feats, kernel = make_batch(19, 6, 4, 3)
    kernel = jnp.ones_like(kernel)  # w_y == w_m for every pair
    pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    np.testing.assert_array_equal(pen, 0.0)
    gk, gf = jax.grad(_sum_penalty(False), (3, 2))(logits, labels, feats, kernel)
    assert np.all(np.isfinite(gk)) and np.all(np.isfinite(gf))
    margins = pmm_jax.pairwise_margins(logits, labels, kernel)
    np.testing.assert_array_equal(margins, 0.0)
    g_m = jax.grad(lambda k: jnp.sum(pmm_jax.pairwise_margins(logits, labels, k)))(kernel)
    assert np.all(np.isfinite(g_m))


def test_tied_max_norm_rows_share_gradient():
    logits, labels, feats, kernel = make_batch(20, 6, 2, 3)
    feats = feats.at[0].set(jnp.array([3.0, 4.0])).at[1].set(jnp.array([-4.0, 3.0]))
    feats = feats.at[2:].set(0.1)
    gf = jax.grad(_sum_penalty(False), 2)(logits, labels, feats, kernel)
    assert np.all(np.isfinite(gf))
    norms = np.linalg.norm(np.asarray(gf), axis=-1)
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-6)
    assert norms[0] > 0
    np.testing.assert_array_equal(norms[2:], 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    logits, labels, feats, kernel = make_batch(21, 16, 8, 10, dtype=dtype)
    got = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    chex.assert_type(got, jnp.float32)
    up = [x.astype(jnp.float32) for x in (logits, feats, kernel)]
    want = pmm_jax.pmm_penalty(up[0], labels, up[1], up[2])
    np.testing.assert_array_equal(got, want)  # the upcast is exact, so is the result
    chex.assert_type(pmm_jax.feature_radius(feats), jnp.float32)
    chex.assert_type(pmm_jax.pairwise_margins(logits, labels, kernel), jnp.float32)
    gk = jax.grad(lambda k: jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, k)))(kernel)
    chex.assert_type(gk, dtype)
    assert np.all(np.isfinite(np.asarray(gk, np.float32)))
