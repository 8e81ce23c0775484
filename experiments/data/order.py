"""The order of the training stream: one documented function of ``(seed, step)``.

Both ways of feeding a dataset follow it, so they give the same batches: the tfds
+ grain host pipeline (``experiments/data/images.py``, an explicit index sampler
over this order) and the device-resident path (``experiments/data/feed.py``,
which indexes the split held on the device inside a jitted function). Each
function here is written once over an array module ``xp``: ``numpy`` on the
host (also in grain's worker processes, without JAX) and ``jax.numpy`` on the
device (jit-able, ``vmap``-able over seeds); both compute the same integers.

The order of ``N`` records, global batch ``B``, seed ``s`` (``0 <= s < 2**32``):

* an epoch has ``S = N // B`` steps; global step ``t`` is step ``j = t mod S``
  of epoch ``e = t // S``;
* epoch ``e`` visits the records in the order :func:`permutation` ``(s, e, N)``:
  ``0..N-1`` sorted by the keys ``h(s, e, i)`` below (distinct keys, so the
  order is unambiguous);
* global batch ``t`` is entries ``[j B, (j + 1) B)`` of that order; the last
  ``N - S B`` entries of each epoch's order are left out (drop remainder: other
  records each epoch), so epoch ``e`` is exactly steps ``[e S, (e + 1) S)``;
* host ``p`` of ``P`` reads rows ``[p b, (p + 1) b)`` of each global batch,
  ``b = B / P`` (``experiments/data/hosts.py``).

The keys, in wrapping uint32 arithmetic, with ``f`` = MurmurHash3's 32-bit
finalizer (``fmix32``, a bijection of the uint32s; :func:`fmix32`)::

    u = f(s ^ 0x9E3779B9)      # the seed's stream
    v = f(u + e)               # the epoch's
    w = f(v ^ 0x7F4A7C15)
    h(s, e, i) = f(f(i + v) ^ w)

For fixed ``(s, e)``, ``i -> h(s, e, i)`` is a bijection, so the ``N`` keys are
distinct. The order does not depend on the JAX version or its PRNG settings, nor
on the number of hosts or devices.
"""

from __future__ import annotations

import collections.abc
import functools
from typing import Any

import numpy as np

_SEED_SALT = 0x9E3779B9
_EPOCH_SALT = 0x7F4A7C15


def fmix32(x, xp: Any = np):
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping arithmetic)."""
    x = x ^ (x >> xp.uint32(16))
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> xp.uint32(13))
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> xp.uint32(16))


def _as_uint32(value, xp: Any):
    # A shape-[1] array: numpy wraps silently in array arithmetic (not in scalar).
    return xp.reshape(xp.asarray(value).astype(xp.uint32), (1,))


def sort_keys(seed, epoch, n: int, xp: Any = np):
    """The keys ``h(seed, epoch, i)`` of records ``i < n`` (uint32 ``[n]``)."""
    u = fmix32(_as_uint32(seed, xp) ^ xp.uint32(_SEED_SALT), xp)
    v = fmix32(u + _as_uint32(epoch, xp), xp)
    w = fmix32(v ^ xp.uint32(_EPOCH_SALT), xp)
    i = xp.arange(n, dtype=xp.uint32)
    return fmix32(fmix32(i + v, xp) ^ w, xp)


def permutation(seed, epoch, n: int, xp: Any = np):
    """The records ``0..n-1`` in the order epoch ``epoch`` of seed ``seed`` visits them.

    Args:
      seed: a non-negative int below ``2**32`` (a traced integer under ``jax.numpy``).
      epoch: the epoch, likewise.
      n: the number of records (static).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      Integer ``[n]`` (int64 under numpy, int32 under ``jax.numpy``).
    """
    keys = sort_keys(seed, epoch, n, xp)
    if xp is np:
        return np.argsort(keys, kind="stable")
    return xp.argsort(keys, stable=True)


def steps_per_epoch(n: int, global_batch_size: int) -> int:
    """``n // global_batch_size``; a ``ValueError`` if the batch is larger than the split."""
    if global_batch_size < 1 or n < global_batch_size:
        raise ValueError(
            f"The global batch of {global_batch_size} examples needs at least that many "
            f"training examples; the split has {n}."
        )
    return n // global_batch_size


def check_seed(seed) -> int:
    """``seed`` as an int; a ``ValueError`` unless ``0 <= seed < 2**32``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")
    return int(seed)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = permutation(seed, epoch, n)
    perm.flags.writeable = False
    return perm


class TrainOrder(collections.abc.Sequence):
    """The record at each position of the training stream (numpy, for a host pipeline).

    Position ``q`` is entry ``q mod (S B)`` of epoch ``q // (S B)``'s permutation
    (``S = n // B`` steps per epoch), so global batch ``t`` is positions ``[t B,
    (t + 1) B)`` -- an explicit index sampler for ``grain.MapDataset.source``. The
    last few epochs' permutations are cached (per process).

    Args:
      seed: the seed (:func:`check_seed`).
      n: the number of records.
      global_batch_size: ``B``.
      epochs: how many epochs the sequence spans (its length is ``epochs S B``).
    """

    def __init__(self, seed: int, n: int, global_batch_size: int, *, epochs: int = 2**31):
        self.seed, self.n = check_seed(seed), int(n)
        self.per_epoch = steps_per_epoch(self.n, global_batch_size) * global_batch_size
        self.epochs = int(epochs)

    def __len__(self) -> int:
        return self.epochs * self.per_epoch

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[q] for q in range(*position.indices(len(self)))]
        position = int(position)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} out of range [0, {len(self)}).")
        epoch, entry = divmod(position, self.per_epoch)
        return int(_epoch_order(self.seed, epoch, self.n)[entry])
