"""Batches on the mesh, from the host iterators or gathered on the device.

The training loop and its evaluation take every batch from here
(``experiments/run/loop.py``, ``experiments/run/evaluation.py``):

* :func:`train_blocks`: an iterator of training blocks ``[steps, seeds, batch,
  ...]`` (``steps_per_call`` steps of every seed's stream, in the documented
  order of ``experiments/data/order.py``), sharded over the mesh along the batch
  axis (:data:`BATCH_AXIS`), as ``Trainee.train_steps`` takes them;
* :func:`eval_batches`: the global batches of an evaluation split, in order, the
  last one padded (zero images, label 0, ``mask`` False), sharded along axis 0.

Two sources, the same batches:

* a dataset with ``device_data`` (CIFAR: the uint8 splits take ~180 MB) is held
  whole, replicated, on every device of the mesh (placed once per mesh, shared by
  the training stream and the evaluation splits); each block is gathered on the
  device by a jitted function of the first step (:func:`gather_train_block`,
  :func:`gather_eval_batch`): the permutation of each epoch is computed on the
  device, no host pipeline runs in the loop and nothing crosses the host-device
  link but the step number. With several hosts, every host holds the whole split
  and the gather's output is the global batch sharded over all devices, so each
  host's devices get the same rows as ``train_iter``'s host shards (hosts.py);
* any other dataset: its host iterators (``train_iter`` / ``eval_iter``), stacked
  and placed with ``pmm_jax.training.shard_batch_on_mesh``.

The augmentation is the dataset's ``preprocess``, inside the train step, in both.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from experiments.data import order
from experiments.data.base import Batch, Dataset, DeviceData
from experiments.data.hosts import host_batch_size
from pmm_jax import training

# Training blocks are [steps_per_call, seeds, batch, ...]: sharded on axis 2.
BATCH_AXIS = 2


def train_blocks(
    dataset: Dataset,
    seeds: Sequence[int],
    global_batch_size: int,
    steps_per_call: int,
    mesh: Mesh,
    *,
    start_step: int = 0,
) -> Iterator[Batch]:
    """The training stream of every seed in blocks of ``steps_per_call`` steps, from ``start_step``.

    Args:
      dataset: the dataset (its ``device_data`` if it has it, else ``train_iter``).
      seeds: one seed per row of the blocks' seed axis (the state's stacking order).
      global_batch_size: examples per step and seed, over all hosts.
      steps_per_call: steps per block.
      mesh: the data-parallel mesh (``pmm_jax.training.make_mesh``).
      start_step: the step the first block starts at (resuming).

    Returns:
      An endless iterator of ``{"x": [steps_per_call, len(seeds), global_batch_size,
      ...], "y": ...}`` global arrays sharded on axis :data:`BATCH_AXIS`.
    """
    seeds = [order.check_seed(s) for s in seeds]
    if steps_per_call < 1 or start_step < 0:
        raise ValueError(
            f"need steps_per_call >= 1 and start_step >= 0; got {steps_per_call}, {start_step}."
        )
    host_batch_size(global_batch_size, jax.process_index(), jax.process_count())
    training.check_divisible(global_batch_size, mesh.devices.size)
    data = dataset.device_data
    if data is not None:
        table, start, stop = data.train
        order.steps_per_epoch(stop - start, global_batch_size)  # checks first
        gather = _jitted_train_block(
            mesh, tuple(seeds), start, stop - start, global_batch_size, steps_per_call
        )
        tables = _placed(data, mesh)
        return (gather(tables[table], step) for step in itertools.count(start_step, steps_per_call))
    procs = jax.process_index(), jax.process_count()
    iters = [
        dataset.train_iter(seed, global_batch_size, *procs, start_step=start_step) for seed in seeds
    ]
    return (
        training.shard_batch_on_mesh(
            _stack([_stack([next(it) for it in iters]) for _ in range(steps_per_call)]),
            mesh,
            batch_axis=BATCH_AXIS,
        )
        for _ in itertools.repeat(None)
    )


def eval_batches(
    dataset: Dataset, split: str, global_batch_size: int, mesh: Mesh
) -> Iterator[Batch]:
    """The global batches of ``split``, in order, the last padded, sharded on axis 0."""
    data = dataset.device_data
    if data is None:
        procs = jax.process_index(), jax.process_count()
        return (
            training.shard_batch_on_mesh(batch, mesh)
            for batch in dataset.eval_iter(split, global_batch_size, *procs)
        )
    if split not in data.eval:
        raise ValueError(f"Unknown eval split {split!r}; this dataset has {dataset.eval_splits}.")
    host_batch_size(global_batch_size, jax.process_index(), jax.process_count())
    training.check_divisible(global_batch_size, mesh.devices.size)
    table, start, stop = data.eval[split]
    gather = _jitted_eval_batch(mesh, start, stop - start, global_batch_size)
    tables = _placed(data, mesh)
    count = math.ceil((stop - start) / global_batch_size)
    return (gather(tables[table], index) for index in range(count))


def gather_train_block(
    table: Batch, seeds, step0, *, start: int, n: int, global_batch_size: int, steps: int
) -> Batch:
    """Training block ``[steps, seeds, batch, ...]`` of steps ``step0, step0 + 1, ...``.

    Pure and jit-able: row ``b`` of step ``t`` of seed ``s`` is row ``start + i`` of
    ``table`` with ``i`` the record that the order of ``experiments/data/order.py``
    puts at position ``b`` of global batch ``t`` (``n`` records, batch
    ``global_batch_size``). Each epoch's permutation is computed once per block.

    Args:
      table: ``{"x": [M, ...], "y": [M]}`` arrays (on the device).
      seeds: uint32 ``[S]``.
      step0: the first step (a traced integer).
      start: the training stream's first row of ``table``.
      n: the number of records of the training stream.
      global_batch_size: ``B``.
      steps: the block's steps (static).
    """
    per_epoch = order.steps_per_epoch(n, global_batch_size)
    epochs = min(steps, (steps - 1) // per_epoch + 2)  # the most a block can touch
    t = step0 + jnp.arange(steps)
    first = step0 // per_epoch
    perms = jax.vmap(
        lambda s: jax.vmap(lambda e: order.permutation(s, e, n, jnp))(first + jnp.arange(epochs))
    )(seeds)  # [S, epochs, n]
    epoch = (t // per_epoch - first)[:, None, None]  # [steps, 1, 1]
    pos = ((t % per_epoch)[:, None] * global_batch_size + jnp.arange(global_batch_size))[:, None]
    rows = start + perms[jnp.arange(perms.shape[0])[None, :, None], epoch, pos]
    return jax.tree.map(lambda a: a[rows], table)


def gather_eval_batch(table: Batch, index, *, start: int, n: int, global_batch_size: int) -> Batch:
    """Global batch ``index`` of rows ``[start, start + n)`` of ``table``, padded.

    Pure and jit-able; the rows past the split are zero with ``mask`` False, as the
    host iterators pad.
    """
    pos = index * global_batch_size + jnp.arange(global_batch_size)
    mask = pos < n
    rows = start + jnp.where(mask, pos, 0)

    def take(a):
        a = a[rows]
        return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a))

    return {**jax.tree.map(take, table), "mask": mask}


@functools.lru_cache(maxsize=32)
def _jitted_train_block(mesh: Mesh, seeds: tuple[int, ...], start, n, global_batch_size, steps):
    seed_array = np.asarray(seeds, np.uint32)
    fn = functools.partial(
        gather_train_block, start=start, n=n, global_batch_size=global_batch_size, steps=steps
    )
    return jax.jit(
        lambda table, step0: fn(table, seed_array, jnp.asarray(step0, jnp.int32)),
        out_shardings=training.batch_sharding(mesh, batch_axis=BATCH_AXIS),
    )


@functools.lru_cache(maxsize=32)
def _jitted_eval_batch(mesh: Mesh, start, n, global_batch_size):
    fn = functools.partial(gather_eval_batch, start=start, n=n, global_batch_size=global_batch_size)
    return jax.jit(fn, out_shardings=training.batch_sharding(mesh, batch_axis=0))


def _placed(data: DeviceData, mesh: Mesh) -> dict[str, Batch]:
    """``data``'s tables replicated on ``mesh`` (placed on the first call per mesh)."""
    return data.on_mesh(mesh, training.replicate_on_mesh)


def _stack(batches):
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
