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
the global array from the process-local pieces.
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


def shard_batch_on_mesh(local_batch, mesh: Mesh, axis_name: str = DATA_AXIS):
    """Host-local numpy batch -> global arrays sharded ``P(axis_name)`` on ``mesh``.

    Each process passes its own rows; the global batch is their concatenation
    in process order. Raises ``ValueError`` when the global batch does not split
    evenly over the mesh's devices.
    """
    sharding = NamedSharding(mesh, P(axis_name))
    num_devices = mesh.shape[axis_name]
    procs = jax.process_count()

    def put(path, x):
        x = _batched_leaf(path, x)
        global_shape = (x.shape[0] * procs, *x.shape[1:])
        check_divisible(global_shape[0], num_devices)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map_with_path(put, local_batch)


_UNKNOWN = object()


def _built_axis_name(step: Callable):
    """The ``axis_name`` a ``make_train_step``/``make_eval_step`` step was built with."""
    return getattr(step, "axis_name", _UNKNOWN)


def jit_sharded(step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """Jits ``step(state, batch)`` for a replicated state and a ``P("data")`` batch.

    Outputs (new state, metrics) are replicated. The state's buffers are donated
    (``donate_argnums=0``) unless ``donate=False``. A step from
    :func:`make_train_step` must have been built with ``axis_name=None`` (the batch
    is global inside a sharded ``jit``); one built for ``pmap`` is refused.
    """
    built = _built_axis_name(step)
    if built is not _UNKNOWN and built is not None:
        raise ValueError(
            f"This step was built with axis_name={built!r} (for pmap / shard_map); under "
            "jit_sharded the batch is global and there is no mapped axis. Build it with "
            "make_train_step(..., axis_name=None), or use pmap_step."
        )
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(mesh.axis_names[0]))
    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=replicated,
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


def _batched_leaf(path, x) -> np.ndarray:
    """``x`` as an array with a leading batch axis; a clear error for a scalar leaf."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(
            f"Batch leaf {jax.tree_util.keystr(path) or '(root)'} is a scalar ({x!r}); every "
            "leaf of a batch needs a leading batch axis. Keep per-batch constants out of the "
            "batch (close over them), or give them one row per example."
        )
    return x
