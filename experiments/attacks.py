r"""Adversarial evaluation in JAX: FGSM, PGD (L-inf, L2), robust and transfer accuracy,
and the per-example minimal radius found by bisection.

Every attack takes the model as a closure ``apply_fn(x) -> logits`` (``float[B, k]``),
evaluated in inference mode and acting on each example separately (no batch
statistics). Because the closure may capture traced parameters, everything here is
``jax.jit``-able and ``jax.vmap``-able over a leading seed axis of the parameters: build
the closure *inside* the mapped function. With a flax model that returns
``(logits, aux)``::

    def robust_acc_one_seed(variables, key):
        apply_fn = lambda x: model.apply(variables, x, train=False)[0]
        return robust_accuracy(apply_fn, x, y, eps_grid=eps, norm="l2", steps=20, key=key)

    keys = jax.random.split(key, num_seeds)
    acc = jax.jit(jax.vmap(robust_acc_one_seed))(stacked_variables, keys)  # [seeds, G]

Conventions.

* ``x``: a floating array ``[B, ...]``; norms are over all non-batch dimensions. The
  attack runs in the space of ``x``: to attack raw pixels, pass them as floats and put
  the normalization inside ``apply_fn`` (and, if wanted, ``clip=(0, 255)``).
* ``eps``: a scalar or a per-example ``[B]`` array. ``norm``: ``"linf"`` or ``"l2"``.
* ``loss`` (maximized by the attack): ``"ce"``, the cross-entropy
  ``logsumexp(z) - z_y``, or ``"cw"`` (default), the Carlini-Wagner margin
  ``max_{j != y} z_j - z_y``, which is positive iff the example is misclassified and does
  not saturate (the cross-entropy's gradient underflows for very confident logits:
  gradient masking by the loss, not robustness).
* No clipping to a data range unless ``clip=(lo, hi)`` is given.
* Step size ``alpha = step_size_factor * eps / steps``, ``DEFAULT_STEP_FACTOR = 5``
  (why 5 and not Madry et al.'s 2.5: see :func:`pgd`).
* Untargeted attacks can settle on a local optimum (the boundary of the best-scoring
  wrong class rather than the nearest one); ``num_targets=n`` runs the attack toward
  each of the ``n`` best-scoring wrong classes and keeps the best (``n`` times the
  cost). Use it (``n = k - 1`` when affordable) where the radius is the measurement
  (:func:`minimal_eps`).

References:
  Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
  2015 (FGSM). Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018 (PGD). Carlini, Wagner, "Towards Evaluating the Robustness of
  Neural Networks", IEEE S&P 2017 (the margin loss).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

Array = jax.Array
ApplyFn = Callable[[Array], Array]

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")


# --- pieces --------------------------------------------------------------------------------

# Default step size: alpha = DEFAULT_STEP_FACTOR * eps / steps (see `pgd`).
DEFAULT_STEP_FACTOR = 5.0


def _check(x, y, norm: str, loss: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; known: {', '.join(NORMS)}.")
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; known: {', '.join(LOSSES)}.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"`x` must be floating (the attack differentiates w.r.t. it); got "
            f"{jnp.result_type(x)}. Convert integer images to float and put the "
            "normalization inside apply_fn."
        )
    if jnp.ndim(x) < 2 or jnp.shape(y) != jnp.shape(x)[:1]:
        raise ValueError(f"`x` must be [B, ...] and `y` [B]; got {jnp.shape(x)}, {jnp.shape(y)}.")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"`y` must be integer labels; got {jnp.result_type(y)}.")


def _per_example(v, x) -> Array:
    """A scalar or ``[B]`` value broadcast against ``x``: ``[B, 1, ..., 1]``."""
    v = jnp.broadcast_to(jnp.asarray(v, x.dtype), x.shape[:1])
    return v.reshape(x.shape[:1] + (1,) * (x.ndim - 1))


def perturbation_norm(delta: Array, norm: str) -> Array:
    """Per-example ``||delta_i||`` over all non-batch dims: ``[B]``."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))


