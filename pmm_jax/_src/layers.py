r"""PMM at hidden layers: the penalty on any layer's features, through the layers above it.

The paper penalizes the last layer only and leaves "PMM at other layers in the deep
architecture" to further study (§V). This module takes the step for any layer whose
output ``h`` reaches the logits through a differentiable, per-example function ``fn``.

Notation: a layer's features ``h: [B, ...]`` (any trailing shape), the rest of the
network ``fn: h -> s = fn(h): [B, k]``, labels ``y``, the competitor
``m_i = argmax_{j != y_i} s_ij`` (no gradient through the choice) and the margin gap
``xi_i(h) = s_{i, y_i}(h) - s_{i, m_i}(h)``.

* penalty      ``R_i = r^2 ||grad_{h_i} xi_i||^2``, ``r = max_i ||h_i||`` over the
                global batch (the norm over all non-batch axes)
* first-order  ``d_i = xi_i / ||grad_{h_i} xi_i||``, the distance from ``h_i`` to the
  margin        boundary between ``y_i`` and ``m_i`` of ``fn`` linearized at ``h_i``

One VJP gives every row's gradient. Write ``J_i = d s_i / d h_i`` (``[k, |h_i|]``) for
row ``i``'s Jacobian. ``fn`` is *per-example* when ``s_i`` depends on ``h_i`` only, so
the Jacobian of the whole batch is block-diagonal: ``d s_i / d h_j = 0`` for ``i != j``.
The pullback of ``fn`` over the batch with the cotangent ``c`` (one row ``c_i`` per
example) is ``g_j = sum_i c_i^T d s_i / d h_j = c_j^T J_j``. With
``c_i = e_{y_i} - e_{m_i}`` (``one_hot(y) - one_hot(m)``) that is
``g_i = J_i^T (e_{y_i} - e_{m_i}) = grad_{h_i} s_{y_i} - grad_{h_i} s_{m_i}
= grad_{h_i} xi_i``, for every ``i`` at once: one extra backward pass of the layers
between ``h`` and the logits, no Jacobian, no loop over the batch.

For a Dense head, ``s = h @ W + b``, ``J_i = W^T`` and
``grad_{h_i} xi_i = w_{y_i} - w_{m_i}``: ``R_i`` is exactly :func:`pmm_jax.pmm_penalty`
and ``d_i`` the pairwise distance of Eq. 8 (:func:`pmm_jax.pairwise_margins`). For a
deeper ``fn`` the gradient depends on ``h_i``, and ``d_i`` is the first-order margin of
Elsayed et al. (2018), whose code takes the gradient of the class-score difference with
respect to each layer's activations the same way; here it is used in PMM's form (the
squared gradient norm scaled by ``r^2``, so that scaling the features does not pay).

References:
  Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural Networks",
  arXiv:2110.04519, §V. Elsayed, Krishnan, Mobahi, Regan, Bengio, "Large Margin Deep
  Networks for Classification", NeurIPS 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pmm_jax._src import checks, losses, numerics, penalty

Array = jax.Array


def layer_pmm_penalty(
    fn: Callable[[Array], Array],
    features: Array,
    labels: Array,
    *,
    logits: Array | None = None,
    where: Array | None = None,
    axis_name=None,
    stop_radius_gradient: bool = False,
) -> Array:
    r"""Per-example PMM penalty at a hidden layer: ``R_i = r^2 ||grad_{h_i} xi_i||^2``.

    ``xi_i(h) = s_{i, y_i}(h) - s_{i, m_i}(h)`` with ``s = fn(h)`` and ``m_i`` the
    competitor class (:func:`pmm_jax.competitor_classes` of ``logits``, or of ``fn(h)``
    when they are not given); ``r = max_i ||h_i||`` with the norm over all non-batch axes,
    over the valid rows of the global batch (:func:`pmm_jax.feature_radius`'s rule).
    For a Dense head ``fn(h) = h @ W + b`` this is exactly
    ``pmm_penalty(logits, labels, h, W)``, since ``grad_{h_i} xi_i = w_{y_i} - w_{m_i}``.

    How. All rows' gradients come from one ``jax.vjp`` of ``fn`` over the whole batch with
    the cotangent ``one_hot(y) - one_hot(m)``: row ``i`` of the pullback is
    ``J_i^T (e_{y_i} - e_{m_i}) = grad_{h_i} xi_i``, where ``J_i = d s_i / d h_i``, *provided
    fn is per-example* (``s_i`` depends on ``h_i`` alone; see the module docstring). Cost:
    one forward and one backward pass of the layers between ``h`` and the logits, and, when
    the penalty is differentiated (training), the second-order backward through them.

    What ``fn`` must be.

    * A pure function of ``h`` (it is traced; close over the parameters, e.g.
      ``lambda h: model.apply(variables, h, method=Model.tail)``), differentiable in ``h``;
      reverse-mode twice when training (a ``jax.custom_vjp`` inside ``fn`` defines only the
      first derivative).
    * Per-example: row ``i`` of ``fn(h)`` depends on row ``i`` of ``h`` only. Not allowed
      inside ``fn``: BatchNorm with batch statistics, attention or pooling across the
      batch, anything that mixes rows -- the pullback would then add other rows'
      gradients into row ``i``, silently. BatchNorm: run ``fn`` with the statistics of the
      main forward pass held as constants, i.e. the BN layers in inference mode with the
      batch's mean and variance (``lax.stop_gradient`` of those computed in the main pass)
      in place of the running averages; then each row is normalized by fixed numbers and
      the rows stay independent. The main pass still trains BN as usual. Dropout: use the
      same mask as the main pass, or none.
    * Under ``pmap``/``shard_map`` with ``axis_name``, ``fn`` runs on this device's rows
      only, and must not communicate over the batch axis.

    Gradients flow through the VJP (second order: into ``h`` and everything ``fn`` closes
    over, e.g. its parameters) and, unless ``stop_radius_gradient``, through ``r`` into the
    max-norm row(s); never through the choice of ``m_i``.

    Numerics. ``fn`` and its VJP run in ``fn``'s own dtype (the model's); the gradient is
    upcast to float32 (float64 under x64) before its norm, and the radius and the penalty
    are float32.

    Args:
      fn: ``h -> logits``: ``float[B, ...] -> float[B, k]``, pure and per-example (above).
      features: ``float[B, ...]`` the layer's output ``h`` (any trailing shape, e.g.
        ``[B, H, W, C]``).
      labels: ``int[B]`` true classes.
      logits: optional ``float[B, k]`` the model's logits, to pick ``m_i`` from (the same
        shape as ``fn(features)``); default: ``fn(features)``.
      where: optional ``bool[B]``: ``False`` rows (padding) give 0 and are left out of
        ``r``. They must hold finite values.
      axis_name: mapped axis (``pmap``/``shard_map``) the batch is split over; ``r`` is
        then the collective max over it. ``None`` for one device and for ``jit`` over
        sharded global arrays (the batch is global there).
      stop_radius_gradient: if True, treat ``r`` as a constant.

    Returns:
      ``float32[B]`` penalties, ``0`` on masked rows.

    Raises:
      TypeError, ValueError: at trace time, naming the argument: ``fn`` not callable or
        not returning ``float[B, k]`` logits with the batch of ``features``; ``logits``
        of another shape; bad ``features``, ``labels`` or ``where``.

    Example:
      >>> import jax, jax.numpy as jnp, pmm_jax
      >>> a = jnp.array([[1.0, 0.0], [0.0, 2.0]])        # a hidden layer, then a head
      >>> w = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> fn = lambda h: jnp.tanh(h @ a) @ w              # per-example: row i from h_i
      >>> h = jnp.array([[0.0, 0.0], [3.0, 4.0]])          # r = 5
      >>> pen = pmm_jax.layer_pmm_penalty(fn, h, jnp.array([0, 1]))
      >>> [round(float(p), 2) for p in pen]  # row 0: 25 * ||(1, -2)||^2; row 1: tanh flat
      [125.0, 0.0]

    References:
      Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural Networks",
      Eq. 9 and §V; Elsayed et al., "Large Margin Deep Networks for Classification",
      NeurIPS 2018.
    """
    batch = checks.check_layer_features(features)
    checks.check_labels(labels, batch)
    checks.check_where(where, batch)
    if logits is not None:
        checks.check_logits_labels(logits, labels)
    terms = layer_terms(fn, features, labels, logits=logits, where=where, axis_name=axis_name)
    r_sq = lax.stop_gradient(terms.r_sq) if stop_radius_gradient else terms.r_sq
    out = terms.sq_grad * r_sq
    return out if where is None else jnp.where(where, out, 0.0)


class LayerTerms(NamedTuple):
    """What one layer contributes, float32: ``||grad_{h_i} xi_i||^2``, ``r^2``, ``xi_i``."""

    sq_grad: Array  # [B]
    r_sq: Array  # [], the global r^2
    gap: Array  # [B], xi_i of fn(features)


def layer_terms(
    fn,
    features,
    labels,
    *,
    logits=None,
    competitors=None,
    where=None,
    axis_name=None,
    name: str = "",
) -> LayerTerms:
    """``||grad_{h_i} xi_i||^2``, ``r^2`` and ``xi_i`` of one layer (one VJP of ``fn``).

    ``logits``: the model's (checked: the shape of ``fn(features)``). ``competitors``:
    ``int[B]`` when already chosen (one choice for several layers), else picked from
    ``logits`` or ``fn(features)``. ``name`` prefixes the argument names in errors
    (``"layers[1] "``). ``features``, ``labels``, ``logits`` and ``where`` are checked by
    the caller.
    """
    if not callable(fn):
        raise TypeError(f"`{name}fn` must be a function h -> logits [B, k]; got {fn!r}.")
    features = jnp.asarray(features)
    out, pullback = jax.vjp(fn, features)
    k = checks.check_layer_output(out, jnp.shape(features), f"{name}fn")
    if logits is not None and jnp.shape(logits) != jnp.shape(out):
        raise ValueError(
            f"`logits` {jnp.shape(logits)} and `{name}fn(features)` {jnp.shape(out)} must have "
            f"the same shape: `{name}fn` maps the layer's features to the model's logits."
        )
    if competitors is None:
        competitors = penalty.competitor_classes(out if logits is None else logits, labels)
    labels = jnp.asarray(labels).astype(jnp.int32)
    # One pullback for the batch: row i gets J_i^T (e_{y_i} - e_{m_i}) = grad_{h_i} xi_i.
    # The choice of m_i is an integer: no gradient flows through it.
    cotangent = jax.nn.one_hot(labels, k, dtype=out.dtype) - jax.nn.one_hot(
        lax.stop_gradient(competitors), k, dtype=out.dtype
    )
    if where is not None:
        cotangent = jnp.where(where[:, None], cotangent, jnp.zeros_like(cotangent))
    (grad,) = pullback(cotangent)
    acc = numerics.acc_dtype(grad.dtype)
    sq_grad = jnp.sum(jnp.square(grad.astype(acc)), axis=tuple(range(1, grad.ndim)))
    scores = out.astype(numerics.acc_dtype(out.dtype))
    gap = numerics.pick(scores, labels) - numerics.pick(scores, competitors)
    r_sq = numerics.radius_sq(features, where, axis_name)
    return LayerTerms(sq_grad, r_sq, gap)


def layer_pmm_loss(
    logits: Array,
    labels: Array,
    layers: Sequence[tuple],
    *,
    alpha: float | Array | Callable[[Array], Array],
    step: Array | int | None = None,
    base_loss: Callable[[Array, Array], Array] = (
        optax.losses.softmax_cross_entropy_with_integer_labels
    ),
    penalty_reduction: str = "mean",
    where: Array | None = None,
    axis_name=None,
    stop_radius_gradient: bool = False,
) -> tuple[Array, dict[str, Array]]:
    r"""Base risk plus ``alpha`` times a weighted sum of PMM penalties at several layers.

    ``total = mean_i C_i + alpha * sum_l weight_l * P_l``, where ``C_i = base_loss(logits,
    labels)`` and ``P_l`` is layer ``l``'s per-example terms
    (:func:`pmm_jax.layer_pmm_penalty`, with ``s_i = ||grad_{h_i} xi_i||`` in place of
    ``||w_{y_i} - w_{m_i}||``) reduced by ``penalty_reduction`` exactly as
    :func:`pmm_jax.pmm_loss` reduces them (one implementation for both):

    =====================  ==========================================
    ``penalty_reduction``  ``P_l``
    =====================  ==========================================
    ``"mean"`` (default)   ``r_l^2 mean_i s_i^2`` = ``mean_i R_i``
    ``"official"``         ``r_l^2 (mean_i s_i)^2``
    ``"sum"``              ``sum_i R_i``
    =====================  ==========================================

    Summing over layers with weights is what Elsayed et al. (2018) do with their margin
    loss. With one layer ``(lambda h: h @ W + b, h)`` this is ``pmm_loss(logits, labels, h,
    W, ...)``, values and gradients. The competitor ``m_i`` is picked once, from
    ``logits``, and shared by all layers.

    The layers are ``(fn, features)`` pairs rather than a params path (as
    :func:`pmm_jax.pmm_penalty_from_params` takes) because the part of the network above
    a hidden layer is the model's business: the caller builds ``fn`` (e.g. with Flax,
    ``lambda h: model.apply(variables, h, method=Model.tail)``).

    Args:
      logits: ``float[B, k]`` the model's logits (the base loss, and ``m_i``).
      labels: ``int[B]``.
      layers: a non-empty sequence of ``(fn, features)`` or ``(fn, features, weight)``:
        ``fn`` maps ``features: float[B, ...]`` to logits ``float[B, k]``, pure and
        per-example (see :func:`pmm_jax.layer_pmm_penalty`); ``weight`` a scalar ``>= 0``
        (default 1).
      alpha: a float ``>= 0`` or an optax schedule ``step -> alpha`` (then ``step`` is
        required); as in :func:`pmm_jax.pmm_loss`.
      step: the training step at which to evaluate a schedule.
      base_loss: per-example ``(logits, labels) -> float[B]``; default cross-entropy.
      penalty_reduction: ``"mean"`` (default), ``"official"`` or ``"sum"`` (table).
      where: optional ``bool[B]`` mask of real examples (padding counts for nothing and is
        left out of every radius).
      axis_name: mapped axis the batch is split over: each radius is global and the values
        are this device's shares, whose ``lax.pmean`` (and that of their gradients) is the
        single-device value on the global batch, as in :func:`pmm_jax.pmm_loss`.
      stop_radius_gradient: treat every radius as a constant.

    Returns:
      ``(total, parts)``: the scalar objective and float32 values for logging --
      ``base_risk``, ``penalty`` (``sum_l weight_l P_l``, before alpha), ``alpha``,
      ``layer_penalties`` (``[L]``, each ``P_l`` before weight and alpha),
      ``layer_radii`` (``[L]``, each ``r_l``), ``layer_mean_margins`` and
      ``layer_min_margins`` (``[L]``, the first-order margin ``xi_i / ||grad xi_i||``
      normalized by ``r_l``) and ``num_examples``. Under ``axis_name``, ``base_risk``,
      ``penalty``, ``layer_penalties`` and ``layer_mean_margins`` are shares (``pmean``
      them); the others are global.

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> h1 = jnp.array([[1.0, 0.0], [0.0, 2.0]])   # a hidden layer: r_1^2 = 4
      >>> a = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> w = jnp.array([[1.0, -1.0], [0.5, 0.0]])   # ||w_0 - w_1||^2 = 4.25
      >>> h2 = h1 @ a                                 # the head's input: r_2^2 = 4
      >>> logits, labels = h2 @ w, jnp.array([0, 1])
      >>> layers = [(lambda h: h @ w, h2), (lambda h: (h @ a) @ w, h1, 0.5)]
      >>> total, parts = pmm_jax.layer_pmm_loss(logits, labels, layers, alpha=1e-3)
      >>> parts["layer_penalties"].tolist()          # 4 * 4.25; 4 * ||a (w_0 - w_1)||^2
      [17.0, 65.0]
      >>> float(parts["penalty"])                     # 17 + 0.5 * 65
      49.5

    References:
      Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural Networks",
      §IV-V; Elsayed et al., "Large Margin Deep Networks for Classification", NeurIPS 2018.
    """
    batch, _ = checks.check_logits_labels(logits, labels)
    checks.check_where(where, batch)
    losses.check_loss_options(penalty_reduction, base_loss)
    parsed = _parse_layers(layers, batch)
    alpha = losses.resolve_alpha(alpha, step)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    where = None if where is None else jnp.asarray(where)
    valid = jnp.ones((batch,), bool) if where is None else where
    counts = numerics.shares(valid, axis_name)
    base_risk = losses.base_risk_share(base_loss(logits, labels), valid, counts)
    competitors = penalty.competitor_classes(logits, labels)

    reduced, radii, mean_margins, min_margins = [], [], [], []
    for i, (fn, features, _) in enumerate(parsed):
        terms = layer_terms(
            fn,
            features,
            labels,
            logits=logits,
            competitors=competitors,
            where=where,
            axis_name=axis_name,
            name=f"layers[{i}] ",
        )
        r_sq = lax.stop_gradient(terms.r_sq) if stop_radius_gradient else terms.r_sq
        reduced.append(
            losses.reduce_penalty(
                terms.sq_grad,
                r_sq,
                where,
                axis_name,
                reduction=penalty_reduction,
                counts=counts,
            )
        )
        radius = numerics.safe_sqrt(lax.stop_gradient(r_sq))
        margins = numerics.signed_distance(
            lax.stop_gradient(terms.gap),
            lax.stop_gradient(terms.sq_grad),
            radius=radius,
            where=where,
        )
        radii.append(radius)
        mean_margins.append(jnp.sum(margins) * counts[2])
        min_margins.append(numerics.masked_min(margins, valid, axis_name))
    weighted = sum(weight * p for (_, _, weight), p in zip(parsed, reduced, strict=True))
    parts = {
        "base_risk": base_risk,
        "penalty": weighted,
        "alpha": alpha,
        "layer_penalties": jnp.stack(reduced),
        "layer_radii": jnp.stack(radii),
        "layer_mean_margins": jnp.stack(mean_margins),
        "layer_min_margins": jnp.stack(min_margins),
        "num_examples": counts[0],
    }
    return base_risk + alpha * weighted, parts


def _parse_layers(layers, batch: int) -> list[tuple]:
    """``layers`` -> ``[(fn, features, weight as float32[])]``, each checked."""
    if isinstance(layers, tuple) and len(layers) in (2, 3) and callable(layers[0]):
        raise TypeError(
            "`layers` must be a sequence of (fn, features[, weight]) tuples; got one tuple. "
            "Wrap it in a list: layers=[(fn, features)]."
        )
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(
            f"`layers` must be a sequence of (fn, features[, weight]) tuples; got {layers!r}."
        ) from None
    if not items:
        raise ValueError(
            "`layers` is empty: give at least one (fn, features) pair (for the base loss "
            "alone, call it directly)."
        )
    parsed = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(
                f"`layers[{i}]` must be (fn, features) or (fn, features, weight); got {item!r}."
            )
        fn, features, *rest = item
        if not callable(fn):
            raise TypeError(f"`layers[{i}]`'s fn must be a function h -> logits; got {fn!r}.")
        checks.check_layer_features(features, batch, f"layers[{i}] features")
        weight = rest[0] if rest else 1.0
        if jnp.ndim(weight) != 0:
            raise ValueError(
                f"`layers[{i}]`'s weight must be a scalar; got shape {jnp.shape(weight)}."
            )
        losses.check_nonnegative(weight, f"`layers[{i}]`'s weight")
        parsed.append((fn, features, jnp.asarray(weight, jnp.float32)))
    return parsed
