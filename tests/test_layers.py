"""Tests for layer_pmm_penalty and layer_pmm_loss (PMM at hidden layers).

Held against: pmm_penalty / pmm_loss for a Dense head; a closed form for two linear
layers (numpy); central finite differences in float64 for a ReLU MLP; check_grads;
masking by slicing; one device against pmap, shard_map and sharded jit on 8 fake CPU
devices; the jaxpr (no [B, B] and no per-example Jacobian).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import pmm_jax
from tests import jax_compat
from tests.conftest import NUM_DEVICES

REDUCTIONS = ["mean", "official", "sum"]
BASES = {
    "ce": optax.losses.softmax_cross_entropy_with_integer_labels,
    "hinge": optax.losses.multiclass_hinge_loss,
}


def dense(params, h):
    return h @ params["w"] + params["b"]


def mlp(params, h, act=jax.nn.relu):
    """``act(h @ a + c) @ w + b``: per-example."""
    return act(h @ params["a"] + params["c"]) @ params["w"] + params["b"]


def make_params(seed, d, k, hidden=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(hidden or d, k)), "b": rng.normal(size=(k,))}
    if hidden is not None:
        params["a"] = rng.normal(size=(d, hidden)) / np.sqrt(d)
        params["c"] = rng.normal(size=(hidden,)) * 0.1
    return {name: jnp.asarray(x, dtype) for name, x in params.items()}


def make_features(seed, batch, d, k, max_row=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(batch, d))
    if max_row is not None:
        feats[max_row] *= 6.0  # the max-norm row
    return jnp.asarray(feats, dtype), jnp.asarray(rng.integers(0, k, batch), jnp.int32)


WEIGHTS = lambda b: jnp.arange(1.0, 1.0 + b)  # a non-uniform upstream gradient


# --- a Dense head: exactly pmm_penalty ---------------------------------------------------


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_dense_head_equals_pmm_penalty(stop, masked):
    params = make_params(0, 6, 5)
    feats, labels = make_features(1, 9, 6, 5, max_row=4)
    where = (jnp.arange(9) % 3 != 1) if masked else None
    kw = dict(where=where, stop_radius_gradient=stop)

    def ours(params, feats):
        pen = pmm_jax.layer_pmm_penalty(lambda h: dense(params, h), feats, labels, **kw)
        return jnp.sum(pen * WEIGHTS(9)), pen

    def theirs(params, feats):
        logits = dense(params, feats)
        pen = pmm_jax.pmm_penalty(logits, labels, feats, params["w"], **kw)
        return jnp.sum(pen * WEIGHTS(9)), pen

    (_, got), g_got = jax.value_and_grad(ours, (0, 1), has_aux=True)(params, feats)
    (_, want), g_want = jax.value_and_grad(theirs, (0, 1), has_aux=True)(params, feats)
    assert got.shape == (9,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for name in ("w", "b"):
        np.testing.assert_allclose(g_got[0][name], g_want[0][name], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(g_got[0]["b"], 0.0)  # the bias is not penalized
    np.testing.assert_allclose(g_got[1], g_want[1], rtol=1e-6, atol=1e-6)


def test_given_logits_pick_the_competitor():
    params = make_params(2, 4, 6)
    feats, labels = make_features(3, 8, 4, 6)
    logits = dense(params, feats)
    fn = lambda h: dense(params, h)
    np.testing.assert_array_equal(
        pmm_jax.layer_pmm_penalty(fn, feats, labels, logits=logits),
        pmm_jax.layer_pmm_penalty(fn, feats, labels),
    )
    # Other logits, another competitor (here: the class after the label).
    shifted = jax.nn.one_hot((labels + 1) % 6, 6) * 100.0
    want = pmm_jax.pmm_penalty(shifted, labels, feats, params["w"])
    got = pmm_jax.layer_pmm_penalty(fn, feats, labels, logits=shifted)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --- deeper fn: closed form, finite differences, check_grads -------------------------------


def test_two_linear_layers_closed_form():
    rng = np.random.default_rng(4)
    b, d, hidden, k = 10, 7, 5, 6
    h = rng.normal(size=(b, d)).astype(np.float32)
    a = rng.normal(size=(d, hidden)).astype(np.float32)
    w = rng.normal(size=(hidden, k)).astype(np.float32)
    bias = rng.normal(size=(k,)).astype(np.float32)
    y = rng.integers(0, k, b)
    got = pmm_jax.layer_pmm_penalty(lambda x: (x @ a) @ w + bias, h, jnp.asarray(y))

    # numpy, float64: R_i = r^2 ||A (w_y - w_m)||^2, m_i the best wrong class.
    h64, a64, w64 = h.astype(np.float64), a.astype(np.float64), w.astype(np.float64)
    s = h64 @ a64 @ w64 + bias
    want = np.empty(b)
    r_sq = max(float(np.dot(row, row)) for row in h64)
    for i in range(b):
        wrong = [j for j in range(k) if j != y[i]]
        m = wrong[int(np.argmax(s[i, wrong]))]
        v = a64 @ (w64[:, y[i]] - w64[:, m])
        want[i] = r_sq * float(v @ v)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _np_mlp(p, h):
    return np.maximum(h @ p["a"] + p["c"], 0.0) @ p["w"] + p["b"]


def test_relu_mlp_against_central_differences_float64():
    b, d, hidden, k = 6, 5, 8, 4
    with jax_compat.enable_x64(True):
        params = make_params(5, d, k, hidden, dtype=np.float64)
        feats, labels = make_features(6, b, d, k, dtype=np.float64)
        got = pmm_jax.layer_pmm_penalty(lambda h: mlp(params, h), feats, labels)
        assert got.dtype == jnp.float64  # float64 inputs under x64 stay float64
        got = np.asarray(got)
    p = {n: np.asarray(x) for n, x in params.items()}
    h, y = np.asarray(feats), np.asarray(labels)
    s = _np_mlp(p, h)
    r_sq = np.max(np.sum(h**2, axis=1))
    eps = 1e-6
    for i in range(b):
        m = max((j for j in range(k) if j != y[i]), key=lambda j: s[i, j])
        xi = lambda row, m=m, i=i: _np_mlp(p, row[None])[0, y[i]] - _np_mlp(p, row[None])[0, m]
        grad = np.array([(xi(h[i] + eps * e) - xi(h[i] - eps * e)) / (2 * eps) for e in np.eye(d)])
        np.testing.assert_allclose(got[i] / r_sq, grad @ grad, rtol=1e-6)


@pytest.mark.parametrize("stop", [False, True])
def test_check_grads_through_the_penalty(stop):
    """Second order: the VJP is differentiated w.r.t. the params and the features."""
    b, d, hidden, k = 5, 4, 6, 3
    with jax_compat.enable_x64(True):
        params = make_params(7, d, k, hidden, dtype=np.float64)
        feats, labels = make_features(8, b, d, k, max_row=2, dtype=np.float64)

        def f(params, feats):
            fn = lambda h: mlp(params, h, act=jnp.tanh)
            pen = pmm_jax.layer_pmm_penalty(fn, feats, labels, stop_radius_gradient=stop)
            return jnp.sum(pen * WEIGHTS(b))

        if stop:  # r is a constant to the gradient, not to finite differences
            check_grads(lambda p: f(p, feats), (params,), order=1, modes=["rev"], rtol=1e-4)
        else:
            check_grads(f, (params, feats), order=1, modes=["rev"], rtol=1e-4)
        # The max-norm row gets the radius' gradient on top of its own.
        g_stop = jax.grad(
            lambda x: jnp.sum(
                pmm_jax.layer_pmm_penalty(
                    lambda h: mlp(params, h, act=jnp.tanh), x, labels, stop_radius_gradient=True
                )
            )
        )(feats)
        assert np.all(np.abs(np.asarray(g_stop)).sum(-1) > 0)  # every row: through the VJP


def test_no_gradient_through_the_competitor_choice():
    params = make_params(9, 4, 5, 6)
    feats, labels = make_features(10, 8, 4, 5)
    logits = mlp(params, feats)

    def f(logits):
        fn = lambda h: mlp(params, h)
        return jnp.sum(pmm_jax.layer_pmm_penalty(fn, feats, labels, logits=logits))

    np.testing.assert_array_equal(jax.grad(f)(logits), 0.0)


# --- masking, one example, conv-shaped features ---------------------------------------------


def test_where_equals_dropping_the_rows():
    params = make_params(11, 5, 4, 7)
    feats, labels = make_features(12, 10, 5, 4, max_row=3)  # the max row is masked out
    keep = np.arange(10) % 4 != 3
    where = jnp.asarray(keep)

    def masked(params, feats):
        pen = pmm_jax.layer_pmm_penalty(lambda h: mlp(params, h), feats, labels, where=where)
        return jnp.sum(pen * WEIGHTS(10)), pen

    def dropped(params, feats):
        fn = lambda h: mlp(params, h)
        pen = pmm_jax.layer_pmm_penalty(fn, feats[keep], labels[keep])
        return jnp.sum(pen * WEIGHTS(10)[keep]), pen

    (_, got), (gp, gf) = jax.value_and_grad(masked, (0, 1), has_aux=True)(params, feats)
    (_, want), (wp, wf) = jax.value_and_grad(dropped, (0, 1), has_aux=True)(params, feats)
    np.testing.assert_array_equal(np.asarray(got)[~keep], 0.0)
    np.testing.assert_allclose(np.asarray(got)[keep], want, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(gp[name], wp[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gf, wf, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gf)[~keep], 0.0)
    # All rows masked: zeros, finite gradients.
    none = jnp.zeros(10, bool)
    pen = pmm_jax.layer_pmm_penalty(lambda h: mlp(params, h), feats, labels, where=none)
    np.testing.assert_array_equal(pen, 0.0)


def test_one_example():
    params = make_params(13, 3, 4)
    feats, labels = make_features(14, 1, 3, 4)
    got = pmm_jax.layer_pmm_penalty(lambda h: dense(params, h), feats, labels)
    want = pmm_jax.pmm_penalty(dense(params, feats), labels, feats, params["w"])
    assert got.shape == (1,)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_rank4_features_like_a_conv_layer():
    b, hgt, wid, c, k = 4, 3, 5, 2, 6
    rng = np.random.default_rng(15)
    feats = jnp.asarray(rng.normal(size=(b, hgt, wid, c)), jnp.float32)
    conv = jnp.asarray(rng.normal(size=(c, 7)), jnp.float32)  # a 1x1 convolution
    head = jnp.asarray(rng.normal(size=(7, k)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, k, b), jnp.int32)

    def fn(h):  # [B, H, W, C] -> [B, k]: 1x1 conv, tanh, mean pool, dense
        return jnp.mean(jnp.tanh(jnp.einsum("bhwc,cd->bhwd", h, conv)), axis=(1, 2)) @ head

    got = pmm_jax.layer_pmm_penalty(fn, feats, labels)
    flat = feats.reshape(b, -1)
    want = pmm_jax.layer_pmm_penalty(lambda x: fn(x.reshape(b, hgt, wid, c)), flat, labels)
    assert got.shape == (b,)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # r is over all non-batch axes: a linear fn = the Dense head on flattened features.
    lin = jnp.asarray(rng.normal(size=(hgt * wid * c, k)), jnp.float32)
    got = pmm_jax.layer_pmm_penalty(lambda h: h.reshape(b, -1) @ lin, feats, labels)
    want = pmm_jax.pmm_penalty(flat @ lin, labels, flat, lin)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_batchnorm_with_the_main_pass_statistics_held_constant():
    """The docstring's BatchNorm recipe: stop_gradient statistics keep fn per-example."""
    params = make_params(16, 5, 4, 6)
    feats, labels = make_features(17, 12, 5, 4)
    mean = jax.lax.stop_gradient(jnp.mean(feats, axis=0))  # from the main pass
    var = jax.lax.stop_gradient(jnp.var(feats, axis=0))

    def fn(h):
        return mlp(params, (h - mean) * jax.lax.rsqrt(var + 1e-5))

    got = pmm_jax.layer_pmm_penalty(fn, feats, labels)
    # Per row, a plain gradient (the reference may loop; the library must not).
    logits = fn(feats)
    comp = pmm_jax.competitor_classes(logits, labels)
    r_sq = jnp.max(jnp.sum(feats**2, axis=1))
    for i in range(12):
        xi = lambda row, i=i: fn(row[None])[0, labels[i]] - fn(row[None])[0, comp[i]]
        g = jax.grad(xi)(feats[i])
        np.testing.assert_allclose(got[i], r_sq * jnp.sum(g**2), rtol=1e-5)