def cw_margin(logits: Array, labels: Array) -> Array:
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y``: ``float[B]``, > 0 iff wrong.

    Example:
      >>> import jax.numpy as jnp
      >>> cw_margin(jnp.array([[3.0, 1.0, 2.0]]), jnp.array([0])).tolist()
      [-1.0]
    """
    own = jnp.arange(logits.shape[-1]) == labels[:, None]
    z_y = jnp.sum(jnp.where(own, logits, 0.0), axis=-1)
    return jnp.max(jnp.where(own, -jnp.inf, logits), axis=-1) - z_y


def attack_loss(logits: Array, labels: Array, loss: str, *, target: Array | None = None):
    r"""The per-example loss the attacks maximize: ``float[B]``.

    Untargeted: ``"ce"`` the cross-entropy ``logsumexp(z) - z_y``; ``"cw"`` the margin
    :func:`cw_margin`. Toward a ``target`` class ``t`` (``int[B]``): ``"ce"``
    ``log softmax(z)_t``; ``"cw"`` ``z_t - z_y``.
    """
    if target is None:
        if loss == "ce":
            return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
        return cw_margin(logits, labels)
    if loss == "ce":
        return -optax.losses.softmax_cross_entropy_with_integer_labels(logits, target)
    pick = lambda c: jnp.take_along_axis(logits, c[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return pick(target) - pick(labels)


def _loss_grad(apply_fn, x, y, loss, target):
    """Gradient of ``sum_i loss_i`` w.r.t. ``x`` and the logits at ``x``."""

    def total(x):
        logits = apply_fn(x)
        return jnp.sum(attack_loss(logits, y, loss, target=target)), logits

    grad, logits = jax.grad(total, has_aux=True)(x)
    return grad, lax.stop_gradient(logits)


def _ascent_direction(g: Array, norm: str) -> Array:
    """``sign(g)`` (L-inf) or ``g / ||g||_2`` per example (L2; 0 where ``g = 0``)."""
    if norm == "linf":
        return jnp.sign(g)
    n = _per_example(perturbation_norm(g, "l2"), g)
    return jnp.where(n > 0, g / jnp.where(n > 0, n, 1.0), 0.0)


def _project(delta: Array, eps: Array, norm: str) -> Array:
    """Onto the ``eps`` ball: clipping (L-inf) or radial scaling (L2)."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    n = _per_example(perturbation_norm(delta, "l2"), delta)
    return delta * jnp.where(n > eps, eps / jnp.where(n > 0, n, 1.0), 1.0)


def _clip(x, delta, clip):
    if clip is None:
        return delta
    lo, hi = clip
    return jnp.clip(x + delta, lo, hi) - x


