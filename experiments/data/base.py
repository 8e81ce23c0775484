"""The dataset interface shared by every input pipeline and the training loop.

A batch is a dict of numpy arrays (host-local: this process's share of the
global batch):

* ``"x"``: the model input, an array or a dict of arrays (images
  ``uint8[b, H, W, C]``, signals ``float32[b, L, 1]``, text
  ``{"input_ids", "token_type_ids", "attention_mask"}`` each ``int32[b, T]``);
  the model is called as ``model.apply(variables, x, train=...)``;
* ``"y"``: ``int32[b]`` labels;
* ``"mask"``: ``bool[b]``, False on padding rows (evaluation batches only; the
  training stream is never padded).

``preprocess(rng, batch, train)`` runs *on the device*, inside the jitted step:
it returns the batch with ``"x"`` turned into model inputs (normalization, and
for ``train=True`` the random augmentation). It must be a pure JAX function of
``(rng, batch)`` that works per example (so it can run on any shard).

Two ways to feed the training loop, giving the same batches in the same order
(``experiments/data/order.py``): the host iterators ``train_iter`` / ``eval_iter``
(every dataset), and, for a dataset small enough to be held whole on every device
(CIFAR), ``device_data``: the splits as arrays, from which
``experiments/data/feed.py`` gathers each batch on the device -- no host pipeline
in the training loop. The trainer takes its batches from ``feed.train_blocks`` /
``feed.eval_batches``, which use ``device_data`` when the dataset has it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

Batch = dict[str, Any]


@dataclasses.dataclass
class Dataset:
    """What the training loop needs to know about a dataset.

    Attributes:
      name: e.g. ``"mnist1d"``, ``"cifar10"``, ``"glue/sst2"``.
      num_classes: number of classes ``k``.
      num_train: examples in the training split (for steps per epoch).
      input_spec: name -> (shape without batch, dtype) of one raw example, e.g.
        ``{"x": ((32, 32, 3), "uint8")}``; used to initialize models.
      train_iter: ``(seed, global_batch_size, process_index, process_count) ->
        iterator`` of host-local training batches of ``global_batch_size //
        process_count`` rows, forever, a new shuffle every epoch, deterministic in
        ``seed``; ``start_step`` (keyword) skips that many batches (for resuming).
        Image datasets follow the order of ``experiments/data/order.py``.
      eval_iter: ``(split, global_batch_size, process_index, process_count) ->
        iterator`` over the whole split once, the last batch padded (``mask``).
      eval_splits: split names that ``eval_iter`` accepts, e.g.
        ``("validation", "test")``.
      preprocess: ``(rng, batch, train) -> batch`` with ``"x"`` replaced by the
        model-ready input (see module docstring); identity-like for text.
      extra: anything dataset-specific (e.g. metric names for GLUE tasks).
      device_data: the splits as arrays to hold on the device (see
        :class:`DeviceData`), or ``None``: fed from the host iterators only.
    """

    name: str
    num_classes: int
    num_train: int
    input_spec: dict[str, tuple[tuple[int, ...], str]]
    train_iter: Callable[..., Iterator[Batch]]
    eval_iter: Callable[..., Iterator[Batch]]
    eval_splits: tuple[str, ...]
    preprocess: Callable[[Any, Batch, bool], Batch]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    device_data: DeviceData | None = None


# (table, start, stop): rows [start, stop) of a table of DeviceData.
Rows = tuple[str, int, int]


@dataclasses.dataclass
class DeviceData:
    """A dataset's splits as arrays, to be held whole on every device.

    The arrays are *tables* (``{"x": uint8[M, ...], "y": int32[M]}``); the
    training stream and each evaluation split are a range of rows of one table,
    so that splits sharing records (CIFAR's ``"train"`` evaluation split is the
    training stream) are held once. Record ``i`` of the training stream is row
    ``start + i`` of its table, in the same record order as ``train_iter``'s.

    Attributes:
      load: ``() -> {table: {"x": ..., "y": ...}}``, numpy arrays, called once
        (lazily: building the ``Dataset`` reads nothing; see :meth:`tables`).
      train: the training stream's ``(table, start, stop)``.
      eval: split name -> its ``(table, start, stop)`` (the same names as
        ``Dataset.eval_splits``).
      nbytes: the tables' size in bytes (what each device holds).
    """

    load: Callable[[], dict[str, Batch]]
    train: Rows
    eval: dict[str, Rows]
    nbytes: int
    # The tables once read, and their copies placed on each mesh (experiments/data/feed.py).
    _tables: dict[str, Batch] | None = dataclasses.field(default=None, init=False, repr=False)
    _placed: dict[Any, dict[str, Batch]] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )

    def tables(self) -> dict[str, Batch]:
        """The tables as numpy arrays (read on the first call, then kept)."""
        if self._tables is None:
            self._tables = self.load()
        return self._tables

    def on_mesh(self, mesh, place: Callable[[dict, Any], dict]) -> dict[str, Batch]:
        """The tables placed on ``mesh`` by ``place(tables, mesh)`` (once per mesh)."""
        if mesh not in self._placed:
            self._placed[mesh] = place(self.tables(), mesh)
        return self._placed[mesh]


# ``on_device="auto"`` holds a dataset on the device when its tables take at most
# this much of each device's memory.
DEVICE_BUDGET_BYTES = 2**30


def wants_device_data(on_device, nbytes: int) -> bool:
    """Whether a dataset of ``nbytes`` goes on the device, for ``on_device`` =
    ``"auto"`` (at most :data:`DEVICE_BUDGET_BYTES`), ``True`` or ``False`` (or
    ``"true"`` / ``"false"``, as a command line gives them).

    Raises:
      ValueError: for any other value.
    """
    if isinstance(on_device, str) and on_device.lower() in ("auto", "true", "false"):
        on_device = {"auto": "auto", "true": True, "false": False}[on_device.lower()]
    if on_device == "auto":
        return nbytes <= DEVICE_BUDGET_BYTES
    if isinstance(on_device, bool):
        return on_device
    raise ValueError(f'on_device must be "auto", True or False, got {on_device!r}.')


class DatasetNotPreparedError(RuntimeError):
    """A dataset that must be prepared once (``tfds build``) is not on disk."""


def _is_leaf_spec(spec) -> bool:
    return (
        isinstance(spec, (tuple, list))
        and len(spec) == 2
        and isinstance(spec[1], str)
        and isinstance(spec[0], (tuple, list))
    )


def sample_input(input_spec: dict, batch: int = 2, *, abstract: bool = False):
    """Zeros (or ``jax.ShapeDtypeStruct``s) shaped like a batch of ``input_spec["x"]``.

    ``input_spec["x"]`` is ``(shape, dtype)`` or a (nested) dict of them, e.g.
    ``{"input_ids": ((128,), "int32"), ...}`` for text.
    """
    import jax
    import jax.numpy as jnp

    def build(spec):
        if _is_leaf_spec(spec):
            shape, dtype = (batch, *spec[0]), jnp.dtype(spec[1])
            return jax.ShapeDtypeStruct(shape, dtype) if abstract else jnp.zeros(shape, dtype)
        return {k: build(v) for k, v in dict(spec).items()}

    return build(input_spec["x"])
