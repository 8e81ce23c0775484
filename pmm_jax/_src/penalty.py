r"""The PMM penalty and its parts, as pure per-example functions.

Notation (paper §II-III, pinned down in ``docs/design.md``): a batch of ``B`` examples
with penultimate features ``phi: [B, d]``, integer labels ``y: [B]``, the last
layer's kernel ``W: [d, k]`` in the Flax ``nn.Dense`` layout (``W[:, j] = w_j``)
and scores ``s = phi @ W + b: [B, k]``.

* competitor class   ``m_i = argmax_{j != y_i} s_ij``
* margin gap         ``xi_i = s_{i, y_i} - s_{i, m_i}``
* pairwise distance  ``d_i = xi_i / ||w_{y_i} - w_{m_i}||``            (Eq. 8)
* radius             ``r = max_i ||phi_i||`` over the whole global batch
* penalty            ``R_i = ||w_{y_i} - w_{m_i}||^2 * r^2``            (Eq. 9)

Cost. Only two kernel columns matter per example, so everything here is a
gather of ``2B`` columns and ``O(B d)`` arithmetic beyond one pass over the
logits (for the competitor's ``argmax``). There is no ``k x k`` pairwise matrix,
no stored ``[B, k, d]`` tensor and no one-hot-times-kernel product;
``tests/test_cost.py`` checks the jaxpr (and, for the small-``k`` kernel gradient
below, the compiled program).

Gradients. ``m_i`` is an integer ``argmax``: no gradient flows through the
choice. With ``s_i = ||w_{y_i} - w_{m_i}||^2`` and ``rho = r^2``:

* ``dR_i / dw_{y_i} = 2 rho (w_{y_i} - w_{m_i})`` and
  ``dR_i / dw_{m_i} = -2 rho (w_{y_i} - w_{m_i})``; other columns get nothing;
* ``dR_i / dphi_j = s_i * 2 phi_j`` if row ``j`` holds the maximal norm (ties share
  it equally, as ``jnp.max`` does), else 0; cut with ``stop_radius_gradient``.

The kernel gradient is assembled *without* a floating-point scatter-add (which is
non-deterministic on GPUs). With many classes (``k > 32``) the ``2B`` column
updates are sorted by class (integer sort), summed per class by a segmented
associative scan (a fixed reduction tree), and written with a scatter whose
indices are unique. With few classes (``k <= 32``: CIFAR-10, MNIST-1D, GLUE) it
is one reduction over the batch, ``G[:, j] = sum_i c_i ([y_i = j] - [m_i = j])``:
``O(B k d)`` multiply-adds by 0 or +-1 (at most 32 times the gather's work),
which XLA fuses without storing the ``[d, B, k]`` product (the XLA of jaxlib
>= 0.10.2 on CPU; older ones store it, ``B d k`` floats); one kernel instead of
a sort, a scan and a scatter (timings in ``docs/performance.md``). Both assemblies
are bitwise reproducible from run to run on every backend; both live in
``pmm_jax/_src/numerics.py``, shared with the class-parallel head.

Sharded heads. With the classes (and possibly the feature rows) of the kernel split
over mesh axes -- ``class_axis_name`` inside ``shard_map``/``pmap``, or an explicitly
sharded kernel under ``jit`` -- the same quantities are computed class-parallel with
``O(B d)`` communication per device (``pmm_jax/_src/sharded.py``; the math in
``docs/design.md``, "Sharded heads").

Numerics. Everything is computed in float32 whatever the input dtype (bf16/f16
inputs are upcast after the gather, so the full kernel is never copied; float64
inputs under ``jax_enable_x64`` stay float64). ``r^2``
is taken as the max of *squared* norms, so ``r = 0`` has a finite gradient;
``||w_y - w_m||^2`` is a gather-and-subtract (exact for equal columns, no
cancellation as in ``||w_y||^2 + ||w_m||^2 - 2 w_y.w_m``).

References:
  Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural
  Networks", arXiv:2110.04519.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pmm_jax._src import checks, numerics, sharded

Array = jax.Array


def competitor_classes(logits: Array, labels: Array, *, class_axis_name=None) -> Array:
    """The most competitive wrong class of each example.

    ``m_i = argmax_{j != y_i} logits[i, j]`` (ties go to the lowest index, as
    ``jnp.argmax``). Integer output: no gradient flows through it.

    Class-parallel (``class_axis_name``, or logits explicitly sharded over classes under
    ``jit``): the local best wrong class, then over the class axis the largest score and,
    among the devices holding it, the lowest global index -- exactly the unsharded answer,
    ties across shards included (a NaN score wins, the first in global order, as in
    ``jnp.argmax``). Three ``[B]`` all-reduces.

    Args:
      logits: ``float[B, k]`` scores, ``k >= 2``; under ``class_axis_name`` this device's
        ``float[B, k / n]`` slice of the classes.
      labels: ``int[B]`` true classes in ``[0, k)`` (not checked under jit; see
        :func:`pmm_jax.validate_batch`); global class ids under ``class_axis_name``.
      class_axis_name: mapped axis (``shard_map``/``pmap``) the classes are split over:
        device ``c`` along it holds classes ``[c k / n, (c + 1) k / n)``. ``None``
        (default): the logits hold every class.

    Returns:
      ``int32[B]`` competitor classes (global ids), always different from ``labels``.

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> logits = jnp.array([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0]])
      >>> pmm_jax.competitor_classes(logits, jnp.array([0, 0])).tolist()
      [1, 1]
    """
    axes = sharded.axis_names(class_axis_name)
    _, k = checks.check_logits_labels(logits, labels, class_parallel=bool(axes))
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if axes:
        return sharded.competitor_classes(logits, labels, axes)
    layout = sharded.explicit_layout(logits=logits, labels=labels)
    if layout is not None:
        return sharded.run_explicit(
            layout,
            lambda head, batch, logits, labels: sharded.competitor_classes(
                logits, labels, head.logit_classes
            ),
            {"logits": logits, "labels": labels},
            sharded.batch_spec(layout),
        )
    return _competitor_classes(logits, labels, k)


def _competitor_classes(logits: Array, labels: Array, k: int) -> Array:
    labels = labels.astype(jnp.int32)
    is_true = jnp.arange(k, dtype=jnp.int32)[None, :] == labels[:, None]
    masked = jnp.where(is_true, jnp.array(-jnp.inf, logits.dtype), logits)
    m = jnp.argmax(lax.stop_gradient(masked), axis=-1).astype(jnp.int32)
    # Only when every wrong score is -inf (or NaN) can argmax land on the true
    # class; any wrong class is then as good as another.
    return jnp.where(m == labels, (labels + 1) % k, m)


def feature_radius(features: Array, *, where: Array | None = None, axis_name=None) -> Array:
    """The feature-space radius ``r = max_i ||phi_i||_2`` of the batch.

    Args:
      features: ``float[B, d]`` penultimate features.
      where: optional ``bool[B]``; rows with ``False`` (padding) are left out.
      axis_name: name of a mapped axis (``pmap`` / ``shard_map``) over which the
        batch is split; the result is then the radius of the *global* batch
        (a collective max, with gradient routed to the device holding the max).
        ``None`` (default) for a single device or for ``jit`` over global arrays,
        where the batch already is global.

    Returns:
      ``float32[]``; ``0.0`` when no row is selected.

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> float(pmm_jax.feature_radius(jnp.array([[3.0, 4.0], [1.0, 0.0]])))
      5.0
    """
    checks.check_features(features)
    checks.check_where(where, jnp.shape(features)[0])
    return numerics.safe_sqrt(numerics.radius_sq(jnp.asarray(features), where, axis_name))


# --- ||w_y - w_m||^2 with a deterministic backward pass ----------------------


@jax.custom_vjp
def _pair_sq_dist(kernel: Array, labels: Array, competitors: Array) -> Array:
    """``||kernel[:, y_i] - kernel[:, m_i]||^2`` for each i, in float32."""
    return _pair_diff(kernel, labels, competitors)[1]


def _batch_axes(x):
    """Mesh axes that ``x``'s leading (batch) dim is *explicitly* sharded over.

    ``None`` outside ``jax.sharding.AxisType.Explicit`` meshes (Auto axes, inside
    ``shard_map``/``pmap``, single device), where nothing needs to be said.
    """
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return spec[0] if spec else None


def _take_columns(kernel, idx):
    """``kernel[:, idx]`` (``[d, B]``), sharded like ``idx`` on explicit meshes."""
    axes = _batch_axes(idx)
    if axes is None:
        return jnp.take(kernel, idx, axis=1, mode="clip")
    out = NamedSharding(jax.typeof(idx).sharding.mesh, P(None, axes))
    return kernel.at[:, idx].get(mode="clip", out_sharding=out)


def _replicated(x):
    return NamedSharding(jax.typeof(x).sharding.mesh, P())


def _pair_diff(kernel, labels, competitors):
    acc = numerics.acc_dtype(kernel.dtype)
    w_y = _take_columns(kernel, labels).astype(acc)  # [d, B]
    w_m = _take_columns(kernel, competitors).astype(acc)
    diff = w_y - w_m
    return diff, jnp.sum(jnp.square(diff), axis=0)


def _pair_sq_dist_fwd(kernel, labels, competitors):
    diff, sq = _pair_diff(kernel, labels, competitors)
    # An empty [0, k] array carries k and the kernel's dtype (residuals must be arrays).
    like = jnp.zeros((0, kernel.shape[1]), kernel.dtype)
    return sq, (diff, labels, competitors, like)


def _pair_sq_dist_bwd(res, g):
    diff, labels, competitors, like = res
    k = like.shape[1]
    if _batch_axes(labels) is not None:
        # Explicitly sharded batch (jit over a mesh): gather the O(B d) update
        # rows so that the assembly below acts on the whole batch.
        diff, labels, competitors, g = (
            jax.sharding.reshard(x, _replicated(x)) for x in (diff, labels, competitors, g)
        )
    contrib = (2.0 * g)[None, :] * diff  # [d, B]: dR/dw_y; dR/dw_m is its negative.
    grad = numerics.kernel_grad(contrib, labels, competitors, k)
    return grad.astype(like.dtype), None, None


_pair_sq_dist.defvjp(_pair_sq_dist_fwd, _pair_sq_dist_bwd)


def pmm_penalty(
    logits: Array,
    labels: Array,
    features: Array,
    kernel: Array,
    *,
    where: Array | None = None,
    axis_name=None,
    class_axis_name=None,
    stop_radius_gradient: bool = False,
) -> Array:
    r"""Per-example Pairwise Margin Maximization penalty (paper Eq. 9).

    ``R_i = ||w_{y_i} - w_{m_i}||^2 * r^2`` with ``m_i`` the competitor class
    (:func:`competitor_classes`) and ``r`` the radius of the global batch
    (:func:`feature_radius`). The bias is not penalized. The caller reduces:
    :func:`pmm_jax.pmm_loss` offers the paper's ``mean_i R_i`` (default), the
    authors' code's ``r^2 (mean_i ||w_{y_i} - w_{m_i}||)^2`` (``"official"``, the
    scale of the paper's alphas) and ``sum_i R_i``.

    Gradient flows into the two kernel columns of each example and, unless
    ``stop_radius_gradient``, through ``r`` into the max-norm feature row(s);
    never through the choice of ``m_i``. The kernel gradient is bitwise
    deterministic (no floating scatter-add; see the module docstring).

    Sharded heads. Under ``jit``, a kernel sharded over classes and/or feature rows
    (``P(None, "model")``, ``P("model", None)``, FSDP's ``P("data", None)``, ...) on an
    ``AxisType.Explicit`` mesh is handled class-parallel under an internal ``shard_map``;
    on an ``Auto`` mesh XLA partitions the program (values and gradients are the same).
    Inside ``shard_map``/``pmap``, ``class_axis_name`` says that each device holds a slice
    of the classes. Either way only ``O(B d)`` per device is communicated, never a
    ``k``-sized array (``pmm_jax._src.sharded``).

    Args:
      logits: ``float[B, k]`` scores ``phi @ W + b``; used only to pick ``m_i``.
      labels: ``int[B]`` true classes (global ids under ``class_axis_name``).
      features: ``float[B, d]`` the last layer's input ``phi``.
      kernel: ``float[d, k]`` the last layer's kernel (flax ``nn.Dense`` layout).
        It must be the kernel that produced ``logits`` (``logits = features @ kernel
        + bias``), in this layout: a PyTorch ``Linear.weight`` is ``[k, d]``, pass its
        transpose. A transposed kernel fails the shape check unless ``d == k``; for a
        square head no shape check can tell, and the result is silently wrong: check
        once with ``validate_batch(logits, labels, features=, kernel=, bias=)``.
      where: optional ``bool[B]``: ``False`` rows (padding) give 0 and are left
        out of ``r``.
      axis_name: mapped axis (``pmap``/``shard_map``) the batch is split over;
        ``r`` is then the collective max over it. ``None`` when the batch is
        already global (single device, or ``jit`` over sharded global arrays).
      class_axis_name: mapped axis (``shard_map``/``pmap``) the classes are split
        over: this device holds ``logits[:, classes_local]`` and
        ``kernel[:, classes_local]``, contiguous equal slices in axis order (so
        ``kernel.shape[1] == logits.shape[1] == k / n``), and every device along the
        axis holds the same examples. The result is the same on each of them; each
        kernel slice gets the gradient of its own columns. Composes with
        ``axis_name`` (the data axis).
      stop_radius_gradient: if True, treat ``r`` as a constant.

    Returns:
      ``float32[B]`` penalties, ``0`` on masked rows.

    Shapes and dtypes are checked at trace time; label ranges and NaNs only in
    the checked mode (:func:`pmm_jax.validate_batch`).

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> kernel = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # d=2, k=3
      >>> feats = jnp.array([[3.0, 4.0], [0.0, 1.0]])               # r = 5
      >>> logits = feats @ kernel
      >>> pmm_jax.pmm_penalty(logits, jnp.array([0, 2]), feats, kernel).tolist()
      [50.0, 25.0]

    References:
      Weinstein, Fine, Hel-Or, "Pairwise Margin Maximization for Deep Neural
      Networks", §III, Eq. 9.
    """
    head = sharded.HeadAxes.from_class_axis_name(class_axis_name)
    batch, k = checks.check_logits_labels(logits, labels, class_parallel=head is not None)
    dim = checks.check_features(features, batch)
    checks.check_kernel(kernel, dim, k, class_parallel=head is not None)
    checks.check_where(where, batch)
    arrays = {
        "logits": jnp.asarray(logits),
        "labels": jnp.asarray(labels),
        "features": jnp.asarray(features),
        "kernel": jnp.asarray(kernel),
        "where": where,
    }
    kw = dict(axis_name=axis_name, stop_radius_gradient=stop_radius_gradient)
    layout = None if head is not None else sharded.explicit_layout(**arrays)
    if layout is None:
        return unchecked_pmm_penalty(**arrays, head=head, **kw)[0]

    def per_device(head, batch, **local):
        axes = sharded.axis_names(axis_name) + batch
        return unchecked_pmm_penalty(**local, head=head, **{**kw, "axis_name": axes or None})[0]

    return sharded.run_explicit(layout, per_device, arrays, sharded.batch_spec(layout))


def _pair_terms(logits, labels, kernel, where, head=None):
    """Competitors (sanitized under ``where``) and ``||w_y - w_m||^2``: ``[B]`` each."""
    if head is not None:
        return sharded.pair_terms(logits, labels, kernel, where, head)
    k = logits.shape[-1]
    competitors = _competitor_classes(logits, labels, k)
    labels, competitors = numerics.sanitize(labels, competitors, where, k)
    kernel = numerics.vary_like(kernel, labels, competitors)
    return labels, competitors, _pair_sq_dist(kernel, labels, competitors)


def unchecked_pmm_penalty(
    logits, labels, features, kernel, *, where, axis_name, stop_radius_gradient, head=None
):
    """Unchecked :func:`pmm_penalty`; also returns ``r^2`` and the pair terms.

    ``head``: a :class:`sharded.HeadAxes` inside ``shard_map``/``pmap`` when the head is
    split over mesh axes (class-parallel), else ``None``.
    """
    pair = _pair_terms(logits, labels, kernel, where, head)
    r_sq = numerics.radius_sq(features, where, axis_name)
    if stop_radius_gradient:
        r_sq = lax.stop_gradient(r_sq)
    penalty = pair[2] * r_sq
    if where is not None:
        penalty = jnp.where(where, penalty, 0.0)
    return penalty, r_sq, pair


def pairwise_margins(
    logits: Array,
    labels: Array,
    kernel: Array,
    *,
    radius: Array | float | None = None,
    where: Array | None = None,
    class_axis_name=None,
) -> Array:
    r"""Signed distance of each example to its pairwise boundary (paper Eq. 8).

    ``d_i = (s_{i,y_i} - s_{i,m_i}) / ||w_{y_i} - w_{m_i}||``: positive iff the
    example is classified right, in feature-space units. The raw distance grows
    if the features are scaled up; pass ``radius=feature_radius(features)`` to
    get the scale-free *normalized* margin ``d_i / r`` (what the paper's
    normalization argues for, and what the training metrics report).

    Where the two columns coincide (``w_y = w_m``) there is no boundary and the
    distance is undefined; it is reported as ``0`` (with a zero gradient). A zero
    ``radius`` likewise gives ``0``.

    Args:
      logits: ``float[B, k]`` scores.
      labels: ``int[B]`` true classes.
      kernel: ``float[d, k]`` last-layer kernel (flax ``nn.Dense`` layout).
        It must be the kernel that produced ``logits`` (``logits = features @ kernel
        + bias``), in this layout: a PyTorch ``Linear.weight`` is ``[k, d]``, pass its
        transpose. A transposed kernel fails the shape check unless ``d == k``; for a
        square head no shape check can tell, and the result is silently wrong: check
        once with ``validate_batch(logits, labels, features=, kernel=, bias=)``.
      radius: optional scalar to divide by (e.g. :func:`feature_radius`).
      where: optional ``bool[B]``; ``False`` rows give 0.
      class_axis_name: mapped axis the classes are split over (``logits`` and
        ``kernel`` hold this device's slice); as in :func:`pmm_penalty`.

    Returns:
      ``float32[B]`` signed distances.

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> kernel = jnp.array([[1.0, -1.0], [0.0, 0.0]])
      >>> logits = jnp.array([[2.0, -2.0]])      # phi = (2, 0)
      >>> pmm_jax.pairwise_margins(logits, jnp.array([0]), kernel).tolist()
      [2.0]
    """
    head = sharded.HeadAxes.from_class_axis_name(class_axis_name)
    batch, k = checks.check_logits_labels(logits, labels, class_parallel=head is not None)
    checks.check_kernel(kernel, None, k, class_parallel=head is not None)
    checks.check_where(where, batch)
    arrays = {
        "logits": jnp.asarray(logits),
        "labels": jnp.asarray(labels),
        "kernel": jnp.asarray(kernel),
        "where": where,
        "radius": None if radius is None else jnp.asarray(radius),
    }
    layout = None if head is not None else sharded.explicit_layout(**arrays)
    if layout is None:
        return unchecked_pairwise_margins(**arrays, head=head)
    return sharded.run_explicit(
        layout,
        lambda head, batch, **local: unchecked_pairwise_margins(**local, head=head),
        arrays,
        sharded.batch_spec(layout),
    )


def unchecked_pairwise_margins(
    logits, labels, kernel, *, radius=None, where=None, pair=None, head=None
):
    labels, competitors, sq_dist = pair or _pair_terms(logits, labels, kernel, where, head)
    acc = numerics.acc_dtype(logits.dtype)
    classes = head.logit_classes if head is not None else ()
    s_y = sharded.pick(logits, labels, classes).astype(acc)
    s_m = sharded.pick(logits, competitors, classes).astype(acc)
    return numerics.signed_distance(s_y - s_m, sq_dist, radius=radius, where=where)
