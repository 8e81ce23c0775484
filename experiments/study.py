r"""The comparison study: every method tuned alike, trained on paired seeds, attacked.

    python -m experiments.study --workdir runs/study/mnist1d \
        --config experiments/configs/study.py:mnist1d
    python -m experiments.study --report runs/study --out docs

One task (a config of ``experiments/configs/study.py``) per command, each resumable
(every run is a method of ``experiments.run.job``: finished runs are read back) and
runnable alone. The protocol, the same for every method:

1. **Tune** on the validation split: each method with a knob trains every value of
   its grid (``config.study.grids``: six values for every method) for the
   ``study.tune_seeds`` seeds; the best mean validation accuracy wins (ties go to
   the larger value). A grid may ``inherit`` another method's choice (weight decay +
   PMM takes the weight decay chosen for weight decay alone). The test split is
   never looked at.
2. **Train** the chosen values for ``seeds`` (10), every method on the same seeds and
   the same data order (and, with label noise, the same noisy labels per seed), and
   evaluate on the clean test split (``WORKDIR/final``, a job of its own: its
   ``summary.json`` and plots).
3. **Attack** each method's final state (``experiments/run/robustness.py``): robust
   accuracy at radii scaled to the data, transfer from the baseline, minimal radii.
4. **Report** ``WORKDIR/study.json``: the choices and their validation tables, per
   method the per-seed test accuracies, mean +- std, paired t and Wilcoxon tests
   against the baseline and against PMM with Holm's correction over the task's
   comparisons, margins, robustness, the step time relative to the baseline, the
   label noise actually applied, and each phase's wall time.

``--report ROOT --out DIR`` gathers every ``ROOT/*/study.json`` into ``DIR/compare.md``,
``DIR/compare.json`` and three plots (accuracy against the noise rate, robust accuracy
against the radius, margin CDFs).
"""

from __future__ import annotations

