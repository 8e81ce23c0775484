"""Hyperparameter sweep on a validation split: ``python -m experiments.sweep --workdir DIR``.

Runs the grid of a config's ``sweep`` block, each point for the config's seeds,
and evaluates on the *validation* split (held out of training), never on the
test set. The grid's families, each optional (points are named ``FAMILY_VALUE``):

* ``alphas``: PMM alpha with each schedule of ``alpha_schedules`` (default both):
  ``pmm_linear``, the paper's ramp shape (``alpha / 100 -> alpha``, the ratio of
  the paper's 1e-5 -> 1e-3), and ``pmm_constant``;
* ``stop_radius_alphas``: a constant alpha without the gradient through the
  radius r (``pmm_constant_stop_r``, a diagnostic);
* ``weight_decay_pmm_alphas``: the linear ramp on top of weight decay
  ``pmm_weight_decay`` (``weight_decay_pmm_linear``; the paper's setting: every
  baseline of the paper uses weight decay);
* ``hinge_alphas``: the linear ramp with the multiclass hinge as the base loss
  (``pmm_hinge_linear``, and the hinge loss alone, ``hinge_baseline``);
* ``paper_schedule``: the paper's own schedule as the paper ran it (``pmm_paper``:
  the official per-epoch ramp 1e-5 -> 1e-3 with ``penalty_reduction="official"``);
* ``weight_decays``, ``dropout_rates``: the baselines' own knobs, so that every
  method is compared at its best;
* ``layer_alphas``: the linear ramp with PMM at ``pmm_layers`` (hidden layers the
  model marks, and ``"head"``): ``pmm_layers_linear``;

plus ``baseline`` (the config as it is). The configs with a sweep:
``experiments/configs/sweep_mnist1d.py`` (the default: MNIST-1D, every family) and
``experiments/configs/tweets_minilm.py:sweep`` (constant alphas and the
stop-radius diagnostic). It writes ``sweep.json`` (every point, per-seed
accuracies, the best value of each family) and ``sweep_alpha.png`` (validation
accuracy vs alpha with error bars). Resumable like training: finished points are
read back.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.config import check
from experiments.config.fields import SWEEP_ALPHA_SCHEDULES
from experiments.config.methods import merge
from experiments.config.problems import MISSING, ConfigError, Problem
from experiments.configs.common import PAPER_RAMP, PAPER_SCHEDULE, ramp
from experiments.data.registry import get_dataset
from experiments.models import resolve_pretrained
from experiments.run import command
from experiments.run import workdir as wd
from experiments.run.job import train_method
from experiments.run.lock import workdir_lock

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PROG = "experiments.sweep"
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for the sweep's runs and results.")
config_flags.DEFINE_config_file(
    "config", os.path.join(CONFIG_DIR, "sweep_mnist1d.py"), "Sweep config file.", lock_config=True
)


def _constant(alpha: float, **extra) -> dict:
    return {"alpha_schedule": "constant", "alpha_end": alpha, **extra}


_SCHEDULES = {"linear": ramp, "constant": _constant}


def grid_points(config) -> list[tuple[str, float, dict]]:
    """``(family, value, overrides)`` for every run of the sweep, in the order they run."""
    sweep = config.sweep
    points = [("baseline", 0.0, {})]
    schedules = sweep.get("alpha_schedules", SWEEP_ALPHA_SCHEDULES)
    for alpha in sweep.get("alphas", ()):
        for schedule in schedules:
            points.append((f"pmm_{schedule}", alpha, {"pmm": _SCHEDULES[schedule](alpha)}))
    for alpha in sweep.get("stop_radius_alphas", ()):
        points.append(
            ("pmm_constant_stop_r", alpha, {"pmm": _constant(alpha, stop_radius_gradient=True)})
        )
    wd = sweep.get("pmm_weight_decay", 0.0)
    for alpha in sweep.get("weight_decay_pmm_alphas", ()):
        points.append(("weight_decay_pmm_linear", alpha, {"weight_decay": wd, "pmm": ramp(alpha)}))
    if sweep.get("hinge_alphas", ()):
        points.append(("hinge_baseline", 0.0, {"pmm": {"base_loss": "hinge"}}))
    for alpha in sweep.get("hinge_alphas", ()):
        points.append(("pmm_hinge_linear", alpha, {"pmm": ramp(alpha, base_loss="hinge")}))
    if sweep.get("paper_schedule", False):
        points.append(("pmm_paper", PAPER_RAMP[1], {"pmm": dict(PAPER_SCHEDULE)}))
    for wd in sweep.get("weight_decays", ()):
        points.append(("weight_decay", wd, {"weight_decay": wd}))
    for rate in sweep.get("dropout_rates", ()):
        points.append(("dropout", rate, {"model_kwargs": {"dropout_rate": rate}}))
    layers = tuple(sweep.get("pmm_layers", ("head",)))
    for alpha in sweep.get("layer_alphas", ()):
        points.append(("pmm_layers_linear", alpha, {"pmm": ramp(alpha, layers=layers)}))
    return points


def _without_sweep(config):
    base = merge(config, {})
    with base.unlocked():
        del base["sweep"]
    return base


def run_sweep(config, workdir: str, *, overrides: dict | None = None) -> dict:
    """Trains every grid point of ``config.sweep`` and writes ``sweep.json`` and the plot.

    Every point's config is checked before the data is read and again with the
    dataset's size and splits (``experiments/config/check.py``); ``overrides`` (the
    command line's ``--config.*``) that a point would shadow are refused. The
    workdir is locked for the whole sweep (one run per workdir).
    """
    if "sweep" not in config:
        allowed = "is required: the grid to run (a config without one: python -m experiments.train)"
        raise ConfigError([Problem("sweep", MISSING, allowed)])
    check.validate(config)  # the grid (config.sweep) and the base fields
    points = {
        f"{family}_{value:g}": (family, value, point)
        for family, value, point in grid_points(config)
    }
    grid = {name: point for name, (_, _, point) in points.items()}
    check.validate(_without_sweep(config), methods=grid, overrides=overrides, sweep=True)
    wd.prepare(workdir)
    with workdir_lock(workdir):
        config = resolve_pretrained(config)  # a BERT's checkpoint: its tokenizer, its shape
        return _run_points(config, _without_sweep(config), points, workdir)


def _run_points(config, base, points: dict, workdir: str) -> dict:
    grid = {name: point for name, (_, _, point) in points.items()}
    dataset = get_dataset(config.dataset, **config.dataset_kwargs)
    if "validation" not in dataset.eval_splits:
        raise ValueError("The sweep selects on a validation split; the dataset has none.")
    check.validate(base, methods=grid, num_train=dataset.num_train, eval_splits=dataset.eval_splits)
    rows = []
    for name, (family, value, point) in points.items():
        mdir = wd.method_dir(workdir, name).path
        result = train_method(merge(base, point), dataset, mdir, name=name)
        acc = np.asarray(result.final_accuracy)  # final_split="validation": validation accuracy
        rows.append(
            {
                "family": family,
                "value": value,
                "name": name,
                "val_accuracy": acc.tolist(),
                "val_accuracy_mean": float(acc.mean()),
                "val_accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                "margin_mean": float(np.mean(result.margin_mean)),
            }
        )
    selected = {}
    for family in sorted({r["family"] for r in rows}):
        # Ties go to the larger value: the stronger regularization among equals.
        best = max(
            (r for r in rows if r["family"] == family),
            key=lambda r: (r["val_accuracy_mean"], r["value"]),
        )
        selected[family] = {"value": best["value"], "val_accuracy_mean": best["val_accuracy_mean"]}
    out = {
        "dataset": dataset.name,
        "split": config.final_split,
        "seeds": list(config.seeds),
        "rows": rows,
        "selected": selected,
        "config": config.to_dict(),
    }
    wd.write_json(os.path.join(workdir, wd.SWEEP), out)
    plot_sweep(rows, os.path.join(workdir, "sweep_alpha.png"))
    print("\nvalidation accuracy (mean ± std over seeds):")
    for r in rows:
        print(
            f"  {r['family']:<13} {r['value']:<8g} {100 * r['val_accuracy_mean']:6.2f} ± "
            f"{100 * r['val_accuracy_std']:.2f}"
        )
    print("selected:", json.dumps(selected))
    return out


# (family, label) of the swept PMM curves, per panel: cross-entropy, then hinge.
_PANELS = (
    (
        "cross-entropy",
        (
            ("pmm_linear", "PMM, linear ramp (α_end)"),
            ("pmm_constant", "PMM, constant α"),
            ("weight_decay_pmm_linear", "weight decay + PMM, linear ramp"),
            ("pmm_constant_stop_r", "PMM, constant α, no gradient through r"),
            ("pmm_layers_linear", "PMM at every conv layer + head, linear ramp"),
        ),
        (
            ("baseline", "no regularization"),
            ("weight_decay", "best weight decay ({value:g})"),
            ("pmm_paper", "paper's schedule, official reduction"),
        ),
    ),
    (
        "multiclass hinge",
        (("pmm_hinge_linear", "PMM + hinge loss, linear ramp"),),
        (("hinge_baseline", "hinge loss alone"),),
    ),
)
_LINE_STYLES = {
    "baseline": dict(color="k", lw=1),
    "hinge_baseline": dict(color="k", lw=1),
    "weight_decay": dict(color="tab:gray", ls=":"),
    "pmm_paper": dict(color="tab:red", ls="--"),
}


def plot_sweep(rows, path: str) -> None:
    """Validation accuracy vs alpha: one panel per base loss, reference lines.

    The cross-entropy panel zooms on the useful range; points below it are listed
    in a corner with their value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in _PANELS if any(r["family"] == f for f, _ in p[1] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (title, curves, lines) in zip(axes[0], panels, strict=True):
        means = []
        for family, label in curves:
            pts = sorted((r for r in rows if r["family"] == family), key=lambda r: r["value"])
            if not pts:
                continue
            ys = [100 * r["val_accuracy_mean"] for r in pts]
            means += ys
            ax.errorbar(
                [r["value"] for r in pts],
                ys,
                yerr=[100 * r["val_accuracy_std"] for r in pts],
                marker="o",
                capsize=3,
                label=label,
            )
        # Single reference points as horizontal lines (their x is not an alpha of
        # this convention).
        for family, label in lines:
            pts = [r for r in rows if r["family"] == family]
            if not pts:
                continue
            best = max(pts, key=lambda r: r["val_accuracy_mean"])
            m, sd = 100 * best["val_accuracy_mean"], 100 * best["val_accuracy_std"]
            means.append(m)
            ax.axhline(m, label=label.format(value=best["value"]), **_LINE_STYLES[family])
            if family.endswith("baseline"):
                ax.axhspan(m - sd, m + sd, color="k", alpha=0.08)
        if title == "cross-entropy" and means:
            top = max(means)
            bottom = max(min(means) - 2, top - 10)
            ax.set_ylim(bottom, top + 2)
            below = [
                f"{label} at {r['value']:g}: {100 * r['val_accuracy_mean']:.0f}%"
                for family, label in curves
                for r in rows
                if r["family"] == family and 100 * r["val_accuracy_mean"] < bottom
            ]
            if below:
                ax.text(
                    0.99,
                    0.02,
                    "below the axis:\n" + "\n".join(below),
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    bbox=dict(facecolor="white", alpha=0.8, lw=0),
                )
        ax.set_xscale("log")
        ax.set_xlabel('alpha, penalty_reduction="mean" (end of the ramp / constant value)')
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{title}: mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    command.begin_main(argv)
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    overrides = config_flags.get_override_values(FLAGS["config"])
    command.run_or_fail(PROG, run_sweep, FLAGS.config, FLAGS.workdir, overrides=overrides)


def run():
    command.exit_on_unknown(PROG, sys.argv, os.path.join(CONFIG_DIR, "sweep_mnist1d.py"))
    app.run(main)


if __name__ == "__main__":
    run()
