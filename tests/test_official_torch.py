"""``penalty_reduction="official"`` against the authors' arithmetic in PyTorch.

``experiments/bench/official_torch.py`` is the project's one port of the authors'
penalty and objective (``topk(2)`` competitor, ``index_select`` rows, max row
norm, ``(r * mean_i ||w_y - w_m||) ** 2``, mean cross-entropy). Here ours is
held against it: the loss value and the gradients with respect to the kernel,
the bias and the features, on random cases without logit ties.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pmm_jax

torch = pytest.importorskip("torch")
from experiments.bench import official_torch  # noqa: E402  (after the importorskip)

ALPHA = 0.3  # large enough that the penalty's gradient is not lost in the CE's


def _case(batch, k, dim, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(batch, dim)).astype(np.float32)
    feats[rng.integers(batch)] *= 3.0  # one clear max-norm row
    weight = rng.normal(size=(k, dim)).astype(np.float32)  # torch Linear layout [k, d]
    bias = rng.normal(size=(k,)).astype(np.float32)
    labels = rng.integers(0, k, batch).astype(np.int64)
    logits = feats @ weight.T + bias
    top = np.sort(logits, axis=1)[:, -3:]
    assert np.all(np.diff(top, axis=1) > 1e-4), "tie in the top logits: pick another seed"
    return feats, weight, bias, labels


def _torch(feats, weight, bias, labels):
    w = torch.tensor(weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    f = torch.tensor(feats, requires_grad=True)
    y = torch.tensor(labels)
    logits = f @ w.T + b
    penalty = official_torch.official_pmm_penalty(logits, y, f, w)
    loss = official_torch.official_objective(logits, y, f, w, ALPHA)
    loss.backward()
    return (
        float(loss.detach()),
        float(penalty.detach()),
        w.grad.numpy().T,  # -> flax layout [d, k]
        b.grad.numpy(),
        f.grad.numpy(),
    )


def _ours(kernel, bias, feats, labels):
    logits = feats @ kernel + bias
    return pmm_jax.pmm_loss(
        logits, labels, feats, kernel, alpha=ALPHA, penalty_reduction="official"
    )


@pytest.mark.parametrize("dim", [3, 64])
@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_official_reduction_equals_authors_code(batch, k, dim):
    feats, weight, bias, labels = _case(batch, k, dim, seed=batch * 1000 + k * 10 + dim)
    want_loss, want_pen, want_gk, want_gb, want_gf = _torch(feats, weight, bias, labels)

    fn = jax.jit(jax.value_and_grad(_ours, argnums=(0, 1, 2), has_aux=True))
    (loss, parts), (gk, gb, gf) = fn(
        jnp.asarray(weight.T), jnp.asarray(bias), jnp.asarray(feats), jnp.asarray(labels, jnp.int32)
    )
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    np.testing.assert_allclose(parts["penalty"], want_pen, rtol=2e-6)
    scale = lambda g: 1e-6 * max(1.0, float(np.abs(g).max()))
    np.testing.assert_allclose(gk, want_gk, rtol=1e-5, atol=scale(want_gk))
    np.testing.assert_allclose(gb, want_gb, rtol=1e-5, atol=scale(want_gb))
    np.testing.assert_allclose(gf, want_gf, rtol=1e-5, atol=scale(want_gf))


def test_the_comparison_can_fail():
    """The per-example mean (``"mean"``) is not the authors' mean of norms, squared."""
    feats, weight, bias, labels = _case(16, 10, 8, seed=3)
    want_loss, *_ = _torch(feats, weight, bias, labels)
    logits = feats @ weight.T + bias
    total, _ = pmm_jax.pmm_loss(logits, labels.astype(np.int32), feats, weight.T, alpha=ALPHA)
    assert abs(float(total) - want_loss) > 1e-3
