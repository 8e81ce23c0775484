r"""Class-parallel PMM: a head whose classes (and feature rows) are split over mesh axes.

Two ways in, one implementation:

* **Manual** (inside ``shard_map`` / ``pmap``): ``class_axis_name="model"`` on the public
  functions says that this device holds ``logits[:, classes_local]`` and
  ``kernel[:, classes_local]``: the ``k / n`` classes ``[c k_local, (c + 1) k_local)`` for
  its index ``c`` along the class axis (contiguous, equal slices; a tuple of axes is
  linearized row-major, as ``PartitionSpec`` shards a dimension over several axes). Labels
  are global class ids. Every device along the class axis must hold the same examples.
* **Explicit-mesh jit**: when the kernel (or the logits' class dimension) carries an
  explicit sharding (``jax.sharding.AxisType.Explicit``), the public functions run the same
  code under an internal ``shard_map`` whose specs are read from the arguments' types
  (:func:`explicit_layout`). Feature rows of the kernel may be sharded too (FSDP,
  ``P("data", None)``; or ``P("model", None)``), as may the batch.

What each device computes, with ``B_loc`` rows, a kernel block ``[d_f, k_c]`` and ``n``
devices along the class axes:

1. The competitor ``m_i = argmax_{j != y_i} s_ij`` in two stages: the local best wrong class
   (``jnp.argmax`` over the local slice: the lowest local index among ties, NaN first), then
   over the class axes the largest value (NaN above everything, as in ``jnp.argmax``) and,
   among the devices holding it, the lowest global index (``pmax``, ``pmin``: three
   ``int/float[B_loc]`` all-reduces). This is exactly ``jnp.argmax`` over the whole row,
   ties across shards included: the winner is the first maximal entry in global order.
2. ``w_{y_i} - w_{m_i}``: each device gathers the columns it owns (a masked local gather,
   zeros elsewhere) and one ``psum`` over the class axes of the ``[d_f, B]`` differences
   assembles them. Adding zeros is exact, so the difference is bitwise the unsharded one.
   A kernel with sharded feature rows adds a ``psum`` of the ``[B]`` partial squared norms.
3. The backward pass writes the kernel gradient of the columns a device owns, with the same
   dense (``k_c <= 32``) or sorted (integer sort + segmented scan + unique-index write)
   assembly as the unsharded path, restricted to the local class ids: no floating
   scatter-add, no collective, bitwise reproducible.

Rows are gathered across the batch axes only where the kernel needs rows it does not see:
under ``check_vma=True`` for the batch axes the kernel is replicated over (its gradient must
then be the sum over those devices, JAX's rule for an invariant input) and, in the explicit
path, for kernels whose feature rows or classes are split over a batch axis. What travels
are the ``int32[B]`` labels and competitors and, backward, the ``float32[B]`` cotangents;
the kernel gradient is then assembled from all rows, so no ``[d, k]`` array is ever reduced
over devices. Per device, everything communicated is ``O(B d)``, whatever ``k``.

Gradient semantics under ``class_axis_name``. The per-example outputs are the same on
every device of the class axis; differentiating one device's copy gives each kernel block
exactly the gradient of that (global-over-classes) value with respect to its own columns,
and the logits' slice its own gradient -- no factor ``n``, under ``check_vma=True`` and
``False`` alike (the class-axis sums are ``custom_vjp`` s whose transpose is the identity,
which is what ``psum`` transposes to under ``check_vma=True``). Features, replicated over the
class axis, get the full radius gradient on every device. Over the data axis (``axis_name``)
nothing changes: ``pmm_loss`` returns shares whose ``pmean`` (and that of their gradients) is
the global value.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pmm_jax._src import numerics

Array = jax.Array
_INT_MAX = np.iinfo(np.int32).max


def axis_names(name) -> tuple:
    """``None``, a name or a (nested) tuple of names -> a flat tuple of names."""
    if name is None:
        return ()
    if isinstance(name, (tuple, list)):
        return tuple(n for part in name for n in axis_names(part))
    return (name,)


@dataclasses.dataclass(frozen=True)
class HeadAxes:
    """Mesh axes a head is split over (inside ``shard_map`` / ``pmap``).

    ``logit_classes``: axes the logits' class dimension is split over; ``kernel_classes``
    and ``kernel_features``: axes the kernel's ``k`` and ``d`` dimensions are split over.
    ``class_axis_name="model"`` is ``HeadAxes(("model",), ("model",), ())``.
    """

    logit_classes: tuple = ()
    kernel_classes: tuple = ()
    kernel_features: tuple = ()

    @classmethod
    def from_class_axis_name(cls, class_axis_name) -> HeadAxes | None:
        names = axis_names(class_axis_name)
        return cls(names, names, ()) if names else None


# --- per-device helpers ----------------------------------------------------------------


def class_offset(axes: tuple, k_local: int) -> Array:
    """Global class id of this device's first local column."""
    if not axes:
        return jnp.int32(0)
    return (lax.axis_index(axes) * k_local).astype(jnp.int32)


