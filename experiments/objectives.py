r"""Rival training objectives to compare PMM against, with one per-example signature.

Every objective is a pure JAX function

    ``fn(logits, labels, *, features=None, kernel=None, bias=None, **hyper) -> float32[B]``

* ``logits``: ``float[B, k]`` the model's scores ``z = phi @ W + b``;
* ``labels``: ``int[B]`` true classes;
* ``features``: ``float[B, d]`` the head's input ``phi`` (``aux["pre_logits"]``);
* ``kernel``: ``float[d, k]`` the head's kernel ``W`` (flax ``nn.Dense`` layout,
  ``kernel[:, j] = w_j``); ``bias``: ``float[k]`` or ``None``.

and returns the **per-example** loss (the caller reduces, masks padding and adds PMM
if asked). Only :func:`am_softmax` reads ``features``/``kernel`` and only
:func:`large_margin` reads ``kernel``; the others ignore the three (see
:data:`NEEDS_HEAD`). Losses are computed in float32 whatever the input dtype.

The registry :data:`OBJECTIVES` maps a name to ``(fn, {hyperparameter: default})``;
:func:`get_objective` binds hyperparameters and checks their names;
:data:`DEFAULT_GRIDS` gives each objective a validation grid of :data:`GRID_SIZE`
points (one point, the defaults, for the objectives without hyperparameters), so that
a comparison study tunes every method over the same number of runs.

Decisions a caller must know:

* :func:`large_margin` **replaces** cross-entropy (Elsayed et al. 2018 train with
  their margin hinge as the loss itself, and the PMM paper, §I, describes it as "an
  alternative loss function"); it is the hinge ``max(0, gamma - d_i)`` on the signed
  feature-space distance ``d_i`` of :func:`pmm_jax.pairwise_margins`, so ``gamma`` is
  in feature units (compare it with the ``radius`` metric the trainer logs).
* :func:`am_softmax` trains on cosine logits ``s (cos theta - m 1[j = y])`` computed
  from ``features`` and ``kernel``; the model's own ``logits`` are not used. The
  prediction that matches its training is ``argmax_j cos theta_j``
  (:func:`cosine_logits`), which differs from ``argmax_j z_j`` when the columns of
  ``W`` have different norms or ``b != 0``: evaluate it with :func:`cosine_logits`.
* Normalizations (:func:`logit_norm`, :func:`am_softmax`) divide by
  ``max(||v||, NORM_EPS)``: finite everywhere, ``0`` for ``v = 0``; near ``v = 0``
  the derivative of ``v / max(||v||, eps)`` is ``I / eps`` (large: normalizing
  a vector that is nearly zero is ill-conditioned in any form).

References:
  Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2016
  (label smoothing). Pereyra et al., "Regularizing Neural Networks by Penalizing
  Confident Output Distributions", 2017 (confidence penalty). Wei et al., "Mitigating
  Neural Network Overconfidence with Logit Normalization", ICML 2022 (LogitNorm).
  Wang et al., "Additive Margin Softmax for Face Verification", 2018; Wang et al.,
  "CosFace", CVPR 2018. Elsayed et al., "Large Margin Deep Networks for
  Classification", NeurIPS 2018. Weinstein, Fine, Hel-Or, "Pairwise Margin
  Maximization for Deep Neural Networks", arXiv:2110.04519.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

import pmm_jax

Array = jax.Array
Objective = Callable[..., Array]

# Floor of the norms divided by in logit_norm and am_softmax (see the module docstring).
NORM_EPS = 1e-6


# --- checks ------------------------------------------------------------------------------


def _check_logits_labels(logits, labels) -> tuple[int, int]:
    shape, lshape = jnp.shape(logits), jnp.shape(labels)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"`logits` must be [B, k] with k >= 2; got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise TypeError(f"`logits` must be floating; got {jnp.result_type(logits)}.")
    if lshape != shape[:1]:
        raise ValueError(f"`labels` must be [B] = {shape[:1]} like `logits` {shape}; got {lshape}.")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"`labels` must be integer; got {jnp.result_type(labels)}.")
    return shape


def _check_head(name, logits, *, features=None, kernel=None, need_features=True) -> None:
    batch, k = jnp.shape(logits)
    if kernel is None or (need_features and features is None):
        needed = "`features` and `kernel`" if need_features else "`kernel`"
        raise ValueError(f"{name} needs {needed} (the head's input and kernel); got None.")
    kshape = jnp.shape(kernel)
    if len(kshape) != 2 or kshape[1] != k:
        raise ValueError(f"`kernel` must be [d, k] with k = {k} (from `logits`); got {kshape}.")
    if need_features:
        fshape = jnp.shape(features)
        if fshape != (batch, kshape[0]):
            raise ValueError(
                f"`features` must be [B, d] = {(batch, kshape[0])} (B from `logits` "
                f"{jnp.shape(logits)}, d from `kernel` {kshape}); got {fshape}."
            )


def _f32(x) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _normalize(v: Array, axis: int) -> Array:
    """``v / max(||v||, NORM_EPS)`` along ``axis``; finite gradient at ``v = 0``."""
    sq = jnp.sum(jnp.square(v), axis=axis, keepdims=True)
    return v * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS**2))


def _ce(logits: Array, labels: Array) -> Array:
    return optax.losses.softmax_cross_entropy_with_integer_labels(_f32(logits), labels)


# --- the objectives ------------------------------------------------------------------------


def cross_entropy(logits, labels, *, features=None, kernel=None, bias=None) -> Array:
    r"""Softmax cross-entropy, the baseline: ``CE_i = logsumexp(z_i) - z_{i, y_i}``.

    Args:
      logits: ``float[B, k]``. labels: ``int[B]``.
      features, kernel, bias: ignored (uniform signature).

    Returns:
      ``float32[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))[0]), 4)  # log 4
      1.3863
    """
    del features, kernel, bias
    _check_logits_labels(logits, labels)
    return _ce(logits, labels)


def label_smoothing(
    logits, labels, *, features=None, kernel=None, bias=None, epsilon: float = 0.1
) -> Array:
    r"""Cross-entropy against smoothed targets ``q = (1 - eps) onehot(y) + eps / k``.

    ``L_i = -sum_j q_ij log softmax(z_i)_j`` (``optax.smooth_labels`` +
    ``optax.losses.softmax_cross_entropy``); ``epsilon = 0`` is cross-entropy.

    Args:
      epsilon: smoothing mass in ``[0, 1]``.
      logits, labels, features, kernel, bias: as :func:`cross_entropy`.

    Returns:
      ``float32[B]``.

    References:
      Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, §7.
    """
    del features, kernel, bias
    _, k = _check_logits_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, k, dtype=jnp.float32), epsilon)
    return optax.losses.softmax_cross_entropy(_f32(logits), targets)


def confidence_penalty(
    logits, labels, *, features=None, kernel=None, bias=None, beta: float = 0.1
) -> Array:
    r"""Cross-entropy minus ``beta`` times the entropy of the prediction.

    ``L_i = CE_i - beta H(p_i)`` with ``p_i = softmax(z_i)``,
    ``H(p) = -sum_j p_j log p_j``: confident (low-entropy) outputs are penalized.
    ``beta = 0`` is cross-entropy.

    Args:
      beta: penalty weight, ``>= 0``.
      logits, labels, features, kernel, bias: as :func:`cross_entropy`.

    Returns:
      ``float32[B]``.

    References:
      Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output
      Distributions", ICLR workshop 2017.
    """
    del features, kernel, bias
    _check_logits_labels(logits, labels)
    z = _f32(logits)
    log_p = jax.nn.log_softmax(z, axis=-1)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    return _ce(z, labels) - beta * entropy


def logit_penalty(
    logits, labels, *, features=None, kernel=None, bias=None, beta: float = 1e-3
) -> Array:
    r"""Cross-entropy plus ``beta`` times the squared norm of the logits.

    ``L_i = CE_i + beta ||z_i||_2^2``, a ``float32[B]`` (its batch mean is ``mean CE +
    beta mean ||z||^2``), with ``beta >= 0`` the penalty weight; ``beta = 0`` is
    cross-entropy. The other arguments are those of :func:`cross_entropy`.

    References:
      Kornblith et al., "Why Do Better Loss Functions Lead to Less Transferable
      Features?", NeurIPS 2021 (the logit penalty among the losses compared).
    """
    del features, kernel, bias
    _check_logits_labels(logits, labels)
    z = _f32(logits)
    return _ce(z, labels) + beta * jnp.sum(jnp.square(z), axis=-1)


def logit_norm(
    logits, labels, *, features=None, kernel=None, bias=None, tau: float = 0.04
) -> Array:
    r"""LogitNorm: cross-entropy of the normalized logits ``z / (tau ||z||)``.

    ``L_i = CE(z_i / (tau max(||z_i||_2, NORM_EPS)), y_i)``. The floor
    :data:`NORM_EPS` keeps ``z = 0`` finite (the normalized logits are then 0 and the
    loss is ``log k``); the original code adds ``1e-7`` to the norm instead.

    Args:
      tau: temperature, ``> 0`` (smaller: larger normalized logits).
      logits, labels, features, kernel, bias: as :func:`cross_entropy`.

    Returns:
      ``float32[B]``.

    References:
      Wei et al., "Mitigating Neural Network Overconfidence with Logit
      Normalization", ICML 2022.
    """
    del features, kernel, bias
    _check_logits_labels(logits, labels)
    return _ce(_normalize(_f32(logits), -1) / tau, labels)


def cosine_logits(features, kernel) -> Array:
    r"""``cos theta_ij = <phi_i, w_j> / (||phi_i|| ||w_j||)``: ``float32[B, k]``.

    Each norm is floored at :data:`NORM_EPS` (zero features or a zero column give
    ``cos = 0``). What :func:`am_softmax` trains; use ``argmax`` of it to predict.

    Example:
      >>> import jax.numpy as jnp
      >>> cosine_logits(jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 1.0], [0.0, 1.0]])).round(4)
      Array([[1.    , 0.7071]], dtype=float32)
    """
    return _normalize(_f32(features), -1) @ _normalize(_f32(kernel), 0)


def am_softmax(
    logits,
    labels,
    *,
    features=None,
    kernel=None,
    bias=None,
    scale: float = 30.0,
    margin: float = 0.35,
) -> Array:
    r"""Additive-margin softmax (AM-softmax, CosFace).

    ``z'_ij = s (cos theta_ij - m 1[j = y_i])``, ``L_i = CE(z'_i, y_i)``, with
    ``cos theta_ij`` from :func:`cosine_logits` (normalized ``phi_i`` and ``w_j``).
    The model's ``logits`` and ``bias`` are not used (``logits`` only for shape checks):
    predict with ``argmax_j cos theta_ij``. ``margin = 0`` is the cross-entropy of
    ``s cos theta``.

    Args:
      logits: ``float[B, k]`` (shapes only). labels: ``int[B]``.
      features: ``float[B, d]`` the head's input (required).
      kernel: ``float[d, k]`` the head's kernel (required).
      bias: ignored.
      scale: ``s > 0``. margin: ``m`` (additive cosine margin).

    Returns:
      ``float32[B]``.

    Raises:
      ValueError: ``features`` or ``kernel`` missing or of the wrong shape.

    References:
      Wang et al., "Additive Margin Softmax for Face Verification", IEEE SPL 2018;
      Wang et al., "CosFace: Large Margin Cosine Loss", CVPR 2018.
    """
    del bias
    _, k = _check_logits_labels(logits, labels)
    _check_head("am_softmax", logits, features=features, kernel=kernel)
    cos = cosine_logits(features, kernel)
    onehot = jax.nn.one_hot(labels, k, dtype=cos.dtype)
    return _ce(scale * (cos - margin * onehot), labels)


def large_margin(
    logits, labels, *, features=None, kernel=None, bias=None, gamma: float = 1.0
) -> Array:
    r"""Large-margin hinge at the last layer (Elsayed et al. 2018); **replaces** CE.

    ``L_i = max(0, gamma - d_i)`` with ``d_i = (z_{i,y_i} - z_{i,m_i}) /
    ||w_{y_i} - w_{m_i}||`` (:func:`pmm_jax.pairwise_margins`): the signed distance,
    in feature space, from ``phi_i`` to the boundary between its class and its
    competitor ``m_i = argmax_{j != y_i} z_ij``. Gradients flow through ``d_i`` into
    the logits (hence features, bias) and the two kernel columns; not through the
    choice of ``m_i``.

    This is Elsayed et al.'s loss used as the loss itself (no cross-entropy term),
    restricted to the last layer, where their first-order distance is exact, with the
    top-scoring competitor (their aggregation over wrong classes with ``max``
    picks the class of smallest distance; the top-scoring one is the PMM paper's
    competitor, and the two agree when the columns' differences have equal norms).
    ``gamma`` is in raw feature units. Where ``w_y = w_m`` the distance is
    undefined; :func:`pmm_jax.pairwise_margins` reports 0 with zero gradient (a head
    initialized to zero would not train: initialize it randomly, as flax does).

    Args:
      logits: ``float[B, k]`` the head's scores ``phi @ W + b``.
      labels: ``int[B]``.
      kernel: ``float[d, k]`` the head's kernel (required).
      features, bias: ignored (the logits carry them).
      gamma: the desired margin (feature units); ``gamma <= min_i d_i`` gives 0.

    Returns:
      ``float32[B]``.

    References:
      Elsayed et al., "Large Margin Deep Networks for Classification", NeurIPS 2018,
      Eq. 4 (hinge with ``max`` aggregation) at the output layer.
    """
    del features, bias
    _check_logits_labels(logits, labels)
    _check_head("large_margin", logits, kernel=kernel, need_features=False)
    d = pmm_jax.pairwise_margins(logits, labels, kernel)
    return jax.nn.relu(gamma - _f32(d))


def multiclass_hinge(logits, labels, *, features=None, kernel=None, bias=None) -> Array:
    r"""Crammer-Singer multiclass hinge ``max(0, 1 - xi_i)`` (PMM paper Eq. 7).

    ``xi_i = z_{i, y_i} - max_{j != y_i} z_ij`` (``optax.losses.multiclass_hinge_loss``).

    Args:
      logits: ``float[B, k]``. labels: ``int[B]``.
      features, kernel, bias: ignored.

    Returns:
      ``float32[B]``.
    """
    del features, kernel, bias
    _check_logits_labels(logits, labels)
    return optax.losses.multiclass_hinge_loss(_f32(logits), labels)


# --- registry ----------------------------------------------------------------------------

OBJECTIVES: dict[str, tuple[Objective, dict[str, float]]] = {
    "cross_entropy": (cross_entropy, {}),
    "label_smoothing": (label_smoothing, {"epsilon": 0.1}),
    "confidence_penalty": (confidence_penalty, {"beta": 0.1}),
    "logit_penalty": (logit_penalty, {"beta": 1e-3}),
    "logit_norm": (logit_norm, {"tau": 0.04}),
    "am_softmax": (am_softmax, {"scale": 30.0, "margin": 0.35}),
    "large_margin": (large_margin, {"gamma": 1.0}),
    "multiclass_hinge": (multiclass_hinge, {}),
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)
# The objectives that read the head (features and/or kernel): the train step must pass
# features=aux["pre_logits"], kernel=<head kernel> (and bias) to them.
NEEDS_HEAD = frozenset({"am_softmax", "large_margin"})

# Points per validation grid (the same for every objective with hyperparameters).
GRID_SIZE = 6
# name -> tuple of hyperparameter dicts (each a full point, defaults filled in).
# Log-spaced where the scale is unknown; AM-softmax's margin (a cosine) is linear at
# the default scale. large_margin's gamma is in feature units: check the grid against
# the typical feature norm (the trainer's `radius` metric) of the network at hand.
DEFAULT_GRIDS: dict[str, tuple[dict[str, float], ...]] = {
    "cross_entropy": ({},),
    "label_smoothing": tuple({"epsilon": v} for v in (0.01, 0.03, 0.05, 0.1, 0.2, 0.3)),
    "confidence_penalty": tuple({"beta": v} for v in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
    "logit_penalty": tuple({"beta": v} for v in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "logit_norm": tuple({"tau": v} for v in (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)),
    "am_softmax": tuple({"scale": 30.0, "margin": v} for v in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)),
    "large_margin": tuple({"gamma": v} for v in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)),
    "multiclass_hinge": ({},),
}


def prediction_scores(name: str, **hyper: Any):
    """The scores objective ``name`` trains the model to predict with, when they are not
    the head's logits: ``(logits, *, features, kernel, bias) -> float32[B, k]``, or None.

    AM-softmax trains ``scale * cos theta`` (:func:`cosine_logits`), so its predictions,
    accuracy and attacks use those; every other objective predicts with the logits.
    """
    if name != "am_softmax":
        return None
    scale = {**OBJECTIVES[name][1], **hyper}["scale"]

    def scores(logits, *, features, kernel, bias=None) -> Array:
        del logits, bias
        return scale * cosine_logits(features, kernel)

    return scores


def get_objective(name: str, **hyper: Any) -> Objective:
    """The objective ``name`` with its hyperparameters bound (defaults for the rest).

    Args:
      name: a key of :data:`OBJECTIVES`.
      **hyper: hyperparameters of that objective (numbers); unnamed ones take their
        defaults.

    Returns:
      ``fn(logits, labels, *, features=None, kernel=None, bias=None) -> float32[B]``.

    Raises:
      ValueError: unknown objective or hyperparameter (the message lists the valid
        ones), or a hyperparameter outside its range.

    Example:
      >>> import jax.numpy as jnp
      >>> fn = get_objective("label_smoothing", epsilon=0.0)
      >>> round(float(fn(jnp.zeros((1, 4)), jnp.array([0]))[0]), 4)
      1.3863
    """
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; known: {', '.join(OBJECTIVE_NAMES)}.")
    fn, defaults = OBJECTIVES[name]
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(
            f"Unknown hyperparameter(s) {', '.join(map(repr, unknown))} for objective "
            f"{name!r}; valid: {valid}."
        )
    bound = {**defaults, **hyper}
    _check_ranges(name, bound)

    def objective(logits, labels, *, features=None, kernel=None, bias=None) -> Array:
        return fn(logits, labels, features=features, kernel=kernel, bias=bias, **bound)

    objective.__name__ = objective.__qualname__ = name
    objective.__doc__ = fn.__doc__
    objective.hyper = dict(bound)  # type: ignore[attr-defined]
    return objective


_RANGES: Mapping[str, tuple[float, float, bool]] = {
    # name: (low, high, low_inclusive); high always inclusive.
    "epsilon": (0.0, 1.0, True),
    "beta": (0.0, float("inf"), True),
    "tau": (0.0, float("inf"), False),
    "scale": (0.0, float("inf"), False),
    "margin": (-float("inf"), float("inf"), True),
    "gamma": (-float("inf"), float("inf"), True),
}


def _check_ranges(name: str, hyper: Mapping[str, Any]) -> None:
    for key, value in hyper.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"Hyperparameter {key!r} of objective {name!r} must be a number; got {value!r}."
            ) from None
        lo, hi, lo_in = _RANGES[key]
        ok = (v >= lo if lo_in else v > lo) and v <= hi and v == v
        if not ok or (v in (float("inf"), -float("inf"))):
            bracket = "[" if lo_in else "("
            raise ValueError(
                f"Hyperparameter {key!r} of objective {name!r} must be finite and in "
                f"{bracket}{lo}, {hi}]; got {value!r}."
            )
