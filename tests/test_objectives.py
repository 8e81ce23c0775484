"""Tests for experiments/objectives.py: each objective against a float64 NumPy formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import objectives as obj

B, D, K = 12, 7, 5


def make_batch(seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(B, D)).astype(np.float32)
    kernel = rng.normal(size=(D, K)).astype(np.float32)
    bias = rng.normal(size=K).astype(np.float32)
    logits = (scale * (features @ kernel + bias)).astype(np.float32)
    # Logits consistent with the head (large_margin reads them with the kernel).
    labels = rng.integers(0, K, size=B).astype(np.int32)
    return logits, labels, features, kernel, bias


def head_logits(features, kernel, bias):
    return (np.float64(features) @ np.float64(kernel) + bias).astype(np.float32)


# --- float64 NumPy references (no JAX) -------------------------------------------------------


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_onehot(y, k):
    return np.eye(k)[y]


def np_competitor(z, y):
    z = np.array(z, np.float64)
    z[np.arange(len(y)), y] = -np.inf
    return z.argmax(-1)


def np_cos(features, kernel, eps=obj.NORM_EPS):
    f = np.asarray(features, np.float64)
    w = np.asarray(kernel, np.float64)
    fn = f / np.maximum(np.sqrt((f**2).sum(1, keepdims=True)), eps)
    wn = w / np.maximum(np.sqrt((w**2).sum(0, keepdims=True)), eps)
    return fn @ wn


def np_large_margin(z, y, kernel, gamma):
    m = np_competitor(z, y)
    z = np.asarray(z, np.float64)
    w = np.asarray(kernel, np.float64)
    rows = np.arange(len(y))
    d = (z[rows, y] - z[rows, m]) / np.linalg.norm(w[:, y] - w[:, m], axis=0)
    return np.maximum(0.0, gamma - d)


REFERENCES = {
    "cross_entropy": lambda z, y, f, w, h: np_ce(z, y),
    "label_smoothing": lambda z, y, f, w, h: (
        -(((1 - h["epsilon"]) * np_onehot(y, K) + h["epsilon"] / K) * np_log_softmax(z)).sum(-1)
    ),
    "confidence_penalty": lambda z, y, f, w, h: (
        np_ce(z, y) + h["beta"] * (np.exp(np_log_softmax(z)) * np_log_softmax(z)).sum(-1)
    ),
    "logit_penalty": lambda z, y, f, w, h: np_ce(z, y) + h["beta"] * (np.float64(z) ** 2).sum(-1),
    "logit_norm": lambda z, y, f, w, h: np_ce(
        np.float64(z) / (h["tau"] * np.linalg.norm(np.float64(z), axis=-1, keepdims=True)), y
    ),
    "am_softmax": lambda z, y, f, w, h: np_ce(
        h["scale"] * (np_cos(f, w) - h["margin"] * np_onehot(y, K)), y
    ),
    "large_margin": lambda z, y, f, w, h: np_large_margin(z, y, w, h["gamma"]),
    "multiclass_hinge": lambda z, y, f, w, h: np.maximum(
        0.0,
        1.0
        - (
            np.float64(z)[np.arange(len(y)), y]
            - np.float64(z)[np.arange(len(y)), np_competitor(z, y)]
        ),
    ),
}
HYPER = {
    "cross_entropy": {},
    "label_smoothing": {"epsilon": 0.2},
    "confidence_penalty": {"beta": 0.7},
    "logit_penalty": {"beta": 0.05},
    "logit_norm": {"tau": 0.3},
    "am_softmax": {"scale": 8.0, "margin": 0.3},
    "large_margin": {"gamma": 0.5},
    "multiclass_hinge": {},
}


def call(name, logits, labels, features, kernel, bias, **hyper):
    return obj.get_objective(name, **hyper)(
        jnp.asarray(logits), jnp.asarray(labels), features=features, kernel=kernel, bias=bias
    )


def test_every_objective_has_a_reference():
    assert set(REFERENCES) == set(obj.OBJECTIVES) == set(HYPER) == set(obj.DEFAULT_GRIDS)


@pytest.mark.parametrize("name", obj.OBJECTIVE_NAMES)
def test_against_numpy(name):
    logits, labels, features, kernel, bias = make_batch(1)
    if name == "large_margin":  # half of the examples inside the margin, half outside
        logits = head_logits(features, kernel, bias)
    out = call(name, logits, labels, features, kernel, bias, **HYPER[name])
    assert out.shape == (B,) and out.dtype == jnp.float32
    want = REFERENCES[name](logits, labels, features, kernel, HYPER[name])
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    if name in ("large_margin", "multiclass_hinge"):
        assert 0 < np.sum(want == 0) < B  # both sides of the hinge are exercised


@pytest.mark.parametrize("name", obj.OBJECTIVE_NAMES)
def test_uniform_signature_jit_and_bf16(name):
    logits, labels, features, kernel, bias = make_batch(2)
    fn = obj.get_objective(name)
    eager = fn(logits, labels, features=features, kernel=kernel, bias=bias)
    jitted = jax.jit(lambda *a: fn(a[0], a[1], features=a[2], kernel=a[3], bias=a[4]))(
        logits, labels, features, kernel, bias
    )
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)
    low = fn(
        jnp.asarray(logits, jnp.bfloat16),
        labels,
        features=jnp.asarray(features, jnp.bfloat16),
        kernel=jnp.asarray(kernel, jnp.bfloat16),
    )
    assert low.dtype == jnp.float32 and low.shape == (B,)
    assert np.all(np.isfinite(low))


def test_limits_equal_cross_entropy():
    logits, labels, features, kernel, bias = make_batch(3)
    ce = np_ce(logits, labels)
    for name, hyper in [
        ("label_smoothing", {"epsilon": 0.0}),
        ("confidence_penalty", {"beta": 0.0}),
        ("logit_penalty", {"beta": 0.0}),
    ]:
        out = call(name, logits, labels, features, kernel, bias, **hyper)
        np.testing.assert_allclose(out, ce, rtol=1e-5, atol=1e-6, err_msg=name)
    # AM-softmax with m = 0: the cross-entropy of s cos(theta).
    s = 5.0
    out = call("am_softmax", logits, labels, features, kernel, bias, scale=s, margin=0.0)
    np.testing.assert_allclose(out, np_ce(s * np_cos(features, kernel), labels), rtol=1e-5)
    # The margin lowers the true class's cosine: the loss only grows.
    more = call("am_softmax", logits, labels, features, kernel, bias, scale=s, margin=0.2)
    assert np.all(np.asarray(more) > np.asarray(out))
    # large_margin replaces CE: with gamma below every margin it is 0.
    out = call("large_margin", logits, labels, features, kernel, bias, gamma=-1e6)
    np.testing.assert_array_equal(out, np.zeros(B))


def test_logit_norm_is_scale_free_and_hinge_is_one_minus_gap():
    logits, labels, features, kernel, bias = make_batch(4)
    a = call("logit_norm", logits, labels, features, kernel, bias, tau=0.1)
    b = call("logit_norm", 7.0 * logits, labels, features, kernel, bias, tau=0.1)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    rows = np.arange(B)
    gap = logits[rows, labels] - logits[rows, np_competitor(logits, labels)]
    out = call("multiclass_hinge", logits, labels, features, kernel, bias)
    np.testing.assert_allclose(out, np.maximum(0.0, 1.0 - gap), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", obj.OBJECTIVE_NAMES)
def test_gradients_finite_at_zero(name):
    _, labels, features, kernel, bias = make_batch(5)
    zero_logits = jnp.zeros((B, K))
    zero_features = jnp.zeros((B, D)).at[1:].set(features[1:])  # row 0 exactly zero
    fn = obj.get_objective(name)

    def total(z, f, w):
        return jnp.sum(fn(z, labels, features=f, kernel=w, bias=bias))

    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))(
        zero_logits, zero_features, jnp.asarray(kernel)
    )
    assert np.isfinite(value)
    for g in grads:
        assert np.all(np.isfinite(g))
    if name == "logit_norm":
        np.testing.assert_allclose(value, B * np.log(K), rtol=1e-6)


def _numeric_grad(f, x, h=1e-6):
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (f(up) - f(down)) / (2 * h)
    return g


def test_large_margin_gradient_flows_through_the_distance():
    logits, labels, features, kernel, bias = make_batch(6)
    gamma = 3.0
    logits = head_logits(features, kernel, bias)

    def jax_loss(w):
        z = jnp.asarray(features) @ w + bias
        return jnp.sum(obj.large_margin(z, labels, kernel=w, gamma=gamma))

    def np_loss(w):
        z = np.float64(features) @ w + bias
        return np_large_margin(z, labels, w, gamma).sum()

    g = jax.grad(jax_loss)(jnp.asarray(kernel))
    np.testing.assert_allclose(g, _numeric_grad(np_loss, kernel), rtol=2e-3, atol=2e-4)
    # With the logits held fixed the kernel still gets a gradient: through ||w_y - w_m||.
    g_denominator = jax.grad(
        lambda w: jnp.sum(obj.large_margin(jnp.asarray(logits), labels, kernel=w, gamma=gamma))
    )(jnp.asarray(kernel))
    assert np.abs(np.asarray(g_denominator)).max() > 0


def test_am_softmax_gradient_matches_numpy():
    logits, labels, features, kernel, _ = make_batch(7)
    hyper = {"scale": 4.0, "margin": 0.25}

    def np_loss(f):
        return REFERENCES["am_softmax"](None, labels, f, kernel, hyper).sum()

    g = jax.grad(
        lambda f: jnp.sum(obj.am_softmax(logits, labels, features=f, kernel=kernel, **hyper))
    )(jnp.asarray(features))
    np.testing.assert_allclose(g, _numeric_grad(np_loss, features), rtol=2e-3, atol=2e-4)


def test_default_grids():
    for name, grid in obj.DEFAULT_GRIDS.items():
        defaults = obj.OBJECTIVES[name][1]
        if not defaults:
            assert grid == ({},)
            continue
        assert len(grid) == obj.GRID_SIZE >= 5, name
        assert len({tuple(sorted(p.items())) for p in grid}) == len(grid), name
        for point in grid:
            assert set(point) == set(defaults), name
            obj.get_objective(name, **point)  # every point is valid


def test_bad_names_and_hyperparameters():
    with pytest.raises(ValueError, match=r"'nope'.*cross_entropy.*large_margin"):
        obj.get_objective("nope")
    with pytest.raises(ValueError, match=r"'beta'.*'logit_norm'.*valid: tau"):
        obj.get_objective("logit_norm", beta=1.0)
    with pytest.raises(ValueError, match=r"'temperature'.*valid: none"):
        obj.get_objective("cross_entropy", temperature=1.0)
    for name, hyper in [
        ("logit_norm", {"tau": 0.0}),
        ("label_smoothing", {"epsilon": 1.5}),
        ("confidence_penalty", {"beta": -0.1}),
        ("am_softmax", {"scale": float("nan")}),
        ("large_margin", {"gamma": float("inf")}),
        ("logit_penalty", {"beta": "big"}),
    ]:
        (key,) = hyper
        with pytest.raises(ValueError, match=repr(key)):
            obj.get_objective(name, **hyper)


def test_bad_inputs():
    logits, labels, features, kernel, _ = make_batch(8)
    with pytest.raises(ValueError, match="needs `features` and `kernel`"):
        obj.am_softmax(logits, labels, kernel=kernel)
    with pytest.raises(ValueError, match="needs `kernel`"):
        obj.large_margin(logits, labels)
    with pytest.raises(ValueError, match="`kernel` must be"):
        obj.am_softmax(logits, labels, features=features, kernel=kernel[:, :3])
    with pytest.raises(ValueError, match="`features` must be"):
        obj.am_softmax(logits, labels, features=features[:, :3], kernel=kernel)
    with pytest.raises(ValueError, match="`labels` must be"):
        obj.cross_entropy(logits, labels[:3])
    with pytest.raises(TypeError, match="`labels` must be integer"):
        obj.cross_entropy(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="`logits` must be"):
        obj.cross_entropy(logits[0], labels)