def _localize(idx: Array, offset: Array, k_local: int) -> tuple[Array, Array]:
    """Global class ids -> (local ids clipped into range, owned here)."""
    local = idx.astype(jnp.int32) - offset
    owned = (local >= 0) & (local < k_local)
    return jnp.clip(local, 0, k_local - 1), owned


def gather_rows(x: Array, axes: tuple) -> Array:
    """Concatenates ``x`` over ``axes`` (device order), typed invariant over them.

    Written as a ``psum`` of zero-padded blocks: exact (only zeros are added) and, unlike
    ``all_gather``, invariant under ``check_vma=True``. Used for ``[B]`` vectors only.
    """
    if not axes:
        return x
    dtype = x.dtype
    if dtype == jnp.bool_:
        x = x.astype(jnp.int32)
    n = lax.axis_size(axes)
    blocks = jnp.zeros((n, *x.shape), x.dtype)
    blocks = lax.dynamic_update_index_in_dim(blocks, x, lax.axis_index(axes), 0)
    out = lax.psum(blocks, axes).reshape((n * x.shape[0], *x.shape[1:]))
    return out.astype(dtype)


def own_rows(x: Array, axes: tuple, n_local: int) -> Array:
    """This device's ``n_local`` rows of an array gathered by :func:`gather_rows`."""
    if not axes:
        return x
    return lax.dynamic_slice_in_dim(x, lax.axis_index(axes) * n_local, n_local)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def psum_identical(x: Array, axes: tuple) -> Array:
    """``psum`` over ``axes`` of a value whose result every device treats as its own.

    The transpose is the identity (the cotangent, the same on every device, goes back to
    each summand), which is what ``psum`` transposes to under ``check_vma=True``; with
    ``check_vma=False`` JAX would instead ``psum`` the cotangents and count each class
    shard's contribution ``n`` times.
    """
    return lax.psum(x, axes)


def _psum_identical_fwd(x, axes):
    return lax.psum(x, axes), x.reshape(-1)[:0]  # an empty array typed like x (vma)


def _psum_identical_bwd(axes, like, g):
    return (numerics.vary_like(g, like),)


psum_identical.defvjp(_psum_identical_fwd, _psum_identical_bwd)


def _batch_gather_axes(labels: Array, kernel: Array, head: HeadAxes) -> tuple:
    """Batch axes over which the rows must be gathered (see the module docstring).

    Under ``check_vma=True``: the axes ``labels`` vary over and the kernel does not (its
    gradient must be summed over them), and those the kernel's blocks are split over (a
    device needs every row its block contributes to). Empty with ``check_vma=False``, where
    nothing is known (the caller sums the data-parallel gradient, as always).
    """
    rows = numerics.varying_axes(labels)
    if not rows:
        return ()
    split = set(head.kernel_classes) | set(head.kernel_features)
    kernel_vma = numerics.varying_axes(kernel)
    if rows & set(head.logit_classes):
        raise ValueError(
            f"`labels` vary over the class axis {head.logit_classes}: every device along "
            "`class_axis_name` must hold the same examples. Split the batch over the data "
            "axis only (pass that one as `axis_name`)."
        )
    return tuple(sorted((rows - kernel_vma) | (rows & split), key=str))


