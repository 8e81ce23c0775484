r"""Numerics shared by the penalty, the class-parallel head and the losses.

The bottom of the package's import graph: this module imports no other ``pmm_jax``
module, and every other ``_src`` module may import it. Its names are not exported
by ``pmm_jax``; they are the API of this module inside the package.

* The compute dtype (:func:`acc_dtype`), ``r^2`` (:func:`radius_sq`), a square root
  with a finite gradient at 0 (:func:`safe_sqrt`), the score of given classes
  (:func:`pick`) and a margin over its gradient's norm (:func:`signed_distance`).
* The deterministic kernel-gradient assemblies of ``||w_y - w_m||^2``
  (:func:`kernel_grad_dense`, :func:`kernel_grad_sorted`; see ``penalty.py``'s
  module docstring) and the sanitizing of masked rows (:func:`sanitize`).
* Masked means built as per-device shares (:func:`shares`, :func:`mean_share`,
  :func:`masked_min`).
* Every spelling that differs between the JAX versions ``pyproject.toml`` allows
  (:func:`varying_axes`, :func:`vary_like`); each says which JAX needs it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Up to this many classes the kernel gradient is one fused reduction over the
# batch (O(B k d) work, at most 32x the gather's); beyond, sort + segmented scan.
DENSE_GRAD_MAX_K = 32


def acc_dtype(dtype) -> jnp.dtype:
    """The compute dtype: float32, or wider if the input is (float64 under x64)."""
    return jnp.promote_types(dtype, jnp.float32)


def radius_sq(features: Array, where: Array | None, axis_name) -> Array:
    """``r^2 = max_i ||phi_i||^2`` over selected rows, global over ``axis_name``.

    ``features`` is ``[B, ...]``; the norm is over all non-batch axes.
    """
    axes = tuple(range(1, features.ndim))
    sq = jnp.sum(jnp.square(features.astype(acc_dtype(features.dtype))), axis=axes)
    if where is not None:
        sq = jnp.where(where, sq, 0.0)
    local = jnp.max(sq, initial=0.0)
    if axis_name is None:
        return local
    # The collective max, written as all_gather + max so that it is
    # differentiable: all_gather's transpose sums the cotangent of r^2 over the
    # devices and hands it to the device(s) holding the max (lax.pmax has no
    # differentiation rule).
    return jnp.max(lax.all_gather(local, axis_name))


def safe_sqrt(x: Array) -> Array:
    """``sqrt`` with a zero (not NaN) gradient at 0; NaN stays NaN (a fault shows)."""
    positive = x > 0
    rest = jnp.where(jnp.isnan(x), x, jnp.zeros_like(x))
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), rest)


def pick(scores: Array, idx: Array) -> Array:
    """``scores[i, idx_i]``, ``[B]``."""
    return jnp.take_along_axis(scores, idx[:, None].astype(jnp.int32), axis=-1)[:, 0]


def signed_distance(
    gap: Array, sq_norm: Array, *, radius: Array | None = None, where: Array | None = None
) -> Array:
    """``gap_i / (sqrt(sq_norm_i) * radius)``: a margin over the norm of its gradient.

    Where the denominator is 0 (no boundary, or a zero radius) the result is 0, with a zero
    gradient; NaN inputs give NaN, so that a fault is not hidden behind a plausible margin.
    Masked rows (``where`` False) give 0.
    """
    denom = safe_sqrt(sq_norm)
    if radius is not None:
        denom = denom * jnp.asarray(radius, denom.dtype)
    ok = denom > 0
    out = jnp.where(ok, gap / jnp.where(ok, denom, 1.0), jnp.where(jnp.isnan(denom), denom, 0.0))
    out = jnp.where(jnp.isnan(gap), gap, out)
    return out if where is None else jnp.where(where, out, 0.0)


def sanitize(labels: Array, competitors: Array, where: Array | None, k: int):
    """Gives masked rows valid, distinct class indices (their result is zeroed)."""
    labels = labels.astype(jnp.int32)
    if where is None:
        return labels, competitors
    return jnp.where(where, labels, 0), jnp.where(where, competitors, 1 % k)


# --- the kernel gradient of ||w_y - w_m||^2, without a floating scatter-add ------------


def kernel_grad_dense(contrib: Array, labels: Array, competitors: Array, k: int) -> Array:
    """``G[:, j] = sum_i contrib[:, i] * ([y_i = j] - [m_i = j])`` as one reduction.

    ``contrib`` is ``[d, B]``. The signs are exactly -1, 0 or +1 (``y_i != m_i``), so
    every product is exact and the only rounding is XLA's reduction over the batch: a
    fixed order, no atomics, the same bits on every run. XLA fuses the broadcast into
    the reduction, so the ``[d, B, k]`` product is never stored.
    """
    classes = jnp.arange(k, dtype=jnp.int32)
    sign = (labels[:, None] == classes).astype(contrib.dtype) - (
        competitors[:, None] == classes
    ).astype(contrib.dtype)  # [B, k]
    return jnp.sum(contrib[:, :, None] * sign[None, :, :], axis=1)


def segmented_add(a, b):
    """Associative op of a segmented sum: ``(flag, value)`` pairs."""
    flag_a, val_a = a
    flag_b, val_b = b
    return flag_a | flag_b, jnp.where(flag_b[:, None], val_b, val_a + val_b)


def kernel_grad_sorted(contrib: Array, labels: Array, competitors: Array, k: int) -> Array:
    """The same gradient by an integer sort, a segmented scan and a unique-index write."""
    d, batch = contrib.shape
    cls = jnp.concatenate([labels, competitors]).astype(jnp.int32)  # [2B]
    vals = jnp.concatenate([contrib, -contrib], axis=1).T  # [2B, d]
    order = jnp.argsort(cls, stable=True)
    cls, vals = cls[order], vals[order]
    starts = jnp.concatenate([jnp.ones((1,), bool), cls[1:] != cls[:-1]])
    ends = jnp.concatenate([cls[1:] != cls[:-1], jnp.ones((1,), bool)])
    _, sums = lax.associative_scan(segmented_add, (starts, vals))
    # One write per class; the other rows go to distinct out-of-range slots and
    # are dropped, so every index is unique and no two updates are ever added.
    target = jnp.where(ends, cls, k + jnp.arange(2 * batch, dtype=jnp.int32))
    return jnp.zeros((d, k), sums.dtype).at[:, target].set(sums.T, mode="drop", unique_indices=True)


def kernel_grad(contrib: Array, labels: Array, competitors: Array, k: int) -> Array:
    """The kernel gradient: dense for ``k <= DENSE_GRAD_MAX_K``, else sorted."""
    if k <= DENSE_GRAD_MAX_K:
        return kernel_grad_dense(contrib, labels, competitors, k)
    return kernel_grad_sorted(contrib, labels, competitors, k)


# --- masked means as per-device shares ---------------------------------------------------


def shares(where: Array, axis_name) -> tuple[Array, Array, Array]:
    """``(n, num_shards, scale)`` for masked means built as per-device shares.

    ``n`` is the number of valid rows of the global batch and ``scale =
    num_shards / max(n, 1)``: ``sum(local values) * scale`` is this device's share,
    and the ``pmean`` of the shares over ``axis_name`` is the global masked mean
    (with ``axis_name=None``, the share *is* the mean). The one place this
    arithmetic lives (``pmm_jax.training`` uses it for its metrics too).
    """
    n = jnp.sum(where, dtype=jnp.float32)
    num_shards = jnp.float32(1.0)
    if axis_name is not None:
        n, num_shards = lax.psum(n, axis_name), lax.psum(1.0, axis_name)
    return n, num_shards, num_shards / jnp.maximum(n, 1.0)


def mean_share(values: Array, where: Array, axis_name=None) -> Array:
    """This device's share of the masked mean of ``values`` over the global batch."""
    return jnp.sum(jnp.where(where, values, 0.0)) * shares(where, axis_name)[2]


