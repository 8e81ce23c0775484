"""GLUE (the paper's six tasks) through tensorflow-datasets and grain, tokenized for BERT.

Data must be prepared once, in the ``array_record`` format (random access)::

  python -m experiments.data.glue --tasks sst2,mrpc [--data_dir DIR]     # no TensorFlow
  tfds build glue/sst2 --file_format=array_record [--data_dir DIR]     # needs tensorflow

The pipeline never downloads: ``get_glue`` raises ``DatasetNotPreparedError`` at
once when the data is missing. ``glue`` is a "legacy" tfds builder, registered by
``import tensorflow_datasets`` only when TensorFlow imports; importing its module
(``tensorflow_datasets.text.glue``) registers it without TensorFlow, which this
module does. Neither reading nor preparing needs TensorFlow.

Batches follow ``experiments.data.base``: ``{"x": {"input_ids", "token_type_ids",
"attention_mask"}, "y", "mask" (evaluation only)}``, each ``x`` field
``int32[b, max_len]``.

Example::

  ds = get_glue("rte", load_tokenizer(ckpt_dir), max_len=128)
  batch = next(ds.train_iter(0, 32, 0, 1))
  for batch in ds.eval_iter("validation", 64, 0, 1): ...
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from tokenizers import Tokenizer

from experiments.data.base import Batch, Dataset, DatasetNotPreparedError
from experiments.data.hosts import host_batches
from experiments.data.text import TEXT_KEYS, configure, encode_pairs


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task as tfds stores it.

    Attributes:
      name: tfds config, ``glue/<name>``.
      text_fields: the one or two text features, in model order.
      num_classes: number of labels.
      eval_splits: labeled evaluation splits.
      paper_metric: what the paper reports: ``"accuracy"`` or ``"f1"``.
    """

    name: str
    text_fields: tuple[str, ...]
    num_classes: int
    eval_splits: tuple[str, ...] = ("validation",)
    paper_metric: str = "accuracy"


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        # Labels: entailment, neutral, contradiction.
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            3,
            eval_splits=("validation_matched", "validation_mismatched"),
        ),
        GlueTask("qnli", ("question", "sentence"), 2),  # entailment, not_entailment
        GlueTask("rte", ("sentence1", "sentence2"), 2),  # entailment, not_entailment
        GlueTask("qqp", ("question1", "question2"), 2, paper_metric="f1"),  # 1: duplicate
        GlueTask("mrpc", ("sentence1", "sentence2"), 2, paper_metric="f1"),  # 1: equivalent
        GlueTask("sst2", ("sentence",), 2),  # 1: positive
    )
}


def _tfds():
    import tensorflow_datasets as tfds

    # Registers the legacy `glue` builder without TensorFlow (see module docstring).
    import tensorflow_datasets.text.glue

    return tfds


def _task(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)}.")
    return GLUE_TASKS[task]


def _how_to_prepare(task: str, data_dir: str | None) -> str:
    where = f" --data_dir {data_dir}" if data_dir else ""
    return (
        f"Prepare it once (this downloads it):\n"
        f"  python -m experiments.data.glue --tasks {task}{where}\n"
        f"or, with tensorflow installed:\n"
        f"  tfds build glue/{task} --file_format=array_record{where}"
    )


def _data_sources(task: str, splits: Sequence[str], data_dir: str | None) -> dict[str, Any]:
    """``{split: random-access source}``; never downloads."""
    tfds = _tfds()
    builder = tfds.builder(f"glue/{task}", data_dir=data_dir)
    try:
        return {split: builder.as_data_source(split=split) for split in splits}
    except Exception as e:
        if not builder.is_prepared():
            raise DatasetNotPreparedError(
                f"glue/{task} is not prepared in {builder.data_dir}.\n"
                + _how_to_prepare(task, data_dir)
            ) from e
        file_format = builder.info.file_format
        if file_format is not None and file_format.value != "array_record":
            raise DatasetNotPreparedError(
                f"glue/{task} in {builder.data_dir} is stored as {file_format.value}; random "
                "access (grain) needs array_record. Delete that folder, then:\n"
                + _how_to_prepare(task, data_dir)
            ) from e
        raise