# --- the competitor ----------------------------------------------------------------------


def competitor_classes(logits: Array, labels: Array, axes: tuple) -> Array:
    """Two-stage ``argmax_{j != y_i}`` over class-sharded logits; global ids, ``int32[B]``.

    Equal to ``jnp.argmax`` over the whole row with the true class masked to ``-inf``:
    ties go to the lowest global index, within a shard and across shards; a NaN wins (the
    first NaN in global order). If every wrong score is ``-inf`` (or the argmax lands on the
    true class), ``(y_i + 1) % k`` -- as on one device.
    """
    k_local = logits.shape[-1]
    offset = class_offset(axes, k_local)
    labels = labels.astype(jnp.int32)
    ids = offset + jnp.arange(k_local, dtype=jnp.int32)
    scores = lax.stop_gradient(logits)
    masked = jnp.where(ids[None, :] == labels[:, None], jnp.array(-jnp.inf, scores.dtype), scores)
    local = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    best = jnp.take_along_axis(masked, local[:, None], axis=-1)[:, 0]
    winner = offset + local
    if axes:
        nan = jnp.isnan(best)
        any_nan = lax.pmax(nan.astype(jnp.int32), axes) > 0
        top = lax.pmax(jnp.where(nan, jnp.array(-jnp.inf, best.dtype), best), axes)
        holds_top = jnp.where(any_nan, nan, best == top)
        winner = lax.pmin(jnp.where(holds_top, winner, _INT_MAX), axes)
    k = k_local * (lax.axis_size(axes) if axes else 1)
    if k < 2:
        raise ValueError(
            f"PMM needs at least 2 classes; the logits over the class axis {axes} have k={k}."
        )
    return jnp.where(winner == labels, (labels + 1) % k, winner)


# --- ||w_y - w_m||^2 over a split kernel -----------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def pair_sq_dist(head: HeadAxes, gather: tuple, n_local: int, kernel, labels, competitors):
    """``||w_{y_i} - w_{m_i}||^2`` (float32, ``[B_loc]``) from a kernel block ``[d_f, k_c]``."""
    return _pair_sq_dist_fwd(head, gather, n_local, kernel, labels, competitors)[0]


def _pair_sq_dist_fwd(head, gather, n_local, kernel, labels, competitors):
    k_local = kernel.shape[1]
    labels, competitors = gather_rows(labels, gather), gather_rows(competitors, gather)
    offset = class_offset(head.kernel_classes, k_local)
    acc = numerics.acc_dtype(kernel.dtype)
    # Classes owned elsewhere get a sentinel id beyond the sorted assembly's drop slots.
    sentinel = k_local + 2 * labels.shape[0]
    cols, local_ids = [], []
    for idx in (labels, competitors):
        local, owned = _localize(idx, offset, k_local)
        col = jnp.take(kernel, local, axis=1, mode="clip").astype(acc)  # [d_f, B]
        cols.append(jnp.where(owned[None, :], col, 0.0))
        local_ids.append(jnp.where(owned, local, sentinel))
    diff = cols[0] - cols[1]
    if head.kernel_classes:
        diff = lax.psum(diff, head.kernel_classes)  # [d_f, B]: one owner per column
    sq = jnp.sum(jnp.square(diff), axis=0)
    if head.kernel_features:
        sq = lax.psum(sq, head.kernel_features)
    sq = own_rows(sq, gather, n_local)
    return sq, (diff, *local_ids, kernel[:0])


def _pair_sq_dist_bwd(head, gather, n_local, res, g):
    diff, labels, competitors, like = res
    k_local = like.shape[1]
    contrib = (2.0 * gather_rows(g, gather))[None, :] * diff  # [d_f, B]
    grad = numerics.kernel_grad(contrib, labels, competitors, k_local)
    return numerics.vary_like(grad.astype(like.dtype), like), None, None