import copy
import os
import sys
import time

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.config import check
from experiments.config.methods import merge, method_order
from experiments.config.problems import MISSING, ConfigError, Problem, get
from experiments.data.registry import get_dataset
from experiments.run import command, job, robustness
from experiments.run import workdir as wd
from experiments.run.lock import workdir_lock
from experiments.run.report import paired_comparison
from experiments.study_report import BASELINE, PMM, STUDY_JSON, format_task, write_report

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PROG = "experiments.study"
FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags (defined when the command runs, not on import: the
    other command-line modules define some of the same names)."""
    flags.DEFINE_string("workdir", None, "The task's directory (runs, study.json).")
    flags.DEFINE_string("report", None, "Gather ROOT/*/study.json into --out (no training).")
    flags.DEFINE_string("out", "docs", "With --report: where compare.md/.json and plots go.")
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(CONFIG_DIR, "study.py") + ":mnist1d",
        "Study config (experiments/configs/study.py:TASK[:local]).",
        lock_config=True,
    )


# --- the protocol ------------------------------------------------------------------------


def training_base(config) -> ml_collections.ConfigDict:
    """``config`` without its methods, study and attack blocks (what every run shares)."""
    base = merge(config, {})
    with base.unlocked():
        for field in ("study", "attack"):
            if field in base:
                del base[field]
        base.methods = ml_collections.ConfigDict()
        base.method_order = ()
        base.paired_comparisons = ()
    return base


def _set(overrides: dict, path: str, value) -> dict:
    out = copy.deepcopy(overrides)
    node = out
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def point(overrides: dict, grid: dict, value) -> dict:
    """A method's overrides with its grid's fields at ``value`` (times each field's scale)."""
    for field, scale in zip(grid["fields"], grid["scales"], strict=True):
        overrides = _set(overrides, field, value * scale)
    return overrides


def _grids(config) -> dict:
    grids = {k: dict(v) for k, v in (config.study.get("grids") or {}).items()}
    problems = []
    for name, grid in grids.items():
        if name not in config.methods:
            problems.append(Problem(f"study.grids.{name}", grid, "names no method"))
        elif len(grid.get("fields", ())) != len(grid.get("scales", ())) or not grid.get("values"):
            problems.append(
                Problem(f"study.grids.{name}", grid, "needs fields, one scale each, and values")
            )
        for other in grid.get("inherit", ()):
            if other not in grids:
                problems.append(
                    Problem(f"study.grids.{name}.inherit", other, "must name a tuned method")
                )
    if problems:
        raise ConfigError(problems)
    return grids


def _tune_one(name: str, grids: dict, selected: dict, tuning: dict) -> dict:
    """Method ``name``'s grid on validation: its rows and the chosen value.

    ``tuning``: ``{"config", "base", "dataset", "workdir"}``."""
    grid = grids[name]
    overrides = tuning["config"].methods[name].to_dict()
    for other in grid.get("inherit", ()):
        overrides = point(overrides, grids[other], selected[other]["value"])

    def value_call(value):
        run = f"{name}_{value:g}"
        config = merge(tuning["base"], point(overrides, grid, value))
        with config.unlocked():
            config.seeds = tuple(tuning["config"].study.tune_seeds)
            config.final_split = config.eval_split = "validation"
        mdir = wd.method_dir(tuning["workdir"], run).path
        return lambda stop: job.train_method(config, tuning["dataset"], mdir, name=run, stop=stop)

    calls = [value_call(value) for value in grid["values"]]
    results = job.in_threads(calls, tuning["config"].get("parallel_groups", 1))
    rows = []
    for value, result in zip(grid["values"], results, strict=True):
        acc = np.asarray(result.final_accuracy, np.float64)
        rows.append(
            {
                "value": value,
                "val_accuracy": acc.tolist(),
                "val_accuracy_mean": float(acc.mean()),
                "val_accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
            }
        )
    # Ties go to the larger value: the stronger regularization among equals.
    best = max(rows, key=lambda r: (r["val_accuracy_mean"], r["value"]))
    return {
        "value": best["value"],
        "overrides": point(overrides, grid, best["value"]),
        "rows": rows,
    }


def tune(config, dataset, workdir: str) -> dict:
    """``{method: {"value", "overrides", "rows"}}`` chosen on validation (tuned methods)."""
    grids = _grids(config)
    tuning = {
        "config": config,
        "base": training_base(config),
        "dataset": dataset,
        "workdir": workdir,
    }
    selected = {}
    for name in method_order(config):
        if name in grids:
            selected[name] = _tune_one(name, grids, selected, tuning)
            print(f"[study] {name}: chose {selected[name]['value']:g} on validation", flush=True)
    return selected


def final_config(config, selected: dict) -> ml_collections.ConfigDict:
    """The config of the final runs: each method at its chosen value, ``config.seeds``."""
    out = training_base(config)
    with out.unlocked():
        out.methods = ml_collections.ConfigDict(
            {
                name: selected[name]["overrides"] if name in selected else m.to_dict()
                for name, m in config.methods.items()
            }
        )
        out.method_order = tuple(method_order(config))
        out.paired_comparisons = tuple(tuple(p) for p in config.get("paired_comparisons", ()))
        out.final_split = "test"
    return out


def run_study(config, workdir: str, *, overrides: dict | None = None) -> dict:
    """Tunes, trains, attacks and reports one task; writes ``WORKDIR/study.json``."""
    if "study" not in config:
        raise ConfigError(
            [Problem("study", MISSING, "is required (experiments/configs/study.py:TASK)")]
        )
    check.validate(config, overrides=overrides)
    wd.prepare(workdir)
    times = {}
    with workdir_lock(workdir):
        dataset = get_dataset(config.dataset, **config.get("dataset_kwargs", {}))
        if "validation" not in dataset.eval_splits:
            raise ValueError("The study tunes on a validation split; the dataset has none.")
        t0 = time.perf_counter()
        selected = tune(config, dataset, os.path.join(workdir, "tune"))
        times["tune_s"] = time.perf_counter() - t0
        final = final_config(config, selected)
        final_dir = os.path.join(workdir, "final")
        t0 = time.perf_counter()
        summary = job.train_and_evaluate(final, final_dir)
        times["final_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        attacked = attack_all(config, final, dataset, final_dir)
        times["attack_s"] = time.perf_counter() - t0
        study = report_task(config, selected, summary, attacked, times)
        wd.write_json(os.path.join(workdir, STUDY_JSON), study)
        print(format_task(study), flush=True)
        return study


def attack_all(config, final, dataset, final_dir: str) -> dict:
    """Each method's robustness (``experiments/run/robustness.py``), transfer from the baseline."""
    from experiments.config.methods import expand_methods

    configs = expand_methods(final)
    source_name = get(config.get("attack") or {}, "transfer_from", BASELINE)
    out = {}
    for name, c in configs.items():
        with c.unlocked():
            c.attack = ml_collections.ConfigDict(dict(config.get("attack") or {}))
        source = None
        if name != source_name and source_name in configs:
            source = (configs[source_name], wd.method_dir(final_dir, source_name))
        out[name] = robustness.evaluate_method(
            name, c, dataset, wd.method_dir(final_dir, name), source=source
        )
        print(f"[study] attacked {name}", flush=True)
    return out


# --- the task's report -------------------------------------------------------------------


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of the p-values (``None`` stays ``None``)."""
    known = sorted(((p, k) for k, p in pvalues.items() if p is not None))
    m, out, running = len(known), dict.fromkeys(pvalues), 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _comparisons(methods: dict) -> dict:
    """``{"A - B": paired comparison}`` of every method against the baseline and PMM, with
    Holm-adjusted p-values (``holm_t``, ``holm_wilcoxon``) over all of them."""
    out = {}
    for ref in (BASELINE, PMM):
        for name, m in methods.items():
            if name != ref and ref in methods:
                out[f"{name} - {ref}"] = paired_comparison(
                    m["final_accuracy"], methods[ref]["final_accuracy"]
                )
    for test, key in (("paired_t", "holm_t"), ("wilcoxon", "holm_wilcoxon")):
        adjusted = holm({k: (c[test] or {}).get("p") for k, c in out.items()})
        for k, c in out.items():
            c[key] = adjusted[k]
    return out


def report_task(config, selected, summary, attacked, times) -> dict:
    methods = summary["methods"]
    base_steps = methods[BASELINE]["wall_time_s"] / max(methods[BASELINE]["steps"], 1)
    rows = {}
    for name, m in methods.items():
        acc = np.asarray(m["final_accuracy"]) * 100
        rows[name] = {
            "chosen": selected.get(name, {}).get("value"),
            "test_accuracy": acc.tolist(),
            "mean": float(acc.mean()),
            "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
            "margin_mean": m["margin_mean"],
            "margin_p10": m["margin_p10"],
            "step_time_ratio": (m["wall_time_s"] / max(m["steps"], 1)) / base_steps,
            "robustness": {k: v for k, v in attacked[name].items() if k not in ("key",)},
        }
    noise = methods[BASELINE]["extra"].get("label_noise")
    return {
        "task": config.name,
        "dataset": summary["dataset"],
        "model": config.model,
        "steps": int(methods[BASELINE]["steps"]),
        "seeds": list(config.seeds),
        "tune_seeds": list(config.study.tune_seeds),
        "label_noise": noise,
        "selected": {k: {"value": v["value"], "rows": v["rows"]} for k, v in selected.items()},
        "methods": rows,
        "comparisons": _comparisons(methods),
        "times": times,
        "machine": summary["machine"],
        "date": summary["date"],
    }


# --- the command line --------------------------------------------------------------------


def main(argv):
    command.begin_main(argv)
    if FLAGS.report:
        write_report(FLAGS.report, FLAGS.out)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (or --report ROOT).")
    overrides = config_flags.get_override_values(FLAGS["config"])
    command.run_or_fail(PROG, run_study, FLAGS.config, FLAGS.workdir, overrides=overrides)


def run():
    _define_flags()
    command.exit_on_unknown(PROG, sys.argv, os.path.join(CONFIG_DIR, "study.py") + ":mnist1d")
    app.run(main)


if __name__ == "__main__":
    run()
