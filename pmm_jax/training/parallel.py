"""Data parallelism: sharded ``jit`` over a mesh (recommended) and ``pmap`` (legacy).

Sharded jit (current JAX): one program over global arrays. The batch is sharded
``P("data")`` over a 1-D device mesh, the train state replicated. Inside the
step the batch is global, so build the step with ``axis_name=None``::

    mesh = make_mesh()                           # all devices, axis "data"
    step = jit_sharded(make_train_step(alpha=...), mesh)
    state = replicate_on_mesh(state, mesh)
    for local_batch in data:                     # this process's rows
        state, metrics = step(state, shard_batch_on_mesh(local_batch, mesh))

The mesh axis type is chosen deliberately: ``jax.make_mesh`` defaults to
``AxisType.Explicit`` (sharding in types), where every op whose output sharding
is ambiguous must be told; Flax layers and many user models are written for
``AxisType.Auto`` (the compiler propagates shardings), which is our default.
The PMM functions themselves work under both (tested).

pmap (what many existing codebases run; ``jit(shard_map)`` underneath in JAX >=
0.10): per-device programs with a leading device axis. Build the step with
``axis_name`` so the radius is the collective max and gradients are averaged::

    step = pmap_step(make_train_step(alpha=..., axis_name="batch"), axis_name="batch")
    state = replicate(state)
    state, metrics = step(state, split_for_devices(local_batch))

Multi-host: call ``jax.distributed.initialize()`` first; each process then feeds
its own rows (``global_batch // process_count``); ``shard_batch_on_mesh`` builds
the global array from the process-local pieces, and ``gather_to_host`` brings
sharded outputs back to every process as numpy.

The batch axis need not be the leading one: ``batch_axis=k`` shards axis ``k``
(``P(None, ..., "data")``), e.g. ``[steps, seeds, batch, ...]`` batches of
several seeds trained together and several steps fused into one call::

    step = jit_sharded(multi_step, mesh, batch_axis=2)
    state, metrics = step(state, shard_batch_on_mesh(batches, mesh, batch_axis=2))

and an evaluation step whose outputs are per example (``[seeds, batch]``) keeps
them sharded with ``out_batch_axis=1`` instead of replicating them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(
    num_devices: int | None = None,
    *,
    axis_name: str = DATA_AXIS,
    axis_type: AxisType = AxisType.Auto,
    devices=None,
) -> Mesh:
    """A 1-D data-parallel mesh over all (or the first ``num_devices``) devices."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"`num_devices`={num_devices} but {len(devices)} devices exist.")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (axis_name,), axis_types=(axis_type,), devices=devices)


def check_divisible(global_batch_size: int, num_devices: int, what: str = "global batch") -> None:
    """Raises a clear ``ValueError`` unless the batch splits evenly over devices."""
    if global_batch_size % num_devices:
        raise ValueError(
            f"The {what} of {global_batch_size} examples does not split over {num_devices} "
            f"devices; use a batch size that is a multiple of {num_devices} (e.g. "
            f"{(global_batch_size // num_devices + 1) * num_devices})."
        )


def replicate_on_mesh(tree, mesh: Mesh):
    """Places every leaf of ``tree`` on all devices of ``mesh`` (replicated)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _global_from_replicated(x, sharding), tree)


def _global_from_replicated(x, sharding):
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)


def batch_sharding(
    mesh: Mesh, *, batch_axis: int = 0, axis_name: str | None = None
) -> NamedSharding:
    """The sharding of a batch split over ``mesh`` along its axis ``batch_axis``.

    Args:
      mesh: a 1-D data-parallel mesh (:func:`make_mesh`).
      batch_axis: the batch axis of every leaf; the axes before it (e.g. fused
        steps, stacked seeds) are not split.
      axis_name: the mesh axis to split over; ``None``: the mesh's first axis.

    Returns:
      ``NamedSharding(mesh, P(None, ..., axis_name))`` with ``batch_axis`` Nones.
    """
    if batch_axis < 0:
        raise ValueError(f"`batch_axis` must be >= 0, got {batch_axis}.")
    axis_name = mesh.axis_names[0] if axis_name is None else axis_name
    return NamedSharding(mesh, P(*([None] * batch_axis), axis_name))


def shard_batch_on_mesh(
    local_batch, mesh: Mesh, axis_name: str = DATA_AXIS, *, batch_axis: int = 0
):
    """Host-local numpy batch -> global arrays sharded over ``axis_name`` on ``mesh``.

    Each process passes its own rows; the global batch is their concatenation
    in process order along ``batch_axis`` (default 0: ``P(axis_name)``; e.g. 2
    for ``[steps, seeds, batch, ...]`` batches: ``P(None, None, axis_name)``).
    Raises ``ValueError`` when the global batch does not split evenly over the
    mesh's devices, or a leaf has no axis ``batch_axis``.
    """
    sharding = batch_sharding(mesh, batch_axis=batch_axis, axis_name=axis_name)
    num_devices = mesh.shape[axis_name]
    procs = jax.process_count()

    def put(path, x):
        x = _batched_leaf(path, x, batch_axis)
        global_shape = list(x.shape)
        global_shape[batch_axis] *= procs
        check_divisible(global_shape[batch_axis], num_devices)
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return jax.tree_util.tree_map_with_path(put, local_batch)


def gather_to_host(tree):
    """Every leaf of ``tree`` as a numpy array holding the *global* value, on every process.

    With one process this is ``np.asarray``; with several, arrays sharded across
    processes (e.g. per-example outputs sharded over the batch) are all-gathered
    first, so each process gets the whole of them.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


