"""Every input error names the argument; the checked mode catches values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import pmm_jax
from tests.test_penalty import make_batch

L, Y, F, K = make_batch(0, 4, 3, 5)  # logits [4,5], labels [4], features [4,3], kernel [3,5]


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern",
    [
        ((L.astype(jnp.int32), Y, F, K), {}, TypeError, r"`logits` must have a floating dtype"),
        ((L, Y.astype(jnp.float32), F, K), {}, TypeError, r"`labels` must hold integer"),
        ((L, Y, F.astype(jnp.int32), K), {}, TypeError, r"`features` must have a floating"),
        ((L, Y, F, K.astype(jnp.int32)), {}, TypeError, r"`kernel` must have a floating"),
        ((L[0], Y, F, K), {}, ValueError, r"`logits` must have rank 2.*\(5,\)"),
        ((L, Y[:, None], F, K), {}, ValueError, r"`labels` must have rank 1.*\(4, 1\)"),
        ((L, Y[:3], F, K), {}, ValueError, r"`labels` and `logits`.*\(3,\).*\(4, 5\)"),
        ((L, Y, F[:3], K), {}, ValueError, r"`features` and `logits`.*\(3, 3\)"),
        ((L, Y, F[None], K), {}, ValueError, r"`features` must have rank 2"),
        ((L, Y, F, K[:2]), {}, ValueError, r"`kernel` must have shape \(3, 5\).*\(2, 5\)"),
        ((L, Y, F, K.T), {}, ValueError, r"looks transposed"),
        ((L[:, :1], Y, F, K[:, :1]), {}, ValueError, r"at least 2 classes.*k=1"),
        ((L, Y, F, K), {"where": jnp.ones(4)}, TypeError, r"`where` must be a boolean"),
        ((L, Y, F, K), {"where": jnp.ones(3, bool)}, ValueError, r"`where` must have shape \(4,\)"),
    ],
)
def test_penalty_input_errors(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        pmm_jax.pmm_penalty(*args, **kwargs)
    with pytest.raises(exc, match=pattern):  # the same error at trace time under jit
        jax.jit(lambda *a: pmm_jax.pmm_penalty(*a, **kwargs))(*args)


def test_other_functions_check_too():
    with pytest.raises(TypeError, match="`labels`"):
        pmm_jax.competitor_classes(L, Y.astype(jnp.float32))
    with pytest.raises(ValueError, match="`kernel`"):
        pmm_jax.pairwise_margins(L, Y, K[:, :3])
    with pytest.raises(ValueError, match="`features` must have rank 2"):
        pmm_jax.feature_radius(F[0])
    with pytest.raises(ValueError, match="`where`"):
        pmm_jax.feature_radius(F, where=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="`kernel`"):
        pmm_jax.pmm_loss(L, Y, F, K[:2], alpha=1.0)


def test_validate_batch_eager():
    pmm_jax.validate_batch(L, Y, features=F, kernel=K)  # fine
    with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 5\).*row 2 holds 7"):
        pmm_jax.validate_batch(L, Y.at[2].set(7))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels.*holds -1"):
        pmm_jax.validate_batch(L, Y.at[0].set(-1))
    with pytest.raises(checkify.JaxRuntimeError, match="`logits` has NaN/Inf in row 1"):
        pmm_jax.validate_batch(L.at[1, 2].set(jnp.nan), Y)
    with pytest.raises(checkify.JaxRuntimeError, match="`features` has NaN/Inf in row 3"):
        pmm_jax.validate_batch(L, Y, features=F.at[3, 0].set(jnp.inf))
    with pytest.raises(checkify.JaxRuntimeError, match="`kernel` has NaN/Inf"):
        pmm_jax.validate_batch(L, Y, kernel=K.at[0, 0].set(jnp.nan))
    # Masked rows are not checked: padding may hold anything.
    pmm_jax.validate_batch(L, Y.at[3].set(-1), where=jnp.arange(4) < 3)


def test_validate_batch_under_jit_with_checkify():
    def loss(logits, labels, feats, kernel):
        pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel)
        return pmm_jax.pmm_penalty(logits, labels, feats, kernel).sum()

    checked = jax.jit(checkify.checkify(loss))
    err, value = checked(L, Y, F, K)
    err.throw()
    assert np.isfinite(float(value))
    err, _ = checked(L, Y.at[1].set(9), F, K)
    with pytest.raises(checkify.JaxRuntimeError, match="row 1 holds 9"):
        err.throw()


# --- Issue #22, case 5: a kernel passed transposed, which no shape check catches ---------


def _square_head(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    d = k = 16
    feats = jnp.asarray(rng.normal(size=(9, d)), dtype)
    kernel = jnp.asarray(rng.normal(size=(d, k)) / 4, dtype)
    bias = jnp.asarray(rng.normal(size=(k,)), dtype)
    logits = feats @ kernel + bias
    labels = jnp.asarray(rng.integers(0, k, 9))
    return logits, labels, feats, kernel, bias


def test_a_transposed_square_kernel_is_silently_wrong_in_the_penalty():
    """The hazard: the shapes fit, the penalty is not that of the head."""
    logits, labels, feats, kernel, _ = _square_head()
    right = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    wrong = pmm_jax.pmm_penalty(logits, labels, feats, kernel.T)
    assert not np.allclose(right, wrong, rtol=0.1)


@pytest.mark.parametrize("jit", [False, True])
def test_validate_batch_bias_catches_a_transposed_square_kernel(jit):
    logits, labels, feats, kernel, bias = _square_head()

    def check(kernel, bias):
        pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel, bias=bias)

    run = (lambda *a: jax.jit(checkify.checkify(check))(*a)[0].throw()) if jit else check
    run(kernel, bias)  # the head that made the logits passes
    with pytest.raises(checkify.JaxRuntimeError, match=r"passed transposed .*pass its \.T"):
        run(kernel.T, bias)
    with pytest.raises(checkify.JaxRuntimeError, match="not `features @ kernel \\+ bias`"):
        run(kernel, jnp.zeros_like(bias) + 1.0)  # another bias: another head


def test_validate_batch_bias_tolerates_bf16_and_masks_rows():
    logits, labels, feats, kernel, bias = _square_head(jnp.bfloat16, seed=1)
    pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel, bias=bias)
    bad = logits.at[3].add(100.0)  # row 3 is not this head's, but it is masked
    where = jnp.arange(9) != 3
    pmm_jax.validate_batch(bad, labels, features=feats, kernel=kernel, bias=bias, where=where)
    with pytest.raises(checkify.JaxRuntimeError, match=r"\(row 3\)"):
        pmm_jax.validate_batch(bad, labels, features=feats, kernel=kernel, bias=bias, num_rows=9)
    # No bias: 0.0 says so.
    pmm_jax.validate_batch(feats @ kernel, labels, features=feats, kernel=kernel, bias=0.0)


def test_validate_batch_bias_needs_features_and_kernel():
    logits, labels, feats, kernel, bias = _square_head()
    with pytest.raises(ValueError, match="pass `features` and `kernel` too"):
        pmm_jax.validate_batch(logits, labels, kernel=kernel, bias=bias)
    with pytest.raises(ValueError, match=r"`bias` must be float\[16\]"):
        pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel, bias=bias[:3])