def uniform_in_ball(key: Array, x: Array, eps, norm: str) -> Array:
    r"""A perturbation drawn uniformly from each example's ``eps`` ball.

    L-inf: ``U[-eps, eps]`` per coordinate. L2: ``eps g_{1..n} / ||g||_2`` with
    ``g ~ N(0, I_{n+2})`` and ``n`` the number of non-batch elements: the first ``n``
    coordinates of a uniform point on the ``(n+1)``-sphere are uniform in the n-ball
    (the radius has ``P(r <= t) = t^n``), from a single Gaussian draw.

    References:
      Voelker, Gosmann, Stewart, "Efficiently sampling vectors and coordinates from the
      n-sphere and n-ball", Tech. report, U. Waterloo, 2017.

    Args:
      key: PRNG key. x: ``float[B, ...]`` (shape and dtype).
      eps: radius, scalar or ``[B]``. norm: ``"linf"`` or ``"l2"``.

    Returns:
      ``delta`` shaped like ``x``.
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; known: {', '.join(NORMS)}.")
    eps = _per_example(eps, x)
    if norm == "linf":
        return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
    n = int(np.prod(x.shape[1:]))
    g = jax.random.normal(key, (x.shape[0], n + 2), x.dtype)
    on_sphere = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    return on_sphere[:, :n].reshape(x.shape) * eps


def _flipped(apply_fn, x_adv, y) -> Array:
    return jnp.argmax(apply_fn(x_adv), axis=-1) != y


# --- attacks -------------------------------------------------------------------------------


def fgsm(
    apply_fn: ApplyFn,
    x: Array,
    y: Array,
    *,
    eps,
    norm: str = "linf",
    loss: str = "ce",
    clip: tuple[float, float] | None = None,
) -> Array:
    r"""Fast gradient (sign) method: one ascent step of size ``eps`` from ``x``.

    ``x' = x + eps sign(g)`` (L-inf) or ``x' = x + eps g / ||g||_2`` (L2), with
    ``g = grad_x loss(apply_fn(x), y)`` per example (no step where ``g = 0``).

    Args:
      apply_fn: ``x -> logits``.
      x: ``float[B, ...]`` inputs. y: ``int[B]`` labels.
      eps: step size and budget, scalar or ``[B]``.
      norm: ``"linf"`` (default) or ``"l2"``.
      loss: ``"ce"`` (default, as Goodfellow et al.) or ``"cw"``.
      clip: optional ``(lo, hi)`` data range.

    Returns:
      ``x'`` shaped like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.array([[1.0, -1.0], [0.5, 0.0]])
      >>> fgsm(lambda x: x @ W, jnp.array([[1.0, 1.0]]), jnp.array([0]), eps=0.1)
      Array([[0.9, 0.9]], dtype=float32)
    """
    _check(x, y, norm, loss)
    x = jnp.asarray(x)
    g, _ = _loss_grad(apply_fn, x, y, loss, None)
    delta = _per_example(eps, x) * _ascent_direction(g, norm)
    return x + _clip(x, delta, clip)


def _pgd_run(apply_fn, x, y, target, key, *, eps, alpha, steps, norm, loss, start, clip):
    """One PGD run: the visited point of largest CW margin, and that margin."""
    if start:
        delta = _clip(x, uniform_in_ball(key, x, eps.reshape(-1), norm), clip)
    else:
        delta = jnp.zeros_like(x)

    def keep_best(best, best_margin, delta, logits):
        margin = cw_margin(logits, y)
        better = margin > best_margin
        return jnp.where(_per_example(better, x), delta, best), jnp.maximum(margin, best_margin)

    def body(_, carry):
        delta, best, best_margin = carry
        g, logits = _loss_grad(apply_fn, x + delta, y, loss, target)
        best, best_margin = keep_best(best, best_margin, delta, logits)
        delta = _project(delta + alpha * _ascent_direction(g, norm), eps, norm)
        return _clip(x, delta, clip), best, best_margin

    init = (delta, delta, jnp.full(x.shape[:1], -jnp.inf, x.dtype))
    delta, best, best_margin = lax.fori_loop(0, steps, body, init)
    logits = lax.stop_gradient(apply_fn(x + delta))
    return keep_best(best, best_margin, delta, logits)


def pgd(
    apply_fn: ApplyFn,
    x: Array,
    y: Array,
    *,
    eps,
    norm: str = "linf",
    steps: int = 20,
    step_size=None,
    loss: str = "cw",
    key: Array | None = None,
    random_start: bool = True,
    num_targets: int | None = None,
    clip: tuple[float, float] | None = None,
) -> Array:
    r"""Projected gradient ascent on the loss within the ``eps`` ball (Madry et al.).

    ``delta_0`` uniform in the ball (:func:`uniform_in_ball`) or 0, then ``steps`` times
    ``delta <- P(delta + alpha u(g))`` with ``g = grad_x loss(apply_fn(x + delta), y)``:

    * L-inf: ``u(g) = sign(g)``, ``P`` clips each coordinate to ``[-eps, eps]``;
    * L2: ``u(g) = g / ||g||_2``, ``P`` scales ``delta`` back to ``||delta||_2 = eps``
      when outside;

    and with ``clip``, ``x + delta`` is clipped to ``[lo, hi]`` after each step. Of the
    ``steps + 1`` points visited, the output is, per example, the one with the largest
    Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (whatever ``loss`` drives the
    ascent): an example comes back misclassified if any visited point was.

    Step size. ``alpha = DEFAULT_STEP_FACTOR * eps / steps`` by default (5: the steps
    add up to 2.5 diameters of the ball). On the L2 sphere, steps of ``c = alpha / eps``
    turn ``delta`` toward a fixed ascent direction ``v`` as ``cot angle(delta, v) ~
    sinh(c t)``; from a start orthogonal to ``v`` (as a random start in high dimension
    nearly is), ``cos angle ~ tanh(steps alpha / eps)`` at the end: 0.987 for Madry et
    al.'s factor 2.5 (1.3% of the budget lost, measurable on a linear model) and
    0.9999 for 5.

    Targets. The untargeted CW loss follows the best-scoring wrong class, which need not
    be the nearest boundary: PGD can settle on a local optimum (the CW loss is the max of
    ``k - 1`` pair margins). With ``num_targets = n``, the attack is run ``n`` times,
    each toward one of the ``n`` best-scoring wrong classes ``t`` at ``x`` (loss ``z_t -
    z_y`` for ``"cw"``, ``log softmax(z)_t`` for ``"ce"``), and the best point is kept
    (``n`` times the cost; ``n = k - 1`` finds the exact minimal perturbation of a
    linear model, the multi-targeted attack of Gowal et al. 2019).

    Args:
      apply_fn: ``x -> logits``, per example.
      x: ``float[B, ...]`` inputs. y: ``int[B]`` labels.
      eps: budget, scalar or ``[B]``.
      norm: ``"linf"`` (default) or ``"l2"``.
      steps: gradient steps (``0``: the start point).
      step_size: ``alpha``, scalar or ``[B]``; ``None``: the rule above.
      loss: ``"cw"`` (default) or ``"ce"``.
      key: PRNG key for the random start (required if ``random_start``).
      random_start: start uniformly in the ball instead of at ``x``.
      num_targets: ``None`` (default): untargeted; ``n`` in ``[1, k - 1]``: multi-targeted.
      clip: optional ``(lo, hi)`` data range; ``None`` (default): no clipping.

    Returns:
      The adversarial inputs ``x + delta``, shaped like ``x``, ``||delta|| <= eps``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> W = jnp.array([[1.0, -1.0], [0.0, 0.0]])  # boundary x_0 = 0
      >>> x, y = jnp.array([[0.5, 0.0], [2.0, 0.0]]), jnp.array([0, 0])
      >>> adv = pgd(lambda x: x @ W, x, y, eps=1.0, norm="l2", key=jax.random.key(0))
      >>> (jnp.argmax(adv @ W, -1) != y).tolist()  # distances 0.5 and 2
      [True, False]

    References:
      Madry et al., ICLR 2018. Gowal et al., "An Alternative Surrogate Loss for
      PGD-based Adversarial Testing", arXiv:1910.09338, 2019 (multi-targeted).
    """
    _check(x, y, norm, loss)
    x = jnp.asarray(x)
    steps = int(steps)
    eps_b = _per_example(eps, x)
    if step_size is None:
        alpha = DEFAULT_STEP_FACTOR * eps_b / max(steps, 1)
    else:
        alpha = _per_example(step_size, x)
    if random_start and key is None:
        raise ValueError("pgd needs a `key` when random_start=True.")
    if key is None:
        key = jax.random.key(0)  # unused
    run = functools.partial(
        _pgd_run,
        apply_fn,
        x,
        y,
        eps=eps_b,
        alpha=alpha,
        steps=steps,
        norm=norm,
        loss=loss,
        start=random_start,
        clip=clip,
    )
    if num_targets is None:
        best, _ = run(None, key)
        return x + best
    logits = lax.stop_gradient(apply_fn(x))
    k = logits.shape[-1]
    if not 1 <= int(num_targets) <= k - 1:
        raise ValueError(f"`num_targets` must be in [1, k - 1 = {k - 1}]; got {num_targets!r}.")
    own = jnp.arange(k) == y[:, None]
    _, targets = lax.top_k(jnp.where(own, -jnp.inf, logits), int(num_targets))  # [B, n]
    keys = jax.random.split(key, int(num_targets))

    def one_target(carry, args):
        best, best_margin = carry
        target, k_t = args
        delta, margin = run(target, k_t)
        better = margin > best_margin
        best = jnp.where(_per_example(better, x), delta, best)
        return (best, jnp.maximum(margin, best_margin)), None

    init = (jnp.zeros_like(x), jnp.full(x.shape[:1], -jnp.inf, x.dtype))
    (best, _), _ = lax.scan(one_target, init, (targets.T, keys))
    return x + best


# --- evaluation ---------------------------------------------------------------------------


def _grid_correct(craft_fn, judge_fn, x, y, eps_grid, key, factor, pgd_kwargs) -> Array:
    """``bool[G, B]``: ``judge_fn`` right on PGD examples crafted on ``craft_fn``."""
    eps_grid = jnp.asarray(eps_grid, x.dtype).reshape(-1)
    keys = jax.random.split(key, eps_grid.shape[0])
    steps = max(int(pgd_kwargs["steps"]), 1)

    def one(args):
        eps, k = args
        adv = pgd(craft_fn, x, y, eps=eps, step_size=factor * eps / steps, key=k, **pgd_kwargs)
        return ~_flipped(judge_fn, adv, y)

    return lax.map(one, (eps_grid, keys))


def _masked_mean(correct: Array, where) -> Array:
    c = correct.astype(jnp.float32)
    if where is None:
        return jnp.mean(c, axis=-1)
    w = jnp.asarray(where, jnp.float32)
    return jnp.sum(c * w, axis=-1) / jnp.maximum(jnp.sum(w), 1.0)


def robust_correct(apply_fn: ApplyFn, x: Array, y: Array, **kwargs) -> Array:
    r"""Per-example correctness under PGD, for each radius of ``eps_grid``: ``bool[G, B]``.

    For each ``eps`` in the grid, :func:`pgd` on ``apply_fn`` itself (white box) with
    step size ``step_size_factor * eps / steps`` and an independent key; an example is
    correct if ``argmax_j apply_fn(x_adv)_j = y`` (at ``eps = 0``: clean correctness).
    The radii run one after the other (``lax.map``), so memory is that of one attack.
    The keyword arguments (``eps_grid``, ``norm``, ``steps``, ``step_size_factor``,
    ``loss``, ``key``, ``random_start``, ``num_targets``, ``clip``) are those of
    :func:`transfer_correct`, of which this is the case source = target.
    """
    return transfer_correct(apply_fn, apply_fn, x, y, **kwargs)


def robust_accuracy(apply_fn: ApplyFn, x: Array, y: Array, *, where=None, **kwargs) -> Array:
    r"""Accuracy under PGD for each radius of ``eps_grid``: ``float32[G]``.

    The mean over the examples (over those with ``where`` True if given: padding rows
    are left out) of :func:`robust_correct`, which takes the other (keyword) arguments.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> W = jnp.array([[1.0, -1.0], [0.0, 0.0]])
      >>> x, y = jnp.array([[0.5, 0.0], [2.0, 0.0]]), jnp.array([0, 0])
      >>> acc = robust_accuracy(lambda x: x @ W, x, y, eps_grid=[0.0, 1.0, 3.0],
      ...                       key=jax.random.key(0))
      >>> acc.tolist()
      [1.0, 0.5, 0.0]
    """
    return _masked_mean(robust_correct(apply_fn, x, y, **kwargs), where)


def transfer_correct(
    source_apply_fn: ApplyFn,
    target_apply_fn: ApplyFn,
    x: Array,
    y: Array,
    *,
    eps_grid,
    norm: str = "l2",
    steps: int = 20,
    step_size_factor: float = DEFAULT_STEP_FACTOR,
    loss: str = "cw",
    key: Array,
    random_start: bool = True,
    num_targets: int | None = None,
    clip: tuple[float, float] | None = None,
) -> Array:
    r"""Per-example correctness of the *target* on PGD examples crafted on the *source*.

    For each ``eps`` of the grid, :func:`pgd` on ``source_apply_fn`` (step size
    ``step_size_factor * eps / steps``, an independent key per radius); an example is
    correct if the target still predicts ``y`` on it. A model far more robust to its own
    (white-box) attack (:func:`robust_correct`) than to examples transferred from
    another model hides its gradients (gradient masking).

    Args:
      source_apply_fn, target_apply_fn: ``x -> logits``. x: ``float[B, ...]``. y: ``int[B]``.
      eps_grid: ``float[G]`` radii (e.g. from :func:`eps_grid_for`).
      norm: ``"l2"`` (default) or ``"linf"``.
      steps, loss, random_start, num_targets, clip: as :func:`pgd`.
      step_size_factor: ``alpha = factor * eps / steps``.
      key: PRNG key.

    Returns:
      ``bool[G, B]``.
    """
    _check(x, y, norm, loss)
    kwargs = dict(
        norm=norm,
        steps=steps,
        loss=loss,
        random_start=random_start,
        num_targets=num_targets,
        clip=clip,
    )
    x = jnp.asarray(x)
    return _grid_correct(
        source_apply_fn, target_apply_fn, x, y, eps_grid, key, step_size_factor, kwargs
    )


def transfer_accuracy(
    source_apply_fn: ApplyFn,
    target_apply_fn: ApplyFn,
    x: Array,
    y: Array,
    *,
    where=None,
    **kwargs,
) -> Array:
    r"""Accuracy of the target on examples crafted on the source: ``float32[G]``.

    The mean (over ``where``) of :func:`transfer_correct`, which takes the other
    (keyword) arguments. Vmapped over seeds, baseline seed ``s`` as the source of
    method seed ``s``::

        def one(src_vars, tgt_vars, key):
            src = lambda x: model.apply(src_vars, x, train=False)[0]
            tgt = lambda x: model.apply(tgt_vars, x, train=False)[0]
            return transfer_accuracy(src, tgt, x, y, eps_grid=eps, key=key)

        acc = jax.jit(jax.vmap(one))(baseline_vars, method_vars, keys)  # [seeds, G]
    """
    return _masked_mean(transfer_correct(source_apply_fn, target_apply_fn, x, y, **kwargs), where)


def minimal_eps(
    apply_fn: ApplyFn,
    x: Array,
    y: Array,
    *,
    eps_max,
    eps_min=None,
    norm: str = "l2",
    bisection_steps: int = 10,
    pgd_steps: int = 20,
    step_size_factor: float = DEFAULT_STEP_FACTOR,
    key: Array,
    random_start: bool = True,
    num_targets: int | None = None,
    clip: tuple[float, float] | None = None,
) -> Array:
    r"""Per example, the smallest radius at which PGD (CW loss) flips the prediction.

    All examples in parallel, each with its own bracket ``[lo_i, hi_i] = [eps_min,
    eps_max]``: PGD at ``eps_max`` first (an example it does not flip gets ``+inf``);
    then ``bisection_steps`` times PGD at the geometric midpoint ``eps_i = sqrt(lo_i
    hi_i)`` (step size ``step_size_factor * eps_i / pgd_steps``): ``hi_i <- eps_i`` if
    it flips, else ``lo_i <- eps_i``. The result is ``hi_i``, a radius at which PGD
    found an adversarial example. The bisection is on the log scale so that the
    *relative* precision is the same for every example, however close to the boundary:
    ``hi_i / r_i <= (eps_max / eps_min)^(2^-bisection_steps)`` with ``r_i`` the
    boundary of PGD's success (1.0090 for the defaults: ``eps_min = 1e-4 eps_max``,
    10 steps). Radii below ``eps_min`` come out as about ``eps_min``. Examples
    misclassified at ``x`` get ``0``.

    It upper-bounds the true minimal radius, tightly when PGD is optimal: a linear
    model with ``num_targets = k - 1``. The untargeted attack (``num_targets=None``)
    can stop at the boundary of the best-scoring wrong class when another is nearer (see
    :func:`pgd`) and overestimate the radius; use ``num_targets`` when the radius
    itself is the measurement.

    Args:
      apply_fn: ``x -> logits``. x: ``float[B, ...]``. y: ``int[B]``.
      eps_max: the largest radius tried, scalar or ``[B]``.
      eps_min: the smallest, ``0 < eps_min < eps_max``; ``None``: ``1e-4 eps_max``.
      norm: ``"l2"`` (default) or ``"linf"``.
      bisection_steps: halvings of the (log) bracket.
      pgd_steps: PGD steps per trial.
      step_size_factor: ``alpha = factor * eps / pgd_steps``.
      key: PRNG key (an independent one per trial).
      random_start, num_targets, clip: as :func:`pgd`.

    Returns:
      ``float[B]`` radii: ``0`` (clean error), ``+inf`` (not flipped at ``eps_max``).
    """
    _check(x, y, norm, "cw")
    x = jnp.asarray(x)
    eps_max = jnp.broadcast_to(jnp.asarray(eps_max, x.dtype), x.shape[:1])
    eps_min = 1e-4 * eps_max if eps_min is None else jnp.asarray(eps_min, x.dtype)
    eps_min = jnp.broadcast_to(eps_min, x.shape[:1])
    steps = max(int(pgd_steps), 1)
    key_max, key_bisect = jax.random.split(key)

    def flips(eps, k):
        adv = pgd(
            apply_fn,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=pgd_steps,
            step_size=step_size_factor * eps / steps,
            loss="cw",
            key=k,
            random_start=random_start,
            num_targets=num_targets,
            clip=clip,
        )
        return _flipped(apply_fn, adv, y)

    def body(i, bracket):
        lo, hi = bracket
        mid = jnp.sqrt(lo * hi)
        f = flips(mid, jax.random.fold_in(key_bisect, i))
        return jnp.where(f, lo, mid), jnp.where(f, mid, hi)

    _, hi = lax.fori_loop(0, int(bisection_steps), body, (eps_min, eps_max))
    found = flips(eps_max, key_max)
    clean_wrong = _flipped(apply_fn, x, y)
    return jnp.where(clean_wrong, 0.0, jnp.where(found, hi, jnp.inf)).astype(x.dtype)


def minimal_l2_eps(apply_fn: ApplyFn, x: Array, y: Array, **kwargs) -> Array:
    """:func:`minimal_eps` with ``norm="l2"``; the same keyword arguments otherwise."""
    if kwargs.pop("norm", "l2") != "l2":
        raise ValueError("minimal_l2_eps is L2; use minimal_eps(norm=...) for another norm.")
    return minimal_eps(apply_fn, x, y, norm="l2", **kwargs)


# --- radii -------------------------------------------------------------------------------


def eps_grid_for(x_train, fractions: Sequence[float], norm: str, *, chunk: int = 4096):
    r"""Attack radii scaled to the data: ``fractions * scale`` (``float32[G]``, numpy).

    * ``norm="l2"``: ``scale = median_i ||x_i||_2``, the median per-example L2 norm of
      the inputs (over all non-batch dims; the median, so that a few outliers do not
      set the scale);
    * ``norm="linf"``: ``scale = std(x_train)``, the standard deviation of all entries
      (not the range, which a single outlier sets; for per-channel standardized inputs
      the scale is 1, and for images in ``[0, 1]`` about 0.25).

    ``x_train`` must be in the space the attack runs in (that of ``apply_fn``'s input).
    Computed in float64 on the host in chunks of ``chunk`` examples.

    Example:
      >>> import numpy as np
      >>> x = np.stack([np.full(4, 1.0), np.full(4, 2.0), np.full(4, 10.0)])
      >>> eps_grid_for(x, [0.0, 0.5, 1.0], "l2").tolist()  # median norm 4
      [0.0, 2.0, 4.0]
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; known: {', '.join(NORMS)}.")
    x_train = np.asarray(x_train)
    n = x_train.shape[0]
    if n == 0:
        raise ValueError("`x_train` is empty.")
    flat = x_train.reshape(n, -1)  # a view of a contiguous array
    chunks = [flat[i : i + chunk] for i in range(0, n, chunk)]
    if norm == "l2":
        sq = [np.sum(np.square(c, dtype=np.float64), axis=1) for c in chunks]
        scale = float(np.median(np.sqrt(np.concatenate(sq))))
    else:
        count = x_train.size
        mean = sum(float(np.sum(c, dtype=np.float64)) for c in chunks) / count
        var = sum(float(np.sum(np.square(c - mean, dtype=np.float64))) for c in chunks) / count
        scale = float(np.sqrt(var))
    return (np.asarray(fractions, np.float64) * scale).astype(np.float32)
