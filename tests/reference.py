"""Plain reference implementations, written differently from the library.

Loops in NumPy (float64) for values; an all-pairs ``k x k`` formulation in JAX
(one-hot products, a scatter-add gradient) for gradients. Both are exactly the
formulations the library avoids, which is the point: they share no code with it.
"""

import jax
import jax.numpy as jnp
import numpy as np


def competitors_loop(logits, labels):
    logits = np.asarray(logits, np.float64)
    out = []
    for i, y in enumerate(np.asarray(labels)):
        best, best_j = -np.inf, None
        for j in range(logits.shape[1]):
            if j != y and (best_j is None or logits[i, j] > best):
                best, best_j = logits[i, j], j
        out.append(best_j)
    return np.array(out)


def penalty_loop(logits, labels, features, kernel, where=None):
    feats = np.asarray(features, np.float64)
    kernel = np.asarray(kernel, np.float64)
    labels = np.asarray(labels)
    mask = np.ones(len(labels), bool) if where is None else np.asarray(where)
    radius = 0.0
    for i in range(len(labels)):
        if mask[i]:
            radius = max(radius, float(np.sqrt(sum(v * v for v in feats[i]))))
    m = competitors_loop(logits, labels)
    out = np.zeros(len(labels))
    for i in range(len(labels)):
        if mask[i]:
            diff = [kernel[c, labels[i]] - kernel[c, m[i]] for c in range(kernel.shape[0])]
            out[i] = sum(v * v for v in diff) * radius**2
    return out


def margins_loop(logits, labels, kernel, radius=None):
    logits = np.asarray(logits, np.float64)
    kernel = np.asarray(kernel, np.float64)
    m = competitors_loop(logits, labels)
    out = []
    for i, y in enumerate(np.asarray(labels)):
        xi = logits[i, y] - logits[i, m[i]]
        dist = xi / np.linalg.norm(kernel[:, y] - kernel[:, m[i]])
        out.append(dist if radius is None else dist / radius)
    return np.array(out)


def penalty_all_pairs(logits, labels, features, kernel):
    """All-pairs JAX formulation: builds the k x k matrix of ||w_p - w_q||^2."""
    k = kernel.shape[1]
    m = jnp.argmax(jnp.where(jax.nn.one_hot(labels, k, dtype=bool), -jnp.inf, logits), -1)
    m = jax.lax.stop_gradient(m)
    gram = kernel.T @ kernel
    sq = jnp.diag(gram)
    pair = sq[:, None] + sq[None, :] - 2 * gram  # [k, k]
    r_sq = jnp.max(jnp.sum(features**2, -1))
    return pair[labels, m] * r_sq


def penalty_one_hot(logits, labels, features, kernel):
    """One-hot-times-kernel formulation (O(B k d)), differentiable by plain JAX."""
    k = kernel.shape[1]
    m = jnp.argmax(jnp.where(jax.nn.one_hot(labels, k, dtype=bool), -jnp.inf, logits), -1)
    sel = jax.nn.one_hot(labels, k) - jax.nn.one_hot(jax.lax.stop_gradient(m), k)  # [B, k]
    diff = sel @ kernel.T  # [B, d]
    r_sq = jnp.max(jnp.sum(features**2, -1))
    return jnp.sum(diff**2, -1) * r_sq
