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
      eval_iter: ``(split, global_batch_size, process_index, process_count) ->
        iterator`` over the whole split once, the last batch padded (``mask``).
      eval_splits: split names that ``eval_iter`` accepts, e.g.
        ``("validation", "test")``.
      preprocess: ``(rng, batch, train) -> batch`` with ``"x"`` replaced by the
        model-ready input (see module docstring); identity-like for text.
      extra: anything dataset-specific (e.g. metric names for GLUE tasks).
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