pair_sq_dist.defvjp(_pair_sq_dist_fwd, _pair_sq_dist_bwd)


def pair_terms(logits, labels, kernel, where, head: HeadAxes):
    """Class-parallel pair terms: competitors (global ids) and ``||w_y - w_m||^2``.

    As ``penalty.py`` computes them on one device.
    """
    competitors = competitor_classes(logits, labels, head.logit_classes)
    # Masked rows get the classes 0 and 1 (global ids; k >= 2), their result is zeroed.
    labels, competitors = numerics.sanitize(labels, competitors, where, 2)
    gather = _batch_gather_axes(labels, kernel, head)
    sq = pair_sq_dist(head, gather, labels.shape[0], kernel, labels, competitors)
    return labels, competitors, sq


# --- logits of given classes; the two built-in base losses ---------------------------------


def pick(logits: Array, idx: Array, axes: tuple) -> Array:
    """``logits[i, idx_i]`` for global class ids over class-sharded logits, ``[B]``."""
    if not axes:
        return numerics.pick(logits, idx)
    local, owned = _localize(idx, class_offset(axes, logits.shape[-1]), logits.shape[-1])
    vals = jnp.take_along_axis(logits, local[:, None], axis=-1)[:, 0]
    return psum_identical(jnp.where(owned, vals, jnp.zeros_like(vals)), axes)


def cross_entropy(logits: Array, labels: Array, axes: tuple) -> Array:
    """Softmax cross-entropy with integer labels over class-sharded logits, ``float32[B]``.

    A class-parallel log-sum-exp (``pmax`` of the row maxima, ``psum`` of the exponentials)
    minus the true-class logit from the device that owns it; as
    ``optax.losses.softmax_cross_entropy_with_integer_labels`` on the whole row.
    """
    x = logits.astype(numerics.acc_dtype(logits.dtype))
    top = lax.stop_gradient(jnp.max(x, axis=-1))
    if axes:
        top = lax.pmax(top, axes)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # as jax.nn.logsumexp: all -inf rows
    total = jnp.sum(jnp.exp(x - top[:, None]), axis=-1)
    if axes:
        total = psum_identical(total, axes)
    return jnp.log(total) + top - pick(x, labels, axes)


def multiclass_hinge(logits: Array, labels: Array, competitors: Array, axes: tuple) -> Array:
    """``max_j (s_j + 1 - [j = y]) - s_y = max(s_y, 1 + s_m) - s_y`` over class-sharded logits."""
    x = logits.astype(numerics.acc_dtype(logits.dtype))
    s_y, s_m = pick(x, labels, axes), pick(x, competitors, axes)
    return jnp.maximum(s_y, 1.0 + s_m) - s_y


_CROSS_ENTROPY = (optax.losses.softmax_cross_entropy_with_integer_labels,)
_HINGE = (optax.losses.multiclass_hinge_loss,)


def is_builtin_base_loss(base_loss) -> bool:
    return base_loss in _CROSS_ENTROPY or base_loss in _HINGE


def check_base_loss(base_loss) -> None:
    """Raises ``ValueError`` (naming the fix) unless ``base_loss`` is computed class-parallel."""
    if is_builtin_base_loss(base_loss):
        return
    raise ValueError(
        f"`base_loss={getattr(base_loss, '__name__', base_loss)!r}` cannot be computed over "
        "class-sharded logits: under `class_axis_name` pmm_loss computes only "
        "optax.losses.softmax_cross_entropy_with_integer_labels and "
        "optax.losses.multiclass_hinge_loss class-parallel. Compute your own base risk "
        "(e.g. with a log-sum-exp over the class axis) and add "
        "alpha * pmm_penalty(..., class_axis_name=...), or gather the logits first."
    )


def base_loss(fn, logits: Array, labels: Array, competitors: Array, axes: tuple) -> Array:
    """The per-example base loss ``fn`` over class-sharded logits (the built-in ones)."""
    check_base_loss(fn)
    if fn in _CROSS_ENTROPY:
        return cross_entropy(logits, labels, axes)
    return multiclass_hinge(logits, labels, competitors, axes)


