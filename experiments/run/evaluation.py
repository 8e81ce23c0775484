"""Evaluation of a method's seeds: during training (the curves, the best state), and
at the end (the best checkpoint, the final split, ``result.json``).

What is measured on a split is chosen by name (``experiments/evaluators.py``).
"""

from __future__ import annotations

import jax
import numpy as np

from experiments import evaluators
from experiments.config.identity import config_hash
from experiments.data import feed
from experiments.data.base import Dataset
from experiments.run.build import Trainee
from experiments.run.results import MethodResult
from experiments.run.session import Session
from experiments.run.workdir import write_json
from pmm_jax import training


def eval_outputs(
    trainee: Trainee, state, dataset: Dataset, split: str, batch_size: int
) -> evaluators.Outputs:
    """Per-example outputs ``[seeds, N]`` of the whole ``split`` (on every process)."""
    chunks = []
    for batch in feed.eval_batches(dataset, split, batch_size, trainee.mesh):
        chunks.append(training.gather_to_host(trainee.eval_step(state, batch)))
    return evaluators.collect(chunks)


def evaluate(trainee: Trainee, state, dataset: Dataset, split: str, batch_size: int):
    """``{metric: float[seeds]}`` of the trainee's evaluators on the whole ``split``."""
    outs = eval_outputs(trainee, state, dataset, split, batch_size)
    return evaluators.evaluate(outs, trainee.evaluators)


def during_training(s: Session, state, step: int) -> None:
    """Evaluates on ``eval_split`` (a curve point); keeps the best state if asked."""
    split = s.config.eval_split
    ev = evaluate(s.trainee, state, s.dataset, split, s.config.eval_batch_size)
    s.log.write(
        step,
        {
            f"{split}/accuracy": float(ev["accuracy"].mean()),
            f"{split}/margin_mean": float(ev["margin_mean"].mean()),
        },
        curve_point={f"{split}_accuracy": ev["accuracy"].tolist()},
        wall_time_s=s.clock(),
    )
    if s.best_ckpt is not None and ev["accuracy"].mean() > s.log.meta.get("best_acc", -1.0):
        s.best_ckpt.save(state, force=True)
        s.log.set_meta(best_acc=float(ev["accuracy"].mean()), best_step=step)


def _best(s: Session, last_state, final_split: str) -> dict | None:
    """The best checkpoint's ``final_split`` accuracy (``None`` if none was saved)."""
    s.best_ckpt.wait()
    best_state = s.best_ckpt.restore_latest(last_state)
    s.best_ckpt.close()
    if best_state is None:
        return None
    best = evaluate(s.trainee, best_state, s.dataset, final_split, s.config.eval_batch_size)
    return {
        "step": s.log.meta.get("best_step"),
        f"{s.config.eval_split}_accuracy": s.log.meta.get("best_acc"),
        f"{final_split}_accuracy": best["accuracy"].tolist(),
    }


def finish(s: Session, state, *, runs_info: dict) -> MethodResult:
    """Final evaluations; writes ``test_examples.npz`` and ``result.json`` (process 0).

    ``runs_info``: how the method's runs shared a program, and in which forms
    (``extra["runs"]``)."""
    config, trainee, dataset = s.config, s.trainee, s.dataset
    final_split = config.get("final_split", "test")
    skipped = training.gather_to_host(training.nonfinite_steps(state)).reshape(-1)
    extra = {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(trainee.mesh.devices.size),
        "config": config.to_dict(),  # the effective config of this method
        # Steps skipped for non-finite gradients (optax.apply_if_finite), per seed.
        "nonfinite_steps": [int(n) for n in skipped],
        "runs": runs_info,
    }
    if (noise := dataset.extra.get("label_noise")) is not None:
        extra["label_noise"] = noise(trainee.seeds)  # the fractions actually flipped
    if "alpha_calibration" in s.log.meta:
        extra["alpha_calibration"] = s.log.meta["alpha_calibration"]
    if s.best_ckpt is not None and (best := _best(s, state, final_split)) is not None:
        extra["best"] = best
    outs = eval_outputs(trainee, state, dataset, final_split, config.eval_batch_size)
    final = evaluators.evaluate(outs, trainee.evaluators)
    extra["final_metrics"] = evaluators.to_lists(final, exclude=evaluators.MARGIN_METRICS)
    if config.get("evaluate_all_splits", False):
        extra["splits"] = evaluators.per_split(
            lambda split: evaluate(trainee, state, dataset, split, config.eval_batch_size),
            dataset.eval_splits,
            done={final_split: final},
        )
    wall = s.clock()
    s.log.set_meta(wall_time_s=wall)
    s.log.close()
    _write_examples(s.dir.examples, outs)
    result = MethodResult(
        name=s.name,
        seeds=trainee.seeds,
        final_split=final_split,
        final_accuracy=final["accuracy"].tolist(),
        final_loss=final["loss"].tolist(),
        margin_mean=final["margin_mean"].tolist(),
        margin_p10=final["margin_p10"].tolist(),
        curves=s.log.curves(),
        wall_time_s=wall,
        steps=s.plan.total,
        config_hash=config_hash(config),
        extra=extra,
    )
    write_json(s.dir.result, result.to_json())
    return result


def _write_examples(path: str, outs: evaluators.Outputs) -> None:
    """The final split's margins (all seeds), seed 0's features and the labels, for the
    report's plots; process 0 only."""
    if jax.process_index() != 0:
        return
    np.savez_compressed(
        path,
        margins=evaluators.normalized_margins(outs),
        pre_logits_seed0=outs["pre_logits"][0],
        label=outs["label"][0],
    )
