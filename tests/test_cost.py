"""The penalty costs O(B*d) beyond one pass over the logits: checked on the jaxpr.

With B=8, d=16, k=1000 the shapes we must never see are large and distinct:
k*k = 1e6 (pairwise matrix), B*k*d = 128k ([B, k, d] tensor). Everything in the
forward pass must be at most B*k (the logits) and there must be no matmul at all
(a one-hot-times-kernel product is a dot_general). The backward pass may also
hold the dense [d, k] kernel gradient (the output itself), but nothing larger.

With few classes (k <= 32) the kernel gradient is instead one reduction over the
batch of a [d, B, k] product by signs in {-1, 0, 1}; it is in the jaxpr, so the
check there is on the compiled program: XLA fuses it and never stores it -- the XLA
of jaxlib >= 0.10.2 on CPU; older ones store it (B*d*k floats, a memory cost only),
which the test expects of them.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pmm_jax
from tests import jax_compat, reference

B, D, K = 8, 16, 1000


def _inputs():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, K)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, K, B), jnp.int32)
    return feats @ kernel, labels, feats, kernel


def _walk(jaxpr, out):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            shape = getattr(v.aval, "shape", ())
            out.append((eqn.primitive.name, tuple(shape), int(np.prod(shape, dtype=np.int64))))
        for sub in jax_compat.jaxprs_in_params(eqn.params):
            _walk(sub, out)
    return out


def _profile(fn, *args):
    return _walk(jax.make_jaxpr(fn)(*args).jaxpr, [])


def _assert_cheap(records, limit):
    assert not [r for r in records if r[0] == "dot_general"], "a matmul appeared"
    too_big = [r for r in records if r[2] > limit]
    assert not too_big, f"intermediates above {limit} elements: {too_big}"


@pytest.mark.parametrize("where", [None, jnp.arange(B) < 5])
def test_forward_has_no_large_intermediate(where):
    logits, labels, feats, kernel = _inputs()
    records = _profile(
        lambda *a: pmm_jax.pmm_penalty(*a, where=where), logits, labels, feats, kernel
    )
    _assert_cheap(records, B * K)


def test_backward_has_no_large_intermediate():
    logits, labels, feats, kernel = _inputs()

    def f(feats, kernel):
        return jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel))

    records = _profile(jax.grad(f, (0, 1)), feats, kernel)
    _assert_cheap(records, D * K)


def test_margins_and_loss_parts_are_cheap():
    logits, labels, feats, kernel = _inputs()
    _assert_cheap(_profile(pmm_jax.pairwise_margins, logits, labels, kernel), B * K)

    def f(feats, kernel):
        return pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1e-3)[0]

    _assert_cheap(_profile(jax.grad(f, (0, 1)), feats, kernel), D * K)


def test_the_check_catches_the_naive_formulations():
    """The same check flags the all-pairs and one-hot references: it can fail."""
    logits, labels, feats, kernel = _inputs()
    for naive in (reference.penalty_all_pairs, reference.penalty_one_hot):
        with pytest.raises(AssertionError):
            _assert_cheap(_profile(naive, logits, labels, feats, kernel), B * K)


def _entry_buffers(fn, *args):
    """Element counts of the arrays the compiled program stores (its top-level values)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return [
        int(np.prod([int(n) for n in dims.split(",")]))
        for dims in re.findall(r"= [a-z]+\d*\[([\d,]+)\]", entry)
    ]


@pytest.mark.xfail(
    jax_compat.JAXLIB_VERSION < (0, 10, 2),
    reason="the XLA of jaxlib < 0.10.2 stores the [d, B, k] product on CPU (memory only)",
    strict=True,
)
def test_small_k_kernel_gradient_is_fused():
    """k <= 32: the [d, B, k] product of the dense assembly is never stored."""
    batch, dim, k = 256, 64, 32
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(dim, k)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, k, batch), jnp.int32)
    logits = feats @ kernel

    def f(feats, kernel):
        return jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel))

    grad = jax.grad(f, (0, 1))
    records = _profile(grad, feats, kernel)
    assert any(r[2] == batch * dim * k for r in records)  # the product is in the jaxpr
    assert not [r for r in records if r[0] == "dot_general"], "a matmul appeared"
    stored = _entry_buffers(grad, feats, kernel)
    assert max(stored) < batch * dim * k, sorted(stored)[-5:]
    # The check sees a stored [d, B, k] array when there is one.
    stored_naive = _entry_buffers(
        lambda f, w: (f.T[:, :, None] * w[0][None, None, :]) + 1.0, feats, kernel
    )
    assert max(stored_naive) >= batch * dim * k
