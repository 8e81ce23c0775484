r"""The composed objective: base risk + alpha * PMM, with explicit reductions.

The paper writes the objective as ``L = alpha * sum_i R_i + sum_i C_i`` (§IV,
footnote 2). Its official PyTorch code, whose alpha values (1e-5 .. 1e-3) we want
to mean the same thing here, computes

    L = mean_i C_i + alpha * sum_i R_i        (``penalty_reduction="sum"``)

i.e. a *mean* cross-entropy and a *summed* penalty over the batch. That is our
default and the convention the paper's alpha values belong to. The alternative
``penalty_reduction="mean"`` (``mean_i C_i + alpha * mean_i R_i``) makes alpha
independent of the batch size; multiply a paper alpha by the batch size to
convert.

Data parallelism. With ``axis_name`` (inside ``pmap`` / ``shard_map``) the
returned scalars are *this device's share*, built so that their ``lax.pmean``
over the axis -- and the ``pmean`` of their gradients, as in every pmap training
loop -- equals the single-device value on the global batch: the mean is taken
over the global count of valid examples, the sum over the global batch, and the
radius is the global one. With ``jax.jit`` over sharded global arrays leave
``axis_name=None``: the batch is global already.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pmm_jax._src import checks
from pmm_jax._src.penalty import _pairwise_margins, _pmm_penalty, _safe_sqrt

Array = jax.Array
PENALTY_REDUCTIONS = ("sum", "mean")


def resolve_alpha(alpha, step) -> Array:
    """``alpha`` as a float32 scalar: a number, or a schedule evaluated at ``step``."""
    if callable(alpha):
        if step is None:
            raise ValueError(
                "`alpha` is a schedule, so `step` is required: pmm_loss(..., step=state.step)."
            )
        alpha = alpha(step)
    if jnp.ndim(alpha) != 0:
        raise ValueError(f"`alpha` must be a scalar or a schedule; got shape {jnp.shape(alpha)}.")
    return jnp.asarray(alpha, jnp.float32)


def pmm_loss(
    logits: Array,
    labels: Array,
    features: Array,
    kernel: Array,
    *,
    alpha: float | Array | Callable[[Array], Array],
    step: Array | int | None = None,
    base_loss: Callable[[Array, Array], Array] = (
        optax.losses.softmax_cross_entropy_with_integer_labels
    ),
    penalty_reduction: str = "sum",
    where: Array | None = None,
    axis_name=None,
    stop_radius_gradient: bool = False,
) -> tuple[Array, dict[str, Array]]:
    r"""Base risk plus ``alpha`` times the PMM penalty, reduced over the batch.

    ``total = mean_i C_i + alpha * reduce_i R_i`` where ``C_i = base_loss(logits,
    labels)`` (cross-entropy by default, Eq. 10; pass
    ``optax.losses.multiclass_hinge_loss`` for the hinge of Eq. 7) and ``R_i``
    is :func:`pmm_jax.pmm_penalty`. ``reduce`` is a sum (the paper's convention,
    default) or a mean, over the valid rows of the (global) batch.

    Args:
      logits: ``float[B, k]``.
      labels: ``int[B]``.
      features: ``float[B, d]`` the head's input.
      kernel: ``float[d, k]`` the head's kernel.
      alpha: a float, or an optax schedule ``step -> alpha`` (then ``step`` is
        required), e.g. :func:`pmm_jax.linear_alpha_schedule`.
      step: the training step at which to evaluate a schedule.
      base_loss: per-example ``(logits, labels) -> float[B]``; default
        ``optax.losses.softmax_cross_entropy_with_integer_labels``.
      penalty_reduction: ``"sum"`` (paper; alpha depends on the batch size) or
        ``"mean"`` (alpha independent of the batch size).
      where: optional ``bool[B]`` mask of real examples (padding excluded from
        every term and from the radius). Padded rows must hold finite values.
      axis_name: mapped axis the batch is split over (see module docstring).
      stop_radius_gradient: treat the radius as a constant.

    Returns:
      ``(total, parts)``: the scalar objective and a dict of float32 scalars for
      logging -- ``base_risk`` (mean C), ``penalty`` (reduced R, before alpha),
      ``alpha``, ``radius`` (r), ``mean_margin`` (mean normalized pairwise margin
      ``d_i / r``) and ``num_examples`` (valid rows, global). Under ``axis_name``
      the values are this device's share; ``lax.pmean`` them to log.

    Example:
      >>> import jax, jax.numpy as jnp, pmm_jax
      >>> feats = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> kernel = jnp.array([[1.0, -1.0], [0.5, 0.0]])
      >>> total, parts = pmm_jax.pmm_loss(feats @ kernel, jnp.array([0, 1]), feats,
      ...                                 kernel, alpha=1e-3)
      >>> sorted(parts)
      ['alpha', 'base_risk', 'mean_margin', 'num_examples', 'penalty', 'radius']
    """
    batch, k = checks.check_logits_labels(logits, labels)
    dim = checks.check_features(features, batch)
    checks.check_kernel(kernel, dim, k)
    checks.check_where(where, batch)
    if penalty_reduction not in PENALTY_REDUCTIONS:
        raise ValueError(
            f"`penalty_reduction` must be one of {PENALTY_REDUCTIONS}; got {penalty_reduction!r}."
        )
    if not callable(base_loss):
        raise TypeError(f"`base_loss` must be callable (logits, labels) -> [B]; got {base_loss!r}.")
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    features, kernel = jnp.asarray(features), jnp.asarray(kernel)
    alpha_value = resolve_alpha(alpha, step)

    mask = jnp.ones((batch,), bool) if where is None else jnp.asarray(where)
    n_local = jnp.sum(mask, dtype=jnp.float32)
    if axis_name is None:
        n_global, num_shards = n_local, 1.0
    else:
        n_global = lax.psum(n_local, axis_name)
        num_shards = lax.psum(1.0, axis_name)
    # Each share is scaled so that its pmean over the shards is the global value.
    mean_scale = num_shards / jnp.maximum(n_global, 1.0)

    base = base_loss(logits, labels)
    if jnp.shape(base) != (batch,):
        raise ValueError(
            f"`base_loss` must return per-example values of shape ({batch},); got "
            f"{jnp.shape(base)}."
        )
    base = jnp.where(mask, base.astype(jnp.float32), 0.0)
    base_risk = jnp.sum(base) * mean_scale

    penalty, r_sq, pair = _pmm_penalty(
        logits,
        labels,
        features,
        kernel,
        where=where,
        axis_name=axis_name,
        stop_radius_gradient=stop_radius_gradient,
    )
    scale = num_shards if penalty_reduction == "sum" else mean_scale
    penalty_reduced = jnp.sum(penalty) * scale

    radius = _safe_sqrt(lax.stop_gradient(r_sq))
    margins = _pairwise_margins(
        lax.stop_gradient(logits),
        labels,
        kernel,
        radius=radius,
        where=where,
        pair=jax.tree.map(lax.stop_gradient, pair),
    )
    parts = {
        "base_risk": base_risk,
        "penalty": penalty_reduced,
        "alpha": alpha_value,
        "radius": radius,
        "mean_margin": jnp.sum(margins) * mean_scale,
        "num_examples": n_global,
    }
    return base_risk + alpha_value * penalty_reduced, parts
