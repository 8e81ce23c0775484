r"""The composed objective: base risk + alpha * PMM, with named reductions.

Three conventions for reducing the per-example penalty ``R_i = r^2 s_i^2``
(``s_i = ||w_{y_i} - w_{m_i}||``, ``r`` the largest feature norm of the global
batch) next to the mean base risk ``mean_i C_i``:

* ``"mean"`` (default): ``mean_i C_i + alpha * mean_i R_i``. The paper's equation
  (§IV, footnote 2: ``L = alpha * sum_i R_i + sum_i C_i``) divided by the batch
  size; batch-size free.
* ``"official"``: ``mean_i C_i + alpha * r^2 * (mean_i s_i)^2``, the authors'
  PyTorch code exactly (``models/mnist.py``: ``mms_loss(mode="mean")`` takes the
  mean of the norms, ``forward`` squares ``radius * mean``; ``trainer.py`` adds
  ``alpha`` times that scalar to the mean cross-entropy -- its ``.sum()`` only
  adds DataParallel replicas). Also batch-size free; ``(mean s)^2 <= mean s^2``,
  so it is at most ``"mean"``. The paper's alphas (1e-5 .. 1e-3) were tuned in
  this convention.
* ``"sum"``: ``mean_i C_i + alpha * sum_i R_i``: ``B`` times ``"mean"``, so its
  alpha depends on the batch size. Kept for those who want it.

Data parallelism. With ``axis_name`` (inside ``pmap`` / ``shard_map``) the
returned scalars are *this device's share*, built so that their ``lax.pmean``
over the axis -- and the ``pmean`` of their gradients, as in every pmap training
loop -- equals the single-device value on the global batch: means are taken
over the global count of valid examples, the radius is the global one, and
``"official"``'s global ``mean_i s_i`` enters through its first-order expansion
around the (stop-gradient) global value (see :func:`official_penalty`). With
``jax.jit`` over sharded global arrays leave ``axis_name=None``: the batch is
global already.

Class parallelism. With ``class_axis_name`` the logits and kernel are this device's slice
of the classes; the base risk is then computed class-parallel for the two built-in base
losses (cross-entropy: a log-sum-exp with ``pmax`` and ``psum`` over the class axis and the
true-class logit from its owner; the multiclass hinge: ``s_y - s_m`` from the two-stage
competitor). The returned values are the same on every device of the class axis, and still
shares over ``axis_name``. Under ``jit`` on an explicit mesh with a sharded head the same
code runs under an internal ``shard_map`` and the global value is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from pmm_jax._src import checks, numerics, sharded
from pmm_jax._src.penalty import unchecked_pairwise_margins, unchecked_pmm_penalty

Array = jax.Array
PENALTY_REDUCTIONS = ("mean", "official", "sum")


def check_nonnegative(value, what: str) -> None:
    """Raises ``ValueError`` if a concrete scalar (alpha, a weight) is negative or not finite."""
    if isinstance(value, jax.core.Tracer):
        return  # a traced value (e.g. alpha passed into jit): nothing to see
    v = float(np.asarray(value))
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be finite and >= 0; got {v!r}.")


def resolve_alpha(alpha, step) -> Array:
    """``alpha`` as a float32 scalar: a number, or a schedule evaluated at ``step``.

    Concrete values are checked (finite, ``>= 0``); a schedule is checked at its
    first value, ``alpha(0)``, when that can be evaluated without a trace.
    """
    if alpha is None:
        raise TypeError(
            "`alpha` is None. Use `alpha=0.0` for the base loss with a zero-weight penalty, "
            "or build the train step with `make_train_step(alpha=None)` to skip the penalty "
            "altogether (a true baseline)."
        )
    if isinstance(alpha, (str, bytes)):
        raise TypeError(f"`alpha` must be a number or a schedule `step -> alpha`; got {alpha!r}.")
    if callable(alpha):
        if step is None:
            raise ValueError(
                "`alpha` is a schedule, so `step` is required: pmm_loss(..., step=state.step)."
            )
        try:
            with jax.ensure_compile_time_eval():  # concrete even while tracing a jit
                first = alpha(0)
        except Exception:  # a schedule that cannot be called eagerly: not checked
            first = None
        if first is not None and jnp.ndim(first) == 0:
            check_nonnegative(first, "The alpha schedule's first value `alpha(0)`")
        alpha = alpha(step)
    try:
        ndim = jnp.ndim(alpha)
    except TypeError as e:
        raise TypeError(
            f"`alpha` must be a number or a schedule `step -> alpha`; got {alpha!r}."
        ) from e
    if ndim != 0:
        raise ValueError(f"`alpha` must be a scalar or a schedule; got shape {jnp.shape(alpha)}.")
    check_nonnegative(alpha, "`alpha`")
    return jnp.asarray(alpha, jnp.float32)


def official_penalty(sq_dist, r_sq, where, n_global, num_shards, axis_name):
    r"""``r^2 (mean_i s_i)^2``, ``s_i = ||w_{y_i} - w_{m_i}||``, over the valid rows.

    ``s_i = sqrt(sq_dist_i)`` with a zero gradient where ``s_i = 0`` (PyTorch's
    ``norm`` subgradient there, and what the authors' code gets), so ``w_y = w_m``
    for some or all rows gives finite gradients.

    Under ``axis_name`` with ``S = sum_i s_i`` over the global batch, ``n`` valid
    rows, ``N`` devices and ``S_d`` device d's part, the share is

        P_d = r^2 * sbar * (2 N S_d / n - sbar),    sbar = stop_gradient(S / n).

    Its mean over devices is ``r^2 sbar^2``; its gradient with respect to a local
    ``s_i``, averaged over devices, is ``2 r^2 sbar / n``; the cotangents of ``r^2``
    (summed over devices by the radius' ``all_gather``) average to ``sbar^2``:
    exactly the value and first derivatives of ``r^2 (S / n)^2``, with no
    differentiation through a collective. (Higher derivatives of the share are
    not those of the global objective.)
    """
    s = jnp.where(where, numerics.safe_sqrt(sq_dist), 0.0)
    s_local = jnp.sum(s)
    if axis_name is None:
        s_bar = s_local / jnp.maximum(n_global, 1.0)
        return r_sq * jnp.square(s_bar)
    count = jnp.maximum(n_global, 1.0)
    s_bar = lax.stop_gradient(lax.psum(s_local, axis_name) / count)
    return r_sq * s_bar * (2.0 * num_shards * s_local / count - s_bar)


def reduce_penalty(
    sq_norms: Array, r_sq: Array, where: Array | None, axis_name, *, reduction: str, counts=None
) -> Array:
    r"""This device's share of the reduced penalty ``P`` from ``s_i^2`` and ``r^2``.

    The one implementation of the three reductions (``pmm_loss``, ``layer_pmm_loss``):
    ``"mean"``: ``mean_i r^2 s_i^2``; ``"official"``: ``r^2 (mean_i s_i)^2``
    (:func:`official_penalty`); ``"sum"``: ``sum_i r^2 s_i^2``; over the valid rows of the
    global batch. With ``axis_name`` the result is a share: its ``pmean`` over the axis (and
    that of its gradients) is the global value.

    Args:
      sq_norms: ``float32[B]`` ``s_i^2`` (``||w_{y_i} - w_{m_i}||^2`` at the head,
        ``||grad_{h_i} xi_i||^2`` at a hidden layer).
      r_sq: ``float32[]`` the global ``r^2`` (already stopped if its gradient is cut).
      where: optional ``bool[B]`` mask of valid rows.
      axis_name: the mapped batch axis, or ``None``.
      reduction: one of :data:`PENALTY_REDUCTIONS`.
      counts: ``numerics.shares(valid, axis_name)`` if already computed.
    """
    valid = jnp.ones(jnp.shape(sq_norms), bool) if where is None else where
    n_global, num_shards, mean_scale = (
        numerics.shares(valid, axis_name) if counts is None else counts
    )
    if reduction == "official":
        return official_penalty(sq_norms, r_sq, valid, n_global, num_shards, axis_name)
    penalty = sq_norms * r_sq
    if where is not None:
        penalty = jnp.where(where, penalty, 0.0)
    scale = num_shards if reduction == "sum" else mean_scale
    return jnp.sum(penalty) * scale


def base_risk_share(base: Array, valid: Array, counts) -> Array:
    """This device's share of ``mean_i C_i`` (float32) over the valid rows.

    ``base``: the per-example ``C_i`` (``[B]``, checked); ``counts``:
    ``numerics.shares(valid, axis_name)``.
    """
    check_base(base, valid.shape[0])
    return jnp.sum(jnp.where(valid, base.astype(jnp.float32), 0.0)) * counts[2]


def check_loss_options(penalty_reduction, base_loss) -> None:
    """Raises unless ``penalty_reduction`` is known and ``base_loss`` is callable."""
    if penalty_reduction not in PENALTY_REDUCTIONS:
        raise ValueError(
            f"`penalty_reduction` must be one of {PENALTY_REDUCTIONS}; got {penalty_reduction!r}."
        )
    if not callable(base_loss):
        raise TypeError(f"`base_loss` must be callable (logits, labels) -> [B]; got {base_loss!r}.")


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
    penalty_reduction: str = "mean",
    where: Array | None = None,
    axis_name=None,
    class_axis_name=None,
    stop_radius_gradient: bool = False,
) -> tuple[Array, dict[str, Array]]:
    r"""Base risk plus ``alpha`` times the PMM penalty, reduced over the batch.

    ``total = mean_i C_i + alpha * P`` where ``C_i = base_loss(logits, labels)``
    (cross-entropy by default, Eq. 10; pass ``optax.losses.multiclass_hinge_loss``
    for the hinge of Eq. 7), ``R_i = r^2 ||w_{y_i} - w_{m_i}||^2`` is
    :func:`pmm_jax.pmm_penalty` and, over the valid rows of the (global) batch,

    =====================  ==========================================  ===============
    ``penalty_reduction``  ``P``                                       batch-size free
    =====================  ==========================================  ===============
    ``"mean"`` (default)   ``mean_i R_i`` (the paper's equation / B)   yes
    ``"official"``         ``r^2 (mean_i ||w_{y_i} - w_{m_i}||)^2``    yes
    ``"sum"``              ``sum_i R_i`` (``B`` times ``"mean"``)        no
    =====================  ==========================================  ===============

    ``"official"`` is the authors' PyTorch arithmetic exactly (the mean of the
    norms, squared); the paper's alphas (1e-5 .. 1e-3) belong to it. ``"mean"``
    is the paper's written objective and is at least as strong
    (``(mean s)^2 <= mean s^2``); ``"sum"`` is ``B`` times stronger.

    Args:
      logits: ``float[B, k]``.
      labels: ``int[B]``.
      features: ``float[B, d]`` the head's input.
      kernel: ``float[d, k]`` the head's kernel (flax ``nn.Dense`` layout).
        It must be the kernel that produced ``logits`` (``logits = features @ kernel
        + bias``), in this layout: a PyTorch ``Linear.weight`` is ``[k, d]``, pass its
        transpose. A transposed kernel fails the shape check unless ``d == k``; for a
        square head no shape check can tell, and the result is silently wrong: check
        once with ``validate_batch(logits, labels, features=, kernel=, bias=)``.
      alpha: a float ``>= 0``, or an optax schedule ``step -> alpha`` (then
        ``step`` is required), e.g. :func:`pmm_jax.linear_alpha_schedule`.
        ``None`` is an error: use ``0.0``, or ``make_train_step(alpha=None)``.
      step: the training step at which to evaluate a schedule.
      base_loss: per-example ``(logits, labels) -> float[B]``; default
        ``optax.losses.softmax_cross_entropy_with_integer_labels``.
      penalty_reduction: ``"mean"`` (default), ``"official"`` or ``"sum"`` (table).
      where: optional ``bool[B]`` mask of real examples (padding excluded from
        every term and from the radius). Padded rows must hold finite values.
      axis_name: mapped axis the batch is split over (see module docstring).
      class_axis_name: mapped axis the classes are split over (``logits`` and ``kernel``
        hold this device's slice; see :func:`pmm_jax.pmm_penalty`). ``base_loss`` must
        then be one of the two built-in losses above (others raise ``ValueError``:
        compute your own base risk and add ``alpha * pmm_penalty(...)``).
      stop_radius_gradient: treat the radius as a constant.

    Returns:
      ``(total, parts)``: the scalar objective and a dict of float32 scalars for
      logging -- ``base_risk`` (mean C), ``penalty`` (``P``, before alpha),
      ``alpha``, ``radius`` (r), ``mean_margin`` and ``min_margin`` (mean and
      minimum normalized pairwise margin ``d_i / r``) and ``num_examples`` (valid
      rows, global). Under ``axis_name`` the values are this device's share;
      ``lax.pmean`` them to log (``radius``, ``min_margin`` and ``num_examples``
      are global already, the same on every device).

    Example:
      >>> import jax, jax.numpy as jnp, pmm_jax
      >>> feats = jnp.array([[1.0, 0.0], [0.0, 2.0]])           # r = 2
      >>> kernel = jnp.array([[1.0, -1.0], [0.5, 0.0]])         # ||w_0 - w_1||^2 = 4.25
      >>> logits, labels = feats @ kernel, jnp.array([0, 1])
      >>> for reduction in ("mean", "official", "sum"):
      ...     _, parts = pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1e-3,
      ...                                 penalty_reduction=reduction)
      ...     print(reduction, round(float(parts["penalty"]), 4))
      mean 17.0
      official 17.0
      sum 34.0

    References:
      Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural
      Networks", §IV; the authors' code, github.com/berryweinst/pairwise-margin-maximization.
    """
    head = sharded.HeadAxes.from_class_axis_name(class_axis_name)
    batch, k = checks.check_logits_labels(logits, labels, class_parallel=head is not None)
    dim = checks.check_features(features, batch)
    checks.check_kernel(kernel, dim, k, class_parallel=head is not None)
    checks.check_where(where, batch)
    check_loss_options(penalty_reduction, base_loss)
    if head is not None:
        sharded.check_base_loss(base_loss)
    arrays = {
        "logits": jnp.asarray(logits),
        "labels": jnp.asarray(labels),
        "features": jnp.asarray(features),
        "kernel": jnp.asarray(kernel),
        "where": None if where is None else jnp.asarray(where),
    }
    kw = dict(
        alpha=resolve_alpha(alpha, step),
        base_loss=base_loss,
        penalty_reduction=penalty_reduction,
        stop_radius_gradient=stop_radius_gradient,
    )
    layout = None if head is not None else sharded.explicit_layout(**arrays)
    if layout is None:
        return _pmm_loss(**arrays, axis_name=axis_name, head=head, **kw)
    return _pmm_loss_explicit(layout, arrays, axis_name=axis_name, **kw)


def check_base(base, batch: int) -> None:
    """Raises ``ValueError`` unless ``base_loss`` returned per-example values ``[B]``."""
    if jnp.shape(base) != (batch,):
        raise ValueError(
            f"`base_loss` must return per-example values of shape ({batch},); got "
            f"{jnp.shape(base)}."
        )


def _pmm_loss(
    logits,
    labels,
    features,
    kernel,
    *,
    where,
    alpha,
    base_loss,
    penalty_reduction,
    axis_name,
    stop_radius_gradient,
    head=None,
    base=None,
):
    """Unchecked :func:`pmm_loss` on this device's arrays (``base``: precomputed ``C_i``)."""
    batch = logits.shape[0]
    valid = jnp.ones((batch,), bool) if where is None else where
    counts = numerics.shares(valid, axis_name)
    n_global, _, mean_scale = counts

    _, r_sq, pair = unchecked_pmm_penalty(
        logits,
        labels,
        features,
        kernel,
        where=where,
        axis_name=axis_name,
        stop_radius_gradient=stop_radius_gradient,
        head=head,
    )
    if base is None:
        if head is not None and head.logit_classes:
            base = sharded.base_loss(base_loss, logits, labels, pair[1], head.logit_classes)
        else:
            base = base_loss(logits, labels)
    base_risk = base_risk_share(base, valid, counts)
    penalty_reduced = reduce_penalty(
        pair[2], r_sq, where, axis_name, reduction=penalty_reduction, counts=counts
    )

    radius = numerics.safe_sqrt(lax.stop_gradient(r_sq))
    margins = unchecked_pairwise_margins(
        lax.stop_gradient(logits),
        labels,
        kernel,
        radius=radius,
        where=where,
        pair=jax.tree.map(lax.stop_gradient, pair),
        head=head,
    )
    parts = {
        "base_risk": base_risk,
        "penalty": penalty_reduced,
        "alpha": alpha,
        "radius": radius,
        "mean_margin": jnp.sum(margins) * mean_scale,
        "min_margin": numerics.masked_min(margins, valid, axis_name),
        "num_examples": n_global,
    }
    return base_risk + alpha * penalty_reduced, parts


# The parts that are shares under axis_name (pmean'd); the others are global already.
_SHARES = ("base_risk", "penalty", "mean_margin")


def _pmm_loss_explicit(layout, arrays, *, axis_name, base_loss, **kw):
    """:func:`pmm_loss` of a head sharded on an explicit mesh, under ``shard_map``.

    Each device computes its share over the layout's batch axes (the data-parallel
    arithmetic above); their ``pmean`` is the global value, as with ``jit`` elsewhere. A
    custom ``base_loss`` over class-sharded logits is evaluated on the global arrays first
    (XLA partitions it) and enters as per-example values.
    """
    if layout.head.logit_classes and not sharded.is_builtin_base_loss(base_loss):
        arrays = {**arrays, "base": base_loss(arrays["logits"], arrays["labels"])}
        check_base(arrays["base"], arrays["labels"].shape[0])

    def per_device(head, batch, **local):
        axes = sharded.axis_names(axis_name) + batch
        total, parts = _pmm_loss(
            **local, axis_name=axes or None, head=head, base_loss=base_loss, **kw
        )
        if not batch:
            return total, parts
        total = lax.pmean(total, batch)
        for name, value in parts.items():
            varying = tuple(a for a in batch if a in numerics.varying_axes(value))
            if varying:  # shares are averaged; the global values only need their type fixed
                reduce = lax.pmean if name in _SHARES else lax.pmax
                parts[name] = reduce(value, varying)
        return total, parts

    return sharded.run_explicit(layout, per_device, arrays, sharded.P())
