"""How a global batch is split over hosts: one rule for every input pipeline.

Every pipeline first builds the *global* stream (one shuffle of the whole split,
cut into global batches of ``global_batch_size`` consecutive examples), then host
``p`` of ``P`` takes rows ``[p b, (p + 1) b)`` of each global batch, ``b =
global_batch_size / P``. The global stream therefore does not depend on the number
of hosts (a run on 1 host and on 4 sees the same batches in the same order), and
the hosts' rows are disjoint and cover each global batch, in process order -- the
order ``pmm_jax.training.shard_batch_on_mesh`` concatenates them in.

Two forms of the same rule:

* :func:`host_rows`: the rows of a global batch held in memory (numpy arrays);
* :func:`host_batches`: a ``grain.MapDataset`` of examples -> this host's batches
  (batches of ``b`` consecutive examples, every ``P``-th one starting at ``p``).
"""

from __future__ import annotations

from typing import Any


def host_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """This host's share ``b = global_batch_size / process_count`` of a global batch.

    Raises:
      ValueError: ``process_index`` is not in ``[0, process_count)``, or the global
        batch does not split evenly over the processes.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}."
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"The global batch of {global_batch_size} examples does not split over "
            f"{process_count} processes; use a positive multiple of {process_count}."
        )
    return global_batch_size // process_count


def host_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that host ``process_index`` reads."""
    b = host_batch_size(global_batch_size, process_index, process_count)
    return slice(process_index * b, (process_index + 1) * b)


def host_batches(
    examples: Any,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    **batch_kwargs,
) -> Any:
    """This host's batches of a ``grain.MapDataset`` of examples in global order.

    Args:
      examples: a ``grain.MapDataset`` of single examples, in the order of the
        global stream (shuffled, repeated, mapped: everything before batching).
      global_batch_size: examples per global batch.
      process_index: this host, in ``[0, process_count)``.
      process_count: the number of hosts.
      **batch_kwargs: passed to ``MapDataset.batch`` (``drop_remainder``, ``batch_fn``).

    Returns:
      A ``grain.MapDataset`` whose element ``j`` is rows ``[p b, (p + 1) b)`` of
      global batch ``j`` (``b`` = :func:`host_batch_size`). Batching is lazy: only
      this host's rows are read.
    """
    b = host_batch_size(global_batch_size, process_index, process_count)
    return examples.batch(b, **batch_kwargs)[process_index::process_count]