# --- layer_pmm_loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_layer_loss_with_a_dense_head_equals_pmm_loss(reduction, masked, base):
    params = make_params(18, 6, 5)
    feats, labels = make_features(19, 11, 6, 5, max_row=7)
    where = (jnp.arange(11) % 4 != 2) if masked else None
    kw = dict(alpha=0.3, penalty_reduction=reduction, where=where, base_loss=BASES[base])

    def ours(params, feats):
        logits = dense(params, feats)
        layers = [(lambda h: dense(params, h), feats)]
        return pmm_jax.layer_pmm_loss(logits, labels, layers, **kw)

    def theirs(params, feats):
        return pmm_jax.pmm_loss(dense(params, feats), labels, feats, params["w"], **kw)

    (got, parts), g_got = jax.value_and_grad(ours, (0, 1), has_aux=True)(params, feats)
    (want, w_parts), g_want = jax.value_and_grad(theirs, (0, 1), has_aux=True)(params, feats)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for name in ("base_risk", "penalty", "alpha", "num_examples"):
        np.testing.assert_allclose(parts[name], w_parts[name], rtol=1e-6)
    np.testing.assert_allclose(parts["layer_penalties"], [w_parts["penalty"]], rtol=1e-6)
    np.testing.assert_allclose(parts["layer_radii"], [w_parts["radius"]], rtol=1e-6)
    np.testing.assert_allclose(
        parts["layer_mean_margins"], [w_parts["mean_margin"]], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        parts["layer_min_margins"], [w_parts["min_margin"]], rtol=1e-5, atol=1e-7
    )
    for name in ("w", "b"):
        np.testing.assert_allclose(g_got[0][name], g_want[0][name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_got[1], g_want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_layer_loss_is_the_weighted_sum_of_the_layers(reduction):
    params = make_params(20, 5, 4, 6)
    feats, labels = make_features(21, 9, 5, 4, max_row=1)
    hidden = jax.nn.relu(feats @ params["a"] + params["c"])
    logits = hidden @ params["w"] + params["b"]
    head = lambda h: h @ params["w"] + params["b"]
    tail = lambda h: mlp(params, h)
    kw = dict(alpha=0.5, penalty_reduction=reduction)
    total, parts = pmm_jax.layer_pmm_loss(
        logits, labels, [(head, hidden, 2.0), (tail, feats, 0.25)], **kw
    )
    singles = [
        pmm_jax.layer_pmm_loss(logits, labels, [(fn, h)], **kw)[1]["penalty"]
        for fn, h in ((head, hidden), (tail, feats))
    ]
    np.testing.assert_allclose(parts["layer_penalties"], singles, rtol=1e-6)
    np.testing.assert_allclose(parts["penalty"], 2.0 * singles[0] + 0.25 * singles[1], rtol=1e-6)
    np.testing.assert_allclose(total, parts["base_risk"] + 0.5 * parts["penalty"], rtol=1e-6)
    if reduction == "mean":  # "mean" is the mean of the per-example penalties
        pens = pmm_jax.layer_pmm_penalty(tail, feats, labels, logits=logits)
        np.testing.assert_allclose(singles[1], jnp.mean(pens), rtol=1e-6)


def test_layer_loss_takes_an_alpha_schedule_and_traced_weights():
    params = make_params(22, 4, 3)
    feats, labels = make_features(23, 6, 4, 3)
    logits = dense(params, feats)
    sched = pmm_jax.linear_alpha_schedule(0.0, 1.0, total_steps=10)

    @jax.jit
    def f(weight, step):
        layers = [(lambda h: dense(params, h), feats, weight)]
        return pmm_jax.layer_pmm_loss(logits, labels, layers, alpha=sched, step=step)[1]

    parts = f(jnp.float32(3.0), 5)
    np.testing.assert_allclose(parts["alpha"], 0.5)
    np.testing.assert_allclose(parts["penalty"], 3.0 * parts["layer_penalties"][0], rtol=1e-6)


# --- many devices: pmap, shard_map, sharded jit ------------------------------------------------

GB = 8 * NUM_DEVICES  # global batch; the max-norm example on device 5 only
MAX_ROW = 5 * 8 + 3


def global_problem(seed=30):
    params = make_params(seed, 6, 5, 7)
    feats, labels = make_features(seed + 1, GB, 6, 5, max_row=MAX_ROW)
    return params, feats, labels


def uneven_where():
    return (jnp.arange(GB) % 8 < (jnp.arange(GB) // 8) % 8 + 1).at[MAX_ROW].set(True)


def shard(x):
    return x.reshape(NUM_DEVICES, -1, *x.shape[1:])


def _penalty_objective(params, feats, labels, where, axis_name, offset=0):
    pen = pmm_jax.layer_pmm_penalty(
        lambda h: mlp(params, h), feats, labels, where=where, axis_name=axis_name
    )
    weights = offset + jnp.arange(1.0, 1.0 + labels.shape[0])
    return jnp.sum(pen * weights), pen


def test_pmap_penalty_equals_one_device():
    params, feats, labels = global_problem()
    where = uneven_where()
    grad = jax.value_and_grad(_penalty_objective, (0, 1), has_aux=True)
    (_, want), (wp, wf) = grad(params, feats, labels, where, None)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, 0, 0, 0, 0))
    def per_device(params, feats, labels, where, offset):
        (_, pen), (gp, gf) = grad(params, feats, labels, where, "batch", offset)
        return pen, jax.lax.psum(gp, "batch"), gf

    offsets = jnp.arange(NUM_DEVICES, dtype=jnp.float32) * 8
    pen, gp, gf = per_device(params, shard(feats), shard(labels), shard(where), offsets)
    np.testing.assert_allclose(pen.reshape(-1), want, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(gp[name][0], wp[name], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gf.reshape(GB, -1), wf, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_penalty_equals_one_device(check_vma):
    params, feats, labels = global_problem(31)
    where = uneven_where()
    grad = jax.value_and_grad(_penalty_objective, (0, 1), has_aux=True)
    (_, want), (wp, wf) = grad(params, feats, labels, where, None)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(AxisType.Explicit,))

    def local(params, feats, labels, where):
        offset = jax.lax.axis_index("data") * labels.shape[0]
        (_, pen), (gp, gf) = grad(params, feats, labels, where, "data", offset)
        # With check_vma the replicated params' gradient already is the sum over devices.
        return pen, (gp if check_vma else jax.lax.psum(gp, "data")), gf

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=(P("data"), P(), P("data")),
            check_vma=check_vma,
        )
    )
    put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
    pen, gp, gf = fn(put(params), put(feats, "data"), put(labels, "data"), put(where, "data"))
    np.testing.assert_allclose(pen, want, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(gp[name], wp[name], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gf, wf, rtol=1e-5, atol=1e-4)


def _two_layer_loss(params, feats, labels, where, reduction, axis_name=None):
    hidden = jax.nn.relu(feats @ params["a"] + params["c"])
    logits = hidden @ params["w"] + params["b"]
    layers = [
        (lambda h: h @ params["w"] + params["b"], hidden),
        (lambda h: mlp(params, h), feats, 0.5),
    ]
    return pmm_jax.layer_pmm_loss(
        logits,
        labels,
        layers,
        alpha=0.1,
        penalty_reduction=reduction,
        where=where,
        axis_name=axis_name,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pmap_loss_share_pmean_equals_one_device(reduction):
    params, feats, labels = global_problem(32)
    where = uneven_where()
    grad = jax.value_and_grad(_two_layer_loss, (0, 1), has_aux=True)
    (want, w_parts), (wp, wf) = grad(params, feats, labels, where, reduction)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, 0, 0, 0))
    def per_device(params, feats, labels, where):
        (loss, parts), (gp, gf) = grad(params, feats, labels, where, reduction, "batch")
        return jax.lax.pmean((loss, parts), "batch"), jax.lax.pmean(gp, "batch"), gf

    (loss, parts), gp, gf = per_device(params, shard(feats), shard(labels), shard(where))
    np.testing.assert_allclose(loss[0], want, rtol=1e-5)
    for name in w_parts:
        np.testing.assert_allclose(parts[name][0], w_parts[name], rtol=1e-5, atol=1e-7)
    for name in params:
        np.testing.assert_allclose(gp[name][0], wp[name], rtol=1e-4, atol=1e-6)
    # Per-example feature gradients: the pmean'd loss's gradient is 1/N of each share's.
    np.testing.assert_allclose(gf.reshape(GB, -1) / NUM_DEVICES, wf, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shard_map_loss_share_equals_one_device(reduction):
    params, feats, labels = global_problem(33)
    where = uneven_where()
    grad = jax.value_and_grad(lambda *a: _two_layer_loss(*a)[0], (0, 1))
    want, (wp, wf) = grad(params, feats, labels, where, reduction)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(AxisType.Explicit,))

    def local(params, feats, labels, where):
        loss, (gp, gf) = grad(params, feats, labels, where, reduction, "data")
        gp = jax.tree.map(lambda g: g / NUM_DEVICES, gp)  # check_vma: summed already
        return jax.lax.pmean(loss, "data"), gp, gf / NUM_DEVICES

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P(), P("data")),
        )
    )
    put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
    loss, gp, gf = fn(put(params), put(feats, "data"), put(labels, "data"), put(where, "data"))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(gp[name], wp[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gf, wf, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sharded_jit_equals_one_device(reduction, axis_type):
    params, feats, labels = global_problem(34)
    where = uneven_where()
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(axis_type,))
    put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
    grad = jax.value_and_grad(_two_layer_loss, (0, 1), has_aux=True)
    (want, w_parts), (wp, wf) = grad(params, feats, labels, where, reduction)
    args = (put(params), put(feats, "data"), put(labels, "data"), put(where, "data"))
    (got, parts), (gp, gf) = jax.jit(grad, static_argnums=4)(*args, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for name in w_parts:
        np.testing.assert_allclose(parts[name], w_parts[name], rtol=1e-6, atol=1e-7)
    for name in params:
        np.testing.assert_allclose(gp[name], wp[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gf, wf, rtol=1e-5, atol=1e-6)
    pen = jax.jit(lambda p, f, y, w: _penalty_objective(p, f, y, w, None)[1])(*args)
    want_pen = _penalty_objective(params, feats, labels, where, None)[1]
    np.testing.assert_allclose(pen, want_pen, rtol=1e-6)


# --- cost: one VJP, no per-example Jacobian ------------------------------------------------

CB, CK, CD, CH = 7, 5, 11, 13  # batch, classes, features, hidden: distinct primes


def _shapes(jaxpr, out):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            out.append((eqn.primitive.name, tuple(getattr(v.aval, "shape", ()))))
        for sub in jax_compat.jaxprs_in_params(eqn.params):
            _shapes(sub, out)
    return out


def _assert_no_batch_product(fn, *args):
    records = _shapes(jax.make_jaxpr(fn)(*args).jaxpr, [])
    assert any(CB in shape for _, shape in records)  # the walk saw the batch
    two_batch = [r for r in records if r[1].count(CB) >= 2]
    assert not two_batch, f"intermediates with two batch axes: {two_batch}"
    jacobian = [r for r in records if {CB, CK} <= set(r[1]) and ({CD, CH} & set(r[1]))]
    assert not jacobian, f"a per-example Jacobian [B, k, d] was built: {jacobian}"


def test_jaxpr_has_no_per_example_jacobian():
    params = make_params(40, CD, CK, CH)
    rng = np.random.default_rng(41)
    feats = jnp.asarray(rng.normal(size=(CB, CD)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CK, CB), jnp.int32)

    def penalty(params, feats):
        return pmm_jax.layer_pmm_penalty(lambda h: mlp(params, h), feats, labels)

    def loss(params, feats):
        hidden = jax.nn.relu(feats @ params["a"] + params["c"])
        logits = hidden @ params["w"] + params["b"]
        layers = [
            (lambda h: h @ params["w"] + params["b"], hidden),
            (lambda h: mlp(params, h), feats),
        ]
        return pmm_jax.layer_pmm_loss(logits, labels, layers, alpha=0.1)[0]

    _assert_no_batch_product(penalty, params, feats)
    _assert_no_batch_product(jax.grad(lambda p, f: jnp.sum(penalty(p, f)), (0, 1)), params, feats)
    _assert_no_batch_product(loss, params, feats)
    _assert_no_batch_product(jax.grad(loss, (0, 1)), params, feats)
    # The check can fail: a Jacobian per example has the forbidden shape.
    jac = lambda p, f: jax.vmap(jax.jacrev(lambda row: mlp(p, row[None])[0]))(f)
    with pytest.raises(AssertionError, match="Jacobian"):
        _assert_no_batch_product(jac, params, feats)


def test_readme_hidden_layer_example_runs():
    """The README's Flax example, executed as written (skipped without Flax)."""
    pytest.importorskip("flax")
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("<!-- hidden-layers-example -->\n```python\n", 1)[1].split("```", 1)[0]
    env = {"pmm_jax": pmm_jax, "alpha": 0.1}
    exec(compile(code, "README.md", "exec"), env)  # our own README, as written
    env["model"] = model = env["Net"](num_classes=5)
    feats, labels = make_features(60, 8, 12, 5)
    params = model.init(jax.random.key(0), feats)["params"]
    batch = {"x": feats, "y": labels}
    (total, parts), grads = jax.value_and_grad(env["loss_fn"], has_aux=True)(params, batch, 0)
    assert parts["layer_penalties"].shape == (2,)
    np.testing.assert_allclose(total, parts["base_risk"] + 0.1 * parts["penalty"], rtol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    logits, aux = model.apply({"params": params}, feats)
    head = params["head"]
    want = pmm_jax.pmm_loss(logits, labels, aux["pre_logits"], head["kernel"], alpha=0.1)[1]
    np.testing.assert_allclose(parts["layer_penalties"][0], want["penalty"], rtol=1e-6)


# --- errors that name the argument ---------------------------------------------------------


def _ok():
    params = make_params(50, 4, 3)
    feats, labels = make_features(51, 6, 4, 3)
    return (lambda h: dense(params, h)), feats, labels


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(fn=None), TypeError, "`fn` must be a function"),
        (dict(fn=lambda h: (h @ jnp.ones((4, 3)), {})), TypeError, "`fn` must return the logits"),
        (dict(fn=lambda h: h[:3] @ jnp.ones((4, 3))), ValueError, r"`fn\(features\)` must return"),
        (dict(fn=lambda h: h[:, :, None]), ValueError, r"`fn\(features\)` must return"),
        (dict(fn=lambda h: h @ jnp.ones((4, 1))), ValueError, "at least 2 classes"),
        (dict(fn=lambda h: (h > 0) @ jnp.ones((4, 3), int)), TypeError, "floating logits"),
        (dict(logits=jnp.zeros((6, 4))), ValueError, "`logits` .* must have the same shape"),
        (dict(features=jnp.ones((6, 4), jnp.int32)), TypeError, "`features`"),
        (dict(features=jnp.float32(1.0)), ValueError, "`features` must have a batch axis"),
        (dict(labels=jnp.zeros(6)), TypeError, "`labels`"),
        (dict(labels=jnp.zeros(5, jnp.int32)), ValueError, "`labels` and `features`"),
        (dict(where=jnp.ones(5, bool)), ValueError, "`where`"),
    ],
)
def test_penalty_errors_name_the_argument(change, error, match):
    fn, feats, labels = _ok()
    args = {"fn": fn, "features": feats, "labels": labels, **change}
    fn, feats, labels = args.pop("fn"), args.pop("features"), args.pop("labels")
    with pytest.raises(error, match=match):
        jax.jit(lambda f: pmm_jax.layer_pmm_penalty(fn, f, labels, **args))(feats)


@pytest.mark.parametrize(
    "make, kw, error, match",
    [
        (lambda fn, h: (fn, h), {}, TypeError, "got one tuple"),
        (lambda fn, h: [], {}, ValueError, "`layers` is empty"),
        (lambda fn, h: [(None, h)], {}, TypeError, r"`layers\[0\]`'s fn"),
        (lambda fn, h: [fn], {}, TypeError, r"`layers\[0\]` must be"),
        (lambda fn, h: [(fn, h, -1.0)], {}, ValueError, r"`layers\[0\]`'s weight"),
        (lambda fn, h: [(fn, h, jnp.ones(2))], {}, ValueError, r"`layers\[0\]`'s weight"),
        (lambda fn, h: [(fn, h), (fn, h[:4])], {}, ValueError, r"`layers\[1\] features`"),
        (
            lambda fn, h: [(fn, h), (lambda x: x, h)],
            {},
            ValueError,
            r"`layers\[1\] fn\(features\)`",
        ),
        (lambda fn, h: [(fn, h)], dict(penalty_reduction="max"), ValueError, "`penalty_reduction`"),
        (lambda fn, h: [(fn, h)], dict(alpha=-1.0), ValueError, "`alpha`"),
    ],
)
def test_loss_errors_name_the_argument(make, kw, error, match):
    fn, feats, labels = _ok()
    with pytest.raises(error, match=match):
        pmm_jax.layer_pmm_loss(fn(feats), labels, make(fn, feats), **{"alpha": 0.1, **kw})
