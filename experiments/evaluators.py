"""Evaluators: per-seed metrics of a whole evaluation split, chosen by name.

The trainer's evaluation step gives, for every seed and every example of a split,
``correct``, ``loss``, ``pred``, ``label``, ``raw_margin`` and ``feature_norm``
(``pmm_jax.training.make_eval_step``); :func:`collect` gathers them into
per-example arrays ``[seeds, N]`` with the padding rows removed. An evaluator
turns those into per-seed numbers ``{metric: float[seeds]}``:

* ``"accuracy"``: the fraction of correct predictions;
* ``"loss"``: the mean base loss;
* ``"margins"``: ``margin_mean`` and ``margin_p10``, the mean and 10th percentile
  of the pairwise margins normalized by the split's feature radius (per seed);
* ``"f1"``: binary F1 with class 1 as the positive class (GLUE's QQP and MRPC).

Which evaluators run: :data:`CORE` always (what ``MethodResult`` records), then
those the config names in ``evaluators`` or, without that field, those the dataset
declares in ``dataset.extra["metrics"]`` (each GLUE task its paper metric). Which
splits: ``final_split``, and with ``evaluate_all_splits`` every split of the
dataset (:func:`per_split`; MNLI: matched and mismatched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Outputs = dict[str, np.ndarray]
Metrics = dict[str, np.ndarray]


def normalized_margins(outs: Outputs) -> np.ndarray:
    """``[seeds, N]`` pairwise margins divided by each seed's radius on the split."""
    radius = outs["feature_norm"].max(axis=1, keepdims=True)
    return outs["raw_margin"] / np.where(radius > 0, radius, 1.0)


def binary_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (``2 tp / (2 tp + fp + fn)``); 0 when there is nothing to score."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    tp = np.sum((predictions == 1) & (labels == 1))
    wrong = np.sum(predictions != labels)  # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def accuracy(outs: Outputs) -> Metrics:
    return {"accuracy": outs["correct"].mean(axis=1)}


def loss(outs: Outputs) -> Metrics:
    return {"loss": outs["loss"].mean(axis=1)}


def margins(outs: Outputs) -> Metrics:
    m = normalized_margins(outs)
    return {"margin_mean": m.mean(axis=1), "margin_p10": np.percentile(m, 10, axis=1)}


def f1(outs: Outputs) -> Metrics:
    per_seed = [binary_f1(p, y) for p, y in zip(outs["pred"], outs["label"], strict=True)]
    return {"f1": np.asarray(per_seed)}


EVALUATORS: dict[str, Callable[[Outputs], Metrics]] = {
    "accuracy": accuracy,
    "loss": loss,
    "margins": margins,
    "f1": f1,
}
EVALUATOR_NAMES = tuple(EVALUATORS)
# Every run: the numbers MethodResult records (final accuracy, loss and margins).
CORE = ("accuracy", "loss", "margins")
# Metrics recorded in MethodResult's own fields rather than in extra["final_metrics"].
MARGIN_METRICS = ("margin_mean", "margin_p10")


def select(config: Mapping[str, Any], declared: Sequence[str] = ()) -> tuple[str, ...]:
    """The evaluators of a run: :data:`CORE`, then ``config["evaluators"]`` or ``declared``.

    Args:
      config: the run's config (``evaluators``, if set, wins over ``declared``).
      declared: what the dataset declares (``dataset.extra.get("metrics", ())``).

    Raises:
      ValueError: a name that is not in :data:`EVALUATORS`.
    """
    chosen = tuple(config.get("evaluators") or declared or ())
    unknown = [n for n in chosen if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"Unknown evaluators {unknown}; known: {list(EVALUATOR_NAMES)}.")
    return tuple(dict.fromkeys((*CORE, *chosen)))


def collect(chunks: Iterable[Outputs]) -> Outputs:
    """Per-batch outputs ``{name: [seeds, b, ...]}`` -> the split's ``[seeds, N, ...]``.

    Rows whose ``mask`` is False (the padding of the last batch) are dropped.
    """
    chunks = list(chunks)
    outs = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
    mask = outs["mask"][0]
    return {k: v[:, mask] for k, v in outs.items()}


def evaluate(outs: Outputs, names: Sequence[str]) -> Metrics:
    """``{metric: float[seeds]}`` of every evaluator in ``names``, in that order."""
    metrics = {}
    for name in names:
        metrics.update(EVALUATORS[name](outs))
    return metrics


def to_lists(metrics: Metrics, exclude: Sequence[str] = ()) -> dict[str, list]:
    """Per-seed metrics as JSON lists, without ``exclude``."""
    return {k: np.asarray(v).tolist() for k, v in metrics.items() if k not in exclude}


def per_split(
    evaluate_split: Callable[[str], Metrics], splits: Sequence[str], done: Mapping[str, Metrics]
) -> dict[str, dict[str, list]]:
    """``{split: {metric: per-seed list}}`` for every split of ``splits``.

    Args:
      evaluate_split: ``split -> metrics``.
      splits: the splits, e.g. ``dataset.eval_splits``.
      done: metrics already computed, by split (not evaluated again).
    """
    return {s: to_lists(done[s] if s in done else evaluate_split(s)) for s in splits}