# --- explicit-mesh jit: the layout read from the types --------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a head is laid out on an explicit mesh (each field a tuple of mesh axes)."""

    mesh: object
    batch: tuple
    head: HeadAxes


def _explicit_spec(x, ndim: int):
    """``(mesh, spec as tuples of names)`` if ``x`` is explicitly sharded, else ``None``."""
    if x is None:
        return None
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if mesh is None or spec is None:
        return None
    explicit = {
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == jax.sharding.AxisType.Explicit
    }
    entries = tuple(axis_names(s) for s in spec) + ((),) * (ndim - len(spec))
    if not any(entries) or not set().union(*entries) <= explicit:
        return None
    return mesh, entries


def explicit_layout(
    *, logits=None, labels=None, features=None, kernel=None, **_other
) -> Layout | None:
    """The layout to run under ``shard_map`` when the head is explicitly sharded, else ``None``.

    Routed: a kernel sharded over any mesh axis, or logits sharded over classes, on a mesh
    with ``AxisType.Explicit`` axes. (An explicitly sharded batch with a replicated head
    needs nothing of this: see ``_batch_axes`` in ``penalty.py``. Under ``AxisType.Auto``
    the types carry no sharding and XLA partitions the global program; what it
    communicates there is measured in ``docs/performance.md``.)
    """
    k_spec = _explicit_spec(kernel, 2)
    l_spec = _explicit_spec(logits, 2)
    if k_spec is None and (l_spec is None or not l_spec[1][1]):
        return None
    mesh = (k_spec or l_spec)[0]
    rows = (_explicit_spec(labels, 1), l_spec, _explicit_spec(features, 2))
    batch = next((s[1][0] for s in rows if s and s[1][0]), ())  # the batch's mesh axes
    features_axes, kernel_classes = k_spec[1] if k_spec else ((), ())
    logit_classes = kernel_classes or (l_spec[1][1] if l_spec else ())
    logit_classes = tuple(a for a in logit_classes if a not in batch)
    return Layout(mesh, batch, HeadAxes(logit_classes, kernel_classes, features_axes))


def _reshard(x, mesh, *spec):
    if x is None:
        return None
    return jax.sharding.reshard(x, NamedSharding(mesh, P(*(s or None for s in spec))))


def run_explicit(layout: Layout, body, arrays: dict, out_specs):
    """Runs ``body(head, batch_axes, **arrays)`` per device under ``shard_map``.

    ``arrays`` maps names to global arrays (or ``None``): ``logits``, ``labels``,
    ``features``, ``kernel``, ``where``, ``base`` (``[B]``) and ``radius`` (a scalar).
    Each is resharded to the layout first: the batch over ``layout.batch``, the logits'
    classes over the head's class axes, the features' ``d`` gathered (``O(B d)``); the
    kernel keeps its own sharding. A reshard that only slices costs no communication.
    """
    mesh, batch, head = layout.mesh, layout.batch, layout.head
    specs = {
        "logits": (batch, head.logit_classes),
        "labels": (batch,),
        "features": (batch, ()),
        "kernel": (head.kernel_features, head.kernel_classes),
        "where": (batch,),
        "base": (batch,),
        "radius": (),
    }
    names = [n for n, x in arrays.items() if x is not None]
    in_specs = tuple(P(*(s or None for s in specs[n])) for n in names)

    def per_device(*local):
        absent = dict.fromkeys(arrays)  # None for the arrays not given
        return body(head, batch, **{**absent, **dict(zip(names, local, strict=True))})

    def run(*args):
        args = [_reshard(x, mesh, *specs[n]) for n, x in zip(names, args, strict=True)]
        return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(*args)

    # Under an outer jit this is inlined; called eagerly, jit places the unsharded inputs.
    return jax.jit(run)(*(jnp.asarray(arrays[n]) for n in names))


def batch_spec(layout: Layout) -> P:
    return P(layout.batch or None)
