"""A job: every method of a config trained, evaluated and summarized.

``train_and_evaluate(config, workdir)`` trains each method of ``config.methods``
(or the config itself when it has none) for every seed, evaluates, and writes a
summary with tables and plots (``experiments/run/report.py``). Methods that
share a training loop train together in one program when ``runs_mode`` says so
(``experiments/run/forms.py``), otherwise one after the other; a method's seeds
are always trained together (the state stacked over seeds, the step vmapped).
The batch is sharded over all devices, the state replicated, so the same code
runs on one CPU, a GPU, or many devices and hosts (``pmm_jax.training``).

The pieces, in the order a group runs (:func:`train_group`; one method:
:func:`train_method`): each finished method is read back (its ``result.json``
is of this config), the others start (``experiments/run/session.py``: build,
resume from the latest checkpoint) and are brought to a common step, train
(``experiments/run/loop.py``) and finish (``experiments/run/evaluation.py``).

Everything is resumable: checkpoints every ``checkpoint_every_steps`` (orbax,
verified on restore), metric logs truncated back to the restored step and
repaired if a crash tore them (``experiments/run/logs.py``), a finished method
read back. One run at a time per workdir (``experiments/run/lock.py``); the
workdir is checked writable before anything trains (``experiments/run/workdir.py``).
Steps skipped for non-finite gradients fail the run beyond
``max_nonfinite_fraction`` once everything is written
(``experiments/run/results.py``). Every file is written by process 0 only.
"""

from __future__ import annotations

import concurrent.futures
import threading

import jax
import ml_collections

from experiments import models
from experiments.config import check
from experiments.config.identity import check_same_config, config_hash, group_methods
from experiments.config.methods import expand_methods
from experiments.data.base import Dataset
from experiments.data.registry import get_dataset
from experiments.run import evaluation, loop, report, session, workdir
from experiments.run.lock import workdir_lock
from experiments.run.logs import say
from experiments.run.results import (
    MethodResult,
    check_nonfinite,
    max_nonfinite_fraction,
    read_result,
)
from pmm_jax import training


def train_method(
    config,
    dataset: Dataset,
    method_dir: str,
    *,
    name: str,
    check_nonfinite_steps: bool = True,
    stop: threading.Event | None = None,
) -> MethodResult:
    """Trains all seeds of one method (resuming if possible), then evaluates.

    The final evaluation is on ``config.final_split`` (default ``"test"``; the
    sweep uses ``"validation"``): ``MethodResult.final_accuracy`` and the others.
    ``extra["nonfinite_steps"]`` holds, per seed, the steps skipped for
    non-finite gradients. A method whose ``result.json`` is of this config is
    read back, not trained again. Files are written by process 0 only. ``stop``: as in
    :func:`experiments.run.loop.train`.

    Raises:
      ConfigChangedError: ``method_dir`` holds checkpoints or a result of another config.
      NonFiniteStepsError: (if ``check_nonfinite_steps``) a seed skipped more than
        ``config.max_nonfinite_fraction`` of its steps; raised after the result,
        metrics and checkpoints are written.
    """
    (result,) = train_group(
        {name: config},
        dataset,
        {name: method_dir},
        record_dir=method_dir,
        check_nonfinite_steps=check_nonfinite_steps,
        stop=stop,
    ).values()
    return result


def train_group(
    configs: dict[str, ml_collections.ConfigDict],
    dataset: Dataset,
    method_dirs: dict[str, str],
    *,
    record_dir: str,
    check_nonfinite_steps: bool = True,
    stop: threading.Event | None = None,
) -> dict[str, MethodResult]:
    """Trains the methods of one group together (``experiments/run/forms.py``), then
    evaluates each: :func:`train_method` for several methods sharing a loop. ``stop``:
    as in :func:`experiments.run.loop.train`.

    Methods already finished (their ``result.json`` is of their config) are read
    back; the others train in one program on one stream of batches, resumed from
    their checkpoints at a common step. Each method's files go to its own
    directory, as if it had trained alone; ``record_dir`` gets ``runs_mode.json``.

    Raises:
      ConfigChangedError, NonFiniteStepsError: as :func:`train_method`.
      GroupOutOfStepError: the methods' checkpoints have no common step.
    """
    results, todo = {}, []
    for name, config in configs.items():
        mdir = workdir.MethodDir(method_dirs[name])
        workdir.prepare(mdir.path)
        recorded = mdir.recorded_config()
        if recorded is not None:
            check_same_config(config, recorded, name=name, where=mdir.path)
        result = read_result(mdir.path, config_hash(config))
        if result is not None:
            say(f"[{name}] already finished; read back {mdir.result}")
            results[name] = result
        else:
            todo.append(name)
    if todo:
        results.update(_train_todo(configs, dataset, method_dirs, todo, record_dir, stop))
    results = {name: results[name] for name in configs}
    if check_nonfinite_steps:
        check_nonfinite(
            [(results[n], max_nonfinite_fraction(configs[n])) for n in configs], record_dir
        )
    return results