def prepare(task: str, data_dir: str | None = None) -> None:
    """Downloads and prepares ``glue/<task>`` as array_record (needs the network)."""
    _task(task)
    builder = _tfds().builder(f"glue/{task}", data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")


def get_glue(
    task: str,
    tokenizer: Tokenizer,
    *,
    max_len: int = 128,
    data_dir: str | None = None,
    num_threads: int = 4,
    prefetch: int = 8,
) -> Dataset:
    """The GLUE task ``task`` as an ``experiments.data.base.Dataset``.

    Args:
      task: one of ``GLUE_TASKS`` (``mnli, qnli, rte, qqp, mrpc, sst2``).
      tokenizer: the checkpoint's tokenizer (``experiments.data.text.load_tokenizer``);
        a private copy is configured for ``max_len``.
      max_len: tokens per example ``T``, special tokens included.
      data_dir: tfds data directory; ``None``: tfds's default (``TFDS_DATA_DIR``
        or ``~/tensorflow_datasets``).
      num_threads: grain threads that read and tokenize batches.
      prefetch: batches read ahead.

    Returns:
      The ``Dataset``. ``train_iter(seed, global_batch_size, process_index,
      process_count, *, start_step=0)`` shuffles the whole training split anew
      every epoch and yields this host's rows of each global batch
      (``experiments/data/hosts.py``: the global stream is the same for any
      number of hosts); ``eval_iter(split, ...)`` pads the split to whole global
      batches, every host yielding as many batches. ``extra`` holds the
      ``GlueTask`` and ``metrics``: the evaluators of the task's paper metric
      (``experiments/evaluators.py``).

    Raises:
      DatasetNotPreparedError: the task is not prepared in ``data_dir``.
    """
    spec = _task(task)
    sources = _data_sources(task, ("train", *spec.eval_splits), data_dir)
    # A private copy, configured once, then shared by the reading threads.
    tokenizer = configure(Tokenizer.from_str(tokenizer.to_str()), max_len=max_len)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)

    def to_batch(examples: Sequence[dict[str, Any]]) -> Batch:
        texts = [[ex[f] for ex in examples] for f in spec.text_fields]
        x = encode_pairs(tokenizer, *texts, max_len=max_len)
        y = np.asarray([int(ex["label"]) for ex in examples], np.int32)
        batch = {"x": x, "y": y}
        if "mask" in examples[0]:
            batch["mask"] = np.asarray([ex["mask"] for ex in examples], bool)
        return batch

    def train_iter(
        seed: int,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        *,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        # shuffle -> repeat: a different permutation of the whole split every epoch
        # (grain reseeds); then this host's rows of each global batch.
        ds = grain.MapDataset.source(sources["train"]).shuffle(seed=seed).repeat()
        ds = host_batches(
            ds,
            global_batch_size,
            process_index,
            process_count,
            drop_remainder=True,
            batch_fn=to_batch,
        )
        return iter(ds[start_step:].to_iter_dataset(read_options))

    def eval_iter(
        split: str, global_batch_size: int, process_index: int, process_count: int
    ) -> Iterator[Batch]:
        if split not in spec.eval_splits:
            raise ValueError(
                f"glue/{task} has evaluation splits {spec.eval_splits}, not {split!r}."
            )
        source = sources[split]
        n = len(source)
        total = -(-n // global_batch_size) * global_batch_size  # padded to whole batches
        padding = {"label": 0, "mask": False, **{f: "" for f in spec.text_fields}}

        def read(row):
            return {**source[int(row)], "mask": True} if row < n else padding

        ds = grain.MapDataset.range(total).map(read)
        ds = host_batches(ds, global_batch_size, process_index, process_count, batch_fn=to_batch)
        return iter(ds.to_iter_dataset(read_options))

    return Dataset(
        name=f"glue/{task}",
        num_classes=spec.num_classes,
        num_train=len(sources["train"]),
        input_spec={"x": {k: ((max_len,), "int32") for k in TEXT_KEYS}},
        train_iter=train_iter,
        eval_iter=eval_iter,
        eval_splits=spec.eval_splits,
        preprocess=_preprocess,
        extra={"task": spec, "metrics": _metric_names(task)},
    )


def _preprocess(rng, batch: Batch, train: bool) -> Batch:
    """Text needs no on-device preprocessing: the identity."""
    del rng, train
    return batch


def _metric_names(task: str) -> tuple[str, ...]:
    """The task's evaluators (``experiments/evaluators.py``): accuracy, and F1 where the
    paper reports it."""
    return ("accuracy", "f1") if _task(task).paper_metric == "f1" else ("accuracy",)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare GLUE tasks (array_record) for grain.")
    parser.add_argument("--tasks", required=True, help=f"comma-separated, of {sorted(GLUE_TASKS)}")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
    args = parser.parse_args(argv)
    for task in args.tasks.split(","):
        prepare(task.strip(), args.data_dir)


if __name__ == "__main__":
    main()