_UNKNOWN = object()


def _built_axis_name(step: Callable):
    """The ``axis_name`` a ``make_train_step``/``make_eval_step`` step was built with."""
    return getattr(step, "axis_name", _UNKNOWN)


def jit_sharded(
    step: Callable,
    mesh: Mesh,
    *,
    donate: bool = True,
    batch_axis: int = 0,
    out_batch_axis: int | None = None,
) -> Callable:
    """Jits ``step(state, batch)`` for a replicated state and a batch sharded over ``mesh``.

    Args:
      step: ``(state, batch) -> outputs``. A step from :func:`make_train_step` must
        have been built with ``axis_name=None`` (the batch is global inside a
        sharded ``jit``); one built for ``pmap`` is refused.
      mesh: a 1-D data-parallel mesh (:func:`make_mesh`).
      donate: donate the state's buffers (``donate_argnums=0``).
      batch_axis: the batch's sharded axis (see :func:`batch_sharding`); 0 for
        ``[batch, ...]``, 2 for ``[steps, seeds, batch, ...]``.
      out_batch_axis: ``None`` (default): the outputs (new state, metrics) are
        replicated. An int: every output leaf is sharded along that axis instead,
        for per-example outputs (e.g. 1 for ``[seeds, batch]``); bring them to
        the host with :func:`gather_to_host`.

    Returns:
      The jitted step.
    """
    built = _built_axis_name(step)
    if built is not _UNKNOWN and built is not None:
        raise ValueError(
            f"This step was built with axis_name={built!r} (for pmap / shard_map); under "
            "jit_sharded the batch is global and there is no mapped axis. Build it with "
            "make_train_step(..., axis_name=None), or use pmap_step."
        )
    replicated = NamedSharding(mesh, P())
    data = batch_sharding(mesh, batch_axis=batch_axis)
    out = replicated if out_batch_axis is None else batch_sharding(mesh, batch_axis=out_batch_axis)
    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=out,
        donate_argnums=(0,) if donate else (),
    )


def pmap_step(step: Callable, *, axis_name: str = "batch", donate: bool = True) -> Callable:
    """``jax.pmap`` of ``step(state, batch)``; the state replicated, the batch split.

    A step from :func:`make_train_step` / :func:`make_eval_step` must have been built
    with the same ``axis_name``: without it every replica would use its own radius
    and its own gradients and the replicas would drift apart, silently. That is
    refused here, with the fix in the message.
    """
    built = _built_axis_name(step)
    if built is not _UNKNOWN and built != axis_name:
        raise ValueError(
            f"pmap_step(axis_name={axis_name!r}) got a step built with axis_name={built!r}: "
            "the radius would be per device and the gradients not averaged, so the "
            "replicas would diverge. Build it with "
            f"make_train_step(..., axis_name={axis_name!r})."
        )
    return jax.pmap(step, axis_name=axis_name, donate_argnums=(0,) if donate else ())


def replicate(tree, num_devices: int | None = None):
    """Stacks ``tree`` once per local device (the leading axis ``pmap`` expects)."""
    n = jax.local_device_count() if num_devices is None else num_devices
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def unreplicate(tree):
    """The first device's copy of a replicated pytree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_for_devices(local_batch, num_devices: int | None = None):
    """``[b, ...] -> [num_devices, b // num_devices, ...]`` for ``pmap``."""
    n = jax.local_device_count() if num_devices is None else num_devices

    def split(path, x):
        x = _batched_leaf(path, x)
        check_divisible(x.shape[0], n, what="host-local batch")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree_util.tree_map_with_path(split, local_batch)


def _batched_leaf(path, x, batch_axis: int = 0) -> np.ndarray:
    """``x`` as an array with a batch axis ``batch_axis``; a clear error for a leaf without."""
    x = np.asarray(x)
    if x.ndim <= batch_axis:
        what = f"is a scalar ({x!r})" if x.ndim == 0 else f"has shape {x.shape}"
        where = "a leading batch axis" if batch_axis == 0 else f"a batch axis {batch_axis}"
        raise ValueError(
            f"Batch leaf {jax.tree_util.keystr(path) or '(root)'} {what}; every "
            f"leaf of a batch needs {where}. Keep per-batch constants out of the "
            "batch (close over them), or give them one row per example."
        )
    return x