def masked_min(values: Array, where: Array, axis_name=None) -> Array:
    """The minimum of ``values`` over the valid rows of the global batch (not a share)."""
    out = jnp.min(jnp.where(where, values, jnp.inf))
    return out if axis_name is None else lax.pmin(out, axis_name)


# --- spellings that moved between JAX versions ------------------------------------------


def varying_axes(x) -> frozenset:
    """Mesh axes over which ``x`` varies inside ``shard_map`` (empty elsewhere)."""
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)  # JAX < 0.10 spelling
    if vma is None:  # JAX >= 0.10
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", ())
    return frozenset(vma)


def vary_like(x, *refs):
    """Marks ``x`` as varying over the axes that ``refs`` vary over.

    Under ``shard_map(check_vma=True)`` a replicated kernel is *invariant* while
    the labels are *varying*; a custom VJP must return a cotangent of its input's
    type, so the kernel is cast to varying first (a no-op on the data whose
    transpose is the ``psum`` of the per-device kernel gradients).
    """
    missing = frozenset().union(*(varying_axes(r) for r in refs)) - varying_axes(x)
    if not missing:
        return x
    axes = tuple(sorted(missing, key=str))
    if hasattr(lax, "pcast"):  # JAX >= 0.9
        return lax.pcast(x, axes, to="varying")
    return lax.pvary(x, axes)  # JAX < 0.9 (removed in 0.10)