def _train_todo(configs, dataset, method_dirs, todo, record_dir, stop) -> dict[str, MethodResult]:
    mesh = training.make_mesh(configs[todo[0]].get("num_devices", 0) or None)
    sessions, states, steps = [], [], []
    for name in todo:
        mdir = workdir.MethodDir(method_dirs[name])
        workdir.write_json(mdir.config, configs[name].to_dict())
        s, state, step = session.start(configs[name], dataset, mdir, name, mesh)
        sessions.append(s)
        states.append(state)
        steps.append(step)
    sessions, states, start = session.align(sessions, states, steps)
    states, info = loop.train(sessions, states, start, record_dir, stop)
    return {
        s.name: evaluation.finish(s, state, runs_info={**info, "forms": loop.forms_trained(s)})
        for s, state in zip(sessions, states, strict=True)
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir_path: str, *, overrides: dict | None = None
) -> dict:
    """Trains every method of ``config`` and writes ``summary.json`` + plots to the workdir.

    Nothing trains unless every method's config is valid (``experiments/config/check.py``):
    checked before the data is read, and again with the dataset's size and splits.
    Methods that share a training loop are trained together when ``runs_mode`` says
    so (``experiments/run/forms.py``); otherwise one after the other.

    Args:
      config: the config; its ``methods`` (if any) are trained by groups, in order.
      workdir_path: where checkpoints, logs, the summary and plots go.
      overrides: the command line's ``--config.*`` overrides (``{dotted path: value}``);
        one that a method would shadow is refused.

    Raises:
      ConfigError: every problem of the config, before any training.
      WorkdirError: the workdir is not a writable directory with space (checked
        before anything is loaded).
      WorkdirLocked: another run is using the workdir (checked before anything is
        loaded or written).
    """
    check.validate(config, overrides=overrides)
    workdir.prepare(workdir_path)
    with workdir_lock(workdir_path):
        config = models.resolve_pretrained(config)
        dataset = get_dataset(config.dataset, **config.get("dataset_kwargs", {}))
        check.validate(config, num_train=dataset.num_train, eval_splits=dataset.eval_splits)
        method_configs = expand_methods(config)
        results = _train_groups(config, method_configs, dataset, workdir_path)
        results = {name: results[name] for name in method_configs}
        summary = report.summarize(config, dataset.name, results, workdir_path)
        check_nonfinite(
            [(results[n], max_nonfinite_fraction(c)) for n, c in method_configs.items()],
            workdir_path,
        )
        return summary


def _train_groups(config, method_configs: dict, dataset: Dataset, workdir_path: str) -> dict:
    """Every group of ``method_configs``, ``config.parallel_groups`` at a time
    (:func:`in_threads`)."""

    def group_call(group):
        return lambda stop: train_group(
            {name: method_configs[name] for name in group},
            dataset,
            {name: workdir.method_dir(workdir_path, name).path for name in group},
            record_dir=workdir_path,
            check_nonfinite_steps=False,  # checked by the caller, once every method is written
            stop=stop,
        )

    calls = [group_call(group) for group in group_methods(method_configs)]
    results = {}
    for result in in_threads(calls, config.get("parallel_groups", 1)):
        results.update(result)
    return results


def in_threads(calls: list, workers: int) -> list:
    """``[call(stop) for call in calls]``, ``workers`` at a time, each in its own thread.

    Each call trains its own programs on its own data stream, so the results do not
    depend on ``workers``. One process only: on several hosts the calls go one after the
    other (every host must launch the same programs in the same order). A failing call
    lets the running ones finish, starts no other, and is raised; an interrupt sets
    ``stop`` (a ``threading.Event``; ``None`` when run one at a time), which stops the
    running trainings at their next call (a rerun resumes them from their checkpoints).
    """
    workers = min(workers, len(calls))
    if workers <= 1 or jax.process_count() > 1:
        return [call(None) for call in calls]
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="group") as pool:
        futures = [pool.submit(call, stop) for call in calls]
        try:
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:
                    for f in futures:
                        f.cancel()  # the calls not started yet
                    break
        except BaseException:  # KeyboardInterrupt: the running calls stop at their next step
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return [f.result() for f in futures if not f.cancelled()]  # the first failure is raised
