"""The training loop shared by every experiment.

``train_and_evaluate(config, workdir)`` trains each method of ``config.methods``
(or the config itself when it has none) for every seed, evaluates, and writes a
summary with tables and plots (``experiments/report.py``).

One method's seeds are trained *together*: the train state is stacked over
seeds and the step is ``jax.vmap``-ed, with ``steps_per_call`` steps (or
``epochs_per_call`` epochs) fused into one jitted ``lax.scan``. Methods that
share a training loop can train together too, in one program on one stream of
batches (``runs_mode``, ``experiments/runs.py``: the forms and how ``"auto"``
picks one). The batch is sharded over all devices on its batch axis,
the state replicated, so the same code runs on one CPU, a GPU, or many devices
and hosts; the sharding (mesh, jit, batch placement, gathering outputs) is
``pmm_jax.training``'s. What is measured on a split is chosen by name
(``experiments/evaluators.py``); pretrained weights are loaded by the model's
family (``experiments.models.load_pretrained``).

The pieces, in the order a group of methods runs (``train_group``; one method:
``train_method``): each method's finished result is read back (``read_result``)
or it ``_start``s (``build`` the ``Trainee``, resume from the latest checkpoint),
the group is brought to a common step (``_align``), trains (``_train_together``:
``_log_train``, ``_evaluate_during_training`` per method) and each method
``_finish``es (``_evaluate_best``, the final evaluations, ``result.json``).
Every file the trainer writes is written by process 0 only.

Everything is resumable: checkpoints every ``checkpoint_every_steps`` (orbax),
metric logs truncated back to the restored step (and repaired if a crash tore
them, ``experiments/metrics_log.py``), and a finished method is not run again
(its ``result.json`` is read back). One run at a time per workdir: a second one
stops at once (``experiments/workdir_lock.py``). Checkpoints are verified on
restore (``pmm_jax.training.Checkpointer``); one saved from a different model or
seed count stops the run with a ``CheckpointMismatchError``.

Steps skipped for non-finite gradients are counted per seed
(``extra["nonfinite_steps"]``, shown in the summary); a seed that skipped more
than ``max_nonfinite_fraction`` of its steps fails the run with a
``NonFiniteStepsError`` once everything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import Mesh

from experiments import config_check, evaluators, models, optim, runs
from experiments.data import feed
from experiments.data.base import Dataset, sample_input
from experiments.data.registry import get_dataset
from experiments.metrics_log import MetricsLog, best_from_curves, progress
from experiments.models import get_model
from experiments.workdir_lock import workdir_lock
from pmm_jax import training


def merge(base: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """``base`` with ``overrides`` (a nested dict) merged in, recursively."""
    out = copy.deepcopy(base)
    with out.unlocked():
        for key, value in dict(overrides).items():
            if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
                out.get(key), ml_collections.ConfigDict
            ):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def expand_methods(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """``{method name: full config}``; a config without methods is one run."""
    methods = config.get("methods") or {}
    base = copy.deepcopy(config)
    with base.unlocked():
        base.methods = ml_collections.ConfigDict()
        base.method_order = ()
    if not methods:
        return {config.get("name", "run"): base}
    return {name: merge(base, methods[name]) for name in expand_order(config)}


def select_methods(config: ml_collections.ConfigDict, names) -> ml_collections.ConfigDict:
    """``config`` with only the methods ``names`` (``--methods=baseline,pmm``), in its order.

    Raises:
      config_check.ConfigError: a name that is not a method of ``config`` (or it has none).
    """
    methods = config.get("methods") or {}
    names = list(dict.fromkeys(names))
    problems = []
    if not methods:
        problems.append(
            config_check.Problem(
                "--methods",
                ",".join(names),
                f"config {config.get('name', '')!r} has no methods (it is one run); drop --methods",
            )
        )
    elif not names:
        problems.append(
            config_check.Problem(
                "--methods", "", "names no method; its methods: " + ", ".join(expand_order(config))
            )
        )
    for name in names if methods else ():
        if name not in methods:
            close = config_check.closest(name, methods)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            problems.append(
                config_check.Problem(
                    "--methods",
                    name,
                    f"not a method of this config; {hint}its methods: "
                    + ", ".join(expand_order(config)),
                )
            )
    if problems:
        raise config_check.ConfigError(problems, what="--methods")
    out = copy.deepcopy(config)
    with out.unlocked():
        out.methods = ml_collections.ConfigDict({n: methods[n] for n in names})
        out.method_order = tuple(n for n in expand_order(config) if n in names)
        if out.get("paired_comparisons"):
            out.paired_comparisons = tuple(
                tuple(p) for p in out.paired_comparisons if set(p) <= set(names)
            )
    return out


def expand_order(config: ml_collections.ConfigDict) -> list[str]:
    """The names of ``config``'s methods in the order they run: ``method_order``, then sorted."""
    methods = config.get("methods") or {}
    order = list(config.get("method_order") or ())
    return [n for n in order if n in methods] + sorted(n for n in methods if n not in order)


# Fields that do not change what is trained, left out of `config_hash` so that
# changing them reads a finished method back instead of training it again.
# runs_mode: how the runs share a program changes the float rounding, not the training
# (tests/test_runs.py); switching it resumes a run instead of refusing its workdir.
UNHASHED_FIELDS = ("max_nonfinite_fraction", "runs_mode")
DEFAULT_MAX_NONFINITE_FRACTION = 0.01


# Fields added after runs were recorded, with the value that computes what those runs
# did: left out of the hash at that value, so that old workdirs still resume and read back.
LATER_FIELDS = {"epochs_per_call": 0.0}


def _hashed_fields(config: ml_collections.ConfigDict | dict) -> dict:
    """The fields that decide what a run computes, JSON-normalized (tuples -> lists)."""
    as_dict = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    fields = {
        k: v
        for k, v in as_dict.items()
        if k not in UNHASHED_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
    }
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def config_hash(config: ml_collections.ConfigDict | dict) -> str:
    text = json.dumps(_hashed_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigChangedError(ValueError):
    """A method's workdir holds checkpoints or a result of a different config."""


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_same_config(config: ml_collections.ConfigDict, workdir: str, *, name: str) -> None:
    """Refuses to resume a method's work that was done with another config.

    A workdir's ``config.json`` records the config its checkpoints and result were
    trained with. Resuming them under a changed config (say another weight decay,
    with the same parameter shapes) would continue -- or just re-evaluate -- the
    old run and record it as the new one. Nothing is moved or deleted.

    Raises:
      ConfigChangedError: naming the fields that differ, if ``workdir`` holds
        checkpoints or a result of another config.
    """
    path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_work = os.path.exists(os.path.join(workdir, "result.json")) or (
        os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))
    )
    if not (has_work and os.path.exists(path)):
        return
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: the checkpoint's own structure check still applies
    old, new = _flatten(_hashed_fields(previous)), _flatten(_hashed_fields(config))
    diff = sorted(
        k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>")
    )
    if not diff:
        return
    shown = "; ".join(
        f"{k}: {old.get(k, '<unset>')!r} then, {new.get(k, '<unset>')!r} now" for k in diff[:10]
    )
    more = f" (and {len(diff) - 10} more)" if len(diff) > 10 else ""
    raise ConfigChangedError(
        f"[{name}] {workdir} holds checkpoints or a result of another config ({shown}{more}); "
        "resuming them would record the old run as this one. Use another --workdir, or "
        f"delete {workdir} to train this method again from scratch."
    )


class NonFiniteStepsError(RuntimeError):
    """Too many training steps were skipped for non-finite gradients (see
    ``max_nonfinite_fraction``). Raised after the results and checkpoints are written.

    Attributes:
      offenders: ``[(method, seed, skipped steps, total steps)]``.
    """

    def __init__(self, message: str, offenders: list[tuple[str, int, int, int]]):
        super().__init__(message)
        self.offenders = offenders


def max_nonfinite_fraction(config) -> float:
    """``config.max_nonfinite_fraction`` (default 0.01), checked to be in [0, 1]."""
    value = config.get("max_nonfinite_fraction", DEFAULT_MAX_NONFINITE_FRACTION)
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`max_nonfinite_fraction` must be a fraction in [0, 1] of the training steps "
            f"that may be skipped for non-finite gradients; got {value!r}."
        )
    return float(value)


def nonfinite_offenders(result: MethodResult, limit: float) -> list[tuple[str, int, int, int]]:
    """``[(method, seed, skipped, steps)]`` for the seeds that skipped more than
    ``limit`` of their steps (none for results written before the count existed)."""
    counts = result.extra.get("nonfinite_steps") or []
    return [
        (result.name, int(seed), int(count), int(result.steps))
        for seed, count in zip(result.seeds, counts, strict=True)
        if count > limit * max(result.steps, 1)
    ]


def check_nonfinite(checks: list[tuple[MethodResult, float]], workdir: str) -> None:
    """Raises :class:`NonFiniteStepsError` naming every (method, seed) whose skipped
    steps exceed its ``max_nonfinite_fraction`` (``checks``: ``[(result, limit)]``)."""
    lines, offenders = [], []
    for result, limit in checks:
        for name, seed, count, steps in nonfinite_offenders(result, limit):
            offenders.append((name, seed, count, steps))
            lines.append(
                f"method {name!r}, seed {seed}: {count} of {steps} training steps "
                f"({100 * count / max(steps, 1):.1f}%) were skipped for non-finite gradients, "
                f"above `max_nonfinite_fraction`={limit:g}"
            )
    if not offenders:
        return
    raise NonFiniteStepsError(
        "Too many skipped training steps:\n  "
        + "\n  ".join(lines)
        + f"\nThe results, metrics and checkpoints are written under {workdir}. The run "
        "diverged or its data holds NaN/Inf: look at the loss, learning rate and alpha "
        "(`train/nonfinite_steps` in metrics.jsonl shows when it started), or accept it with "
        "--config.max_nonfinite_fraction=<fraction> (not part of the config hash: finished "
        "methods are read back, not retrained).",
        offenders,
    )


@dataclasses.dataclass
class MethodResult:
    """What one method's run produced (per seed where it says so).

    ``final_accuracy``, ``final_loss`` and the margins are measured on
    ``final_split`` (``config.final_split``: the test split in the main job, the
    validation split in sweeps).
    """

    name: str
    seeds: list[int]
    final_split: str
    final_accuracy: list[float]
    final_loss: list[float]
    margin_mean: list[float]  # normalized pairwise margin on final_split, per seed
    margin_p10: list[float]
    curves: dict[str, list]  # {"step": [...], "<split>_accuracy": [[per seed] per eval]}
    wall_time_s: float
    steps: int
    config_hash: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # Names in result.json files written before the fields said what they hold.
    RENAMED: ClassVar[dict[str, str]] = {
        "test_accuracy": "final_accuracy",
        "test_loss": "final_loss",
    }

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MethodResult:
        """A result read back from ``result.json``, also one with the old field names
        (``test_accuracy``, ``test_loss``; ``final_split`` then from its config)."""
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old in data:
                data.setdefault(new, data.pop(old))
        if "final_split" not in data:
            config = (data.get("extra") or {}).get("config") or {}
            data["final_split"] = config.get("final_split", "test")
        return cls(**data)


def total_steps_of(config, steps_per_epoch: int) -> int:
    if config.get("num_epochs", 0) > 0:
        return int(config.num_epochs * steps_per_epoch)
    return int(config.num_train_steps)


def steps_per_call_of(config, steps_per_epoch: int) -> int:
    """Steps fused into one call: ``epochs_per_call`` epochs if > 0, else ``steps_per_call``."""
    epochs = config.get("epochs_per_call", 0) or 0
    if epochs > 0:
        return max(1, round(epochs * steps_per_epoch))
    return int(config.steps_per_call)


def intervals(config, steps_per_epoch: int, total: int) -> dict[str, int]:
    """Log / eval / checkpoint intervals in steps (``*_every_epochs`` wins if > 0)."""
    out = {}
    for what in ("log", "eval", "checkpoint"):
        epochs = config.get(f"{what}_every_epochs", 0)
        out[what] = (
            round(epochs * steps_per_epoch) if epochs else int(config[f"{what}_every_steps"])
        )
    k = steps_per_call_of(config, steps_per_epoch)
    for what, every in out.items():
        if every < 1 or every % k:
            raise ValueError(
                f"the {what} interval of {every} steps must be a positive multiple of "
                f"the {k} steps per call (`steps_per_call`, or `epochs_per_call` epochs)."
            )
    if total % k:
        raise ValueError(f"the run's {total} steps must be a multiple of the {k} steps per call.")
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long one method trains, and how often it logs, evaluates and saves (in steps)."""

    total: int
    steps_per_epoch: int
    every: dict[str, int]  # "log", "eval", "checkpoint"
    per_call: int = 1  # steps fused into one call (one lax.scan)


def plan_of(config, dataset: Dataset) -> Plan:
    steps_per_epoch = max(1, dataset.num_train // config.batch_size)
    total = total_steps_of(config, steps_per_epoch)
    return Plan(
        total,
        steps_per_epoch,
        intervals(config, steps_per_epoch, total),
        steps_per_call_of(config, steps_per_epoch),
    )


# Training batches are [steps_per_call, seeds, batch, ...]: sharded on axis 2.
TRAIN_BATCH_AXIS = runs.TRAIN_BATCH_AXIS


@dataclasses.dataclass
class Trainee:
    """One method's seeds, trained together: the stacked state and its jitted programs.

    Attributes:
      state: the train state, every leaf stacked over seeds, replicated on ``mesh``.
      train_steps: ``(state, batches [steps, seeds, batch, ...]) -> (state, metrics)``:
        ``steps`` seed-vmapped steps in one ``lax.scan``.
      eval_step: ``(state, batch [batch, ...]) -> per-example outputs [seeds, batch]``.
      train_step: the unjitted step of one run, ``(state, batch) -> (state, metrics)``
        (what ``experiments/runs.py`` combines with other methods' steps).
      mesh: the data-parallel mesh (``pmm_jax.training.make_mesh``).
      seeds: the seeds, in the order of the state's leading axis.
      evaluators: the evaluator names (``experiments/evaluators.py``).
    """

    state: training.TrainState
    train_steps: Callable
    eval_step: Callable
    mesh: Mesh
    seeds: list[int]
    evaluators: tuple[str, ...]
    train_step: Callable | None = None


def build(config, dataset: Dataset, mesh: Mesh, plan: Plan) -> Trainee:
    """The model, optimizer and seed-stacked state of ``config``, and its sharded programs.

    Pretrained weights (``config.pretrained.path``) are loaded by the model's family
    (``experiments.models.load_pretrained``) into every seed's params.
    """
    seeds = [int(s) for s in config.seeds]
    model = get_model(config.model, num_classes=dataset.num_classes, **config.model_kwargs)
    tx = optim.make_optimizer(config, plan.steps_per_epoch, plan.total)
    state = training.create_train_state(model, tx, sample_input(dataset.input_spec), seed=seeds)
    pretrained = config.get("pretrained")
    if pretrained and pretrained.get("path"):
        # The optimizer state does not depend on the initial values (Adam's
        # moments start at zero), so the weights can be swapped in after init.
        params = models.load_pretrained(
            config.model,
            state.params,
            pretrained.path,
            model=model,
            stacked=True,
            kind=pretrained.get("kind"),
        )
        state = state.replace(params=params)
    train_step = training.make_train_step(
        alpha=optim.make_alpha(config.pmm, plan.steps_per_epoch, plan.total),
        base_loss=optim.base_loss(config.pmm),
        penalty_reduction=config.pmm.penalty_reduction,
        stop_radius_gradient=config.pmm.stop_radius_gradient,
        preprocess=dataset.preprocess,
    )
    eval_step = training.make_eval_step(
        base_loss=optim.base_loss(config.pmm), preprocess=dataset.preprocess
    )

    def train_steps(state, batches):
        return lax.scan(jax.vmap(train_step), state, batches)

    return Trainee(
        state=training.replicate_on_mesh(state, mesh),
        train_steps=training.jit_sharded(train_steps, mesh, batch_axis=TRAIN_BATCH_AXIS),
        eval_step=training.jit_sharded(
            jax.vmap(eval_step, in_axes=(0, None)), mesh, donate=False, out_batch_axis=1
        ),
        mesh=mesh,
        seeds=seeds,
        evaluators=evaluators.select(config, dataset.extra.get("metrics", ())),
        train_step=train_step,
    )


def eval_outputs(
    trainee: Trainee, dataset: Dataset, split: str, batch_size: int
) -> evaluators.Outputs:
    """Per-example outputs ``[seeds, N]`` of the whole ``split`` (on every process)."""
    chunks = []
    for batch in feed.eval_batches(dataset, split, batch_size, trainee.mesh):
        out = trainee.eval_step(trainee.state, batch)
        chunks.append(training.gather_to_host(out))
    return evaluators.collect(chunks)


def evaluate(trainee: Trainee, dataset: Dataset, split: str, batch_size: int):
    """``{metric: float[seeds]}`` of the trainee's evaluators on the whole ``split``."""
    outs = eval_outputs(trainee, dataset, split, batch_size)
    return evaluators.evaluate(outs, trainee.evaluators)


class _Clock:
    """A method's wall time: what earlier sessions logged, plus this one's since ``start``."""

    def __init__(self, elapsed: float):
        self.elapsed, self.t0 = elapsed, None

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return self.elapsed + (0.0 if self.t0 is None else time.perf_counter() - self.t0)


@dataclasses.dataclass
class _Run:
    """One method's run in progress: what the loop, the evaluations and the result share."""

    name: str
    config: ml_collections.ConfigDict
    dataset: Dataset
    plan: Plan
    trainee: Trainee
    ckpt: training.Checkpointer
    best_ckpt: training.Checkpointer | None  # the best state by mean eval_split accuracy
    log: MetricsLog
    start_step: int
    clock: _Clock
    window: list = dataclasses.field(default_factory=list)  # train metrics since the last log


def _start(config, dataset: Dataset, workdir: str, name: str, mesh: Mesh | None = None) -> _Run:
    """Builds the method's trainee and resumes it from its latest checkpoint, if any."""
    plan = plan_of(config, dataset)
    if mesh is None:
        mesh = training.make_mesh(config.get("num_devices", 0) or None)
    trainee = build(config, dataset, mesh, plan)
    ckpt = training.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=plan.every["checkpoint"],
        keep=config.keep_checkpoints,
    )
    best_ckpt = None
    if config.get("save_best", False):  # select on validation!
        best_ckpt = training.Checkpointer(os.path.join(workdir, "best"), save_every=1, keep=1)
    restored = ckpt.restore_latest(trainee.state)
    if restored is not None:
        trainee.state = restored
    start = _step_of(trainee)
    log = MetricsLog(workdir, start_step=start)
    clock = _Clock(log.meta.get("wall_time_s", 0.0))
    run = _Run(name, config, dataset, plan, trainee, ckpt, best_ckpt, log, start, clock)
    if best_ckpt is not None and "best_acc" not in log.meta:
        # meta.json was lost: the best evaluation so far is the curves' best.
        best = best_from_curves(log.curves(), f"{config.eval_split}_accuracy")
        if best is not None:
            log.set_meta(best_acc=best[0], best_step=best[1])
    if start:
        print(f"[{name}] resuming at step {start}/{plan.total}", flush=True)
    return run


def _step_of(trainee: Trainee) -> int:
    return int(training.gather_to_host(trainee.state.step)[0])


class GroupOutOfStepError(RuntimeError):
    """The methods of a group were checkpointed at different steps and cannot be
    brought back to a common one."""


def _align(runs_: list[_Run]) -> None:
    """Brings the methods of a group to one step: the earliest of their latest
    checkpoints (a crash between two methods' saves leaves them one save apart).

    Raises:
      GroupOutOfStepError: a method holds no checkpoint at that step.
    """
    start = min(r.start_step for r in runs_)
    for r in runs_:
        if r.start_step == start:
            continue
        if start == 0:
            fresh = build(r.config, r.dataset, r.trainee.mesh, r.plan)
            r.trainee.state = fresh.state
        else:
            restored = r.ckpt.restore_latest(r.trainee.state, max_step=start)
            at = None if restored is None else int(training.gather_to_host(restored.step)[0])
            if at != start:
                raise GroupOutOfStepError(
                    f"[{r.name}] is at step {r.start_step}, the other methods of its group at "
                    f"{start}, and {r.ckpt.directory} holds no checkpoint at step {start}. "
                    "Delete the newer checkpoints of that method (or all of its checkpoints) "
                    "to train the group on from a common step."
                )
            r.trainee.state = restored
        print(f"[{r.name}] back to step {start}, where its group's other methods are", flush=True)
        r.start_step = start
        r.log.close()
        r.log = MetricsLog(os.path.dirname(r.ckpt.directory), start_step=start)


def _single_program(trainee: Trainee) -> runs.Program:
    """One method alone (``runs_mode="per_method"``): its seed-vmapped, scanned program."""

    def call(states, block):
        (state,) = states
        state, metrics = trainee.train_steps(state, block)
        return (state,), (metrics,)

    return call


def _group_program(runs_: list[_Run], record_dir: str, first_block) -> tuple[runs.Program, dict]:
    """The program that trains the group's runs together, and what was chosen and why."""
    config = runs_[0].config
    mode = config.get("runs_mode", "per_method")
    seeds = runs_[0].trainee.seeds
    info = {
        "group": [r.name for r in runs_],
        "runs": len(runs_) * len(seeds),
        "mode": mode,
    }
    if mode == "per_method":  # one method, its seeds vmapped, scanned
        return _single_program(runs_[0].trainee), info
    steps = [r.trainee.train_step for r in runs_]
    mesh = runs_[0].trainee.mesh
    if mode == "auto":
        name = "+".join(info["group"])
        hashes = {r.name: config_hash(r.config) for r in runs_}
        choice = runs.agree(runs.read_choice(record_dir, name, hashes))
        if choice is None and first_block is None:  # nothing left to train: no program runs
            info["mode"] = "auto (not measured: nothing left to train)"
            return None, info
        if choice is None:
            states = tuple(r.trainee.state for r in runs_)
            # One run: the forms are the same program; only scan or loop is a choice.
            candidates = ("vmap", "vmap" + runs.LOOP) if info["runs"] == 1 else runs.CANDIDATES
            choice = runs.measure(
                steps, len(seeds), mesh, states, first_block, candidates=candidates
            )
            choice["device"] = str(jax.devices()[0].device_kind)
            choice = runs.agree(choice)  # every process takes process 0's choice
            runs.write_choice(record_dir, name, hashes, choice)
            how = "measured"
        else:
            how = f"as measured before ({runs.RECORD})"
        timings = ", ".join(f"{m} {t:.1f}" for m, t in choice["ms_per_step"].items())
        print(
            f"[{name}] {info['runs']} runs in one program: {choice['mode']} "
            f"({how}; ms per step of all runs: {timings})",
            flush=True,
        )
        info.update(mode=choice["mode"], auto=choice)
    return runs.program(steps, len(seeds), info["mode"], mesh), info


def _train_together(runs_: list[_Run], record_dir: str) -> dict:
    """Trains the runs of a group from their (common) start step to the end, on one
    stream of blocks; logs, evaluates and checkpoints each method on the way.

    Returns:
      How the runs shared the program (``extra["runs"]`` of each result).
    """
    lead = runs_[0]
    config, total, k = lead.config, lead.plan.total, lead.plan.per_call
    start = lead.start_step
    blocks = feed.train_blocks(  # on the device when the dataset has device_data
        lead.dataset, lead.trainee.seeds, config.batch_size, k, lead.trainee.mesh, start_step=start
    )
    first = next(blocks) if start < total else None
    call, info = _group_program(runs_, record_dir, first)
    for r in runs_:
        r.clock.start()
    bar = progress(total=total, initial=start, desc="+".join(r.name for r in runs_))
    step, block = start, first
    while step < total:
        states, metrics = call(tuple(r.trainee.state for r in runs_), block)
        step += k
        for r, state, m in zip(runs_, states, metrics, strict=True):
            r.trainee.state = state
            r.window.append(m)
        bar.update(k)
        shown = {}
        for r in runs_:
            train = _after_call(r, step)
            if train is not None:
                prefix = f"{r.name} " if len(runs_) > 1 else ""
                shown[f"{prefix}loss"] = f"{train['loss']:.3f}"
                shown[f"{prefix}acc"] = f"{train['accuracy']:.3f}"
        if shown:
            bar.set_postfix(shown)
        if step < total:
            block = next(blocks)
    bar.close()
    for r in runs_:
        r.ckpt.save(r.trainee.state, force=True)
        r.ckpt.close()
    return info


def _after_call(run: _Run, step: int) -> dict[str, float] | None:
    """A method's logging, evaluation and checkpoint after a call that reached ``step``;
    returns the logged train metrics, if it logged."""
    every, total = run.plan.every, run.plan.total
    train = None
    if step % every["log"] == 0 or step == total:
        train = _log_train(run, step, run.window)
        run.window = []
    if step % every["eval"] == 0 or step == total:
        _evaluate_during_training(run, step)
    if run.ckpt.save(run.trainee.state):
        run.log.set_meta(wall_time_s=run.clock())
    return train


def _log_train(run: _Run, step: int, window: list[dict]) -> dict[str, float]:
    """Logs the train metrics of ``window`` (the calls since the last log), averaged."""
    train = {
        key: float(np.mean(np.concatenate([np.asarray(m[key]).ravel() for m in window])))
        for key in window[0]
    }
    run.log.write(step, {f"train/{k}": v for k, v in train.items()}, wall_time_s=run.clock())
    return train


def _evaluate_during_training(run: _Run, step: int) -> None:
    """Evaluates on ``eval_split`` (a curve point); keeps the best state if asked."""
    split = run.config.eval_split
    ev = evaluate(run.trainee, run.dataset, split, run.config.eval_batch_size)
    run.log.write(
        step,
        {
            f"{split}/accuracy": float(ev["accuracy"].mean()),
            f"{split}/margin_mean": float(ev["margin_mean"].mean()),
        },
        curve_point={f"{split}_accuracy": ev["accuracy"].tolist()},
        wall_time_s=run.clock(),
    )
    if run.best_ckpt is not None and ev["accuracy"].mean() > run.log.meta.get("best_acc", -1.0):
        run.best_ckpt.save(run.trainee.state, force=True)
        run.log.set_meta(best_acc=float(ev["accuracy"].mean()), best_step=step)


def _evaluate_best(run: _Run, final_split: str) -> dict | None:
    """The best checkpoint's ``final_split`` accuracy (``None`` if none was saved)."""
    run.best_ckpt.wait()
    trainee, last_state = run.trainee, run.trainee.state
    best_state = run.best_ckpt.restore_latest(last_state)
    out = None
    if best_state is not None:
        trainee.state = best_state
        best = evaluate(trainee, run.dataset, final_split, run.config.eval_batch_size)
        out = {
            "step": run.log.meta.get("best_step"),
            f"{run.config.eval_split}_accuracy": run.log.meta.get("best_acc"),
            f"{final_split}_accuracy": best["accuracy"].tolist(),
        }
    trainee.state = last_state
    run.best_ckpt.close()
    return out


def _finish(run: _Run, workdir: str, *, runs_info: dict | None = None) -> MethodResult:
    """Final evaluations; writes ``test_examples.npz`` and ``result.json`` (process 0).

    ``runs_info``: how the run shared its program (``extra["runs"]``)."""
    config, trainee, dataset = run.config, run.trainee, run.dataset
    final_split = config.get("final_split", "test")
    skipped = training.gather_to_host(training.nonfinite_steps(trainee.state)).reshape(-1)
    extra = {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(trainee.mesh.devices.size),
        "config": config.to_dict(),  # the effective config of this method
        # Steps skipped for non-finite gradients (optax.apply_if_finite), per seed.
        "nonfinite_steps": [int(n) for n in skipped],
    }
    if runs_info is not None and runs_info.get("mode") != "per_method":
        # Trained with other methods in one program: its wall time is the group's.
        extra["runs"] = runs_info
    if run.best_ckpt is not None and (best := _evaluate_best(run, final_split)) is not None:
        extra["best"] = best
    outs = eval_outputs(trainee, dataset, final_split, config.eval_batch_size)
    final = evaluators.evaluate(outs, trainee.evaluators)
    extra["final_metrics"] = evaluators.to_lists(final, exclude=evaluators.MARGIN_METRICS)
    if config.get("evaluate_all_splits", False):
        extra["splits"] = evaluators.per_split(
            lambda split: evaluate(trainee, dataset, split, config.eval_batch_size),
            dataset.eval_splits,
            done={final_split: final},
        )
    wall = run.clock()
    run.log.set_meta(wall_time_s=wall)
    run.log.close()
    _write_examples(os.path.join(workdir, "test_examples.npz"), outs)
    result = MethodResult(
        name=run.name,
        seeds=trainee.seeds,
        final_split=final_split,
        final_accuracy=final["accuracy"].tolist(),
        final_loss=final["loss"].tolist(),
        margin_mean=final["margin_mean"].tolist(),
        margin_p10=final["margin_p10"].tolist(),
        curves=run.log.curves(),
        wall_time_s=wall,
        steps=run.plan.total,
        config_hash=config_hash(config),
        extra=extra,
    )
    _write_json(os.path.join(workdir, "result.json"), result.to_json())
    return result


def _write_json(path: str, data: dict) -> None:
    """Writes ``data`` to ``path`` atomically, on process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


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


def read_result(workdir: str, digest: str) -> MethodResult | None:
    """The method's finished result, if ``workdir`` holds one of the config ``digest``."""
    path = os.path.join(workdir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("config_hash") != digest:
        return None
    return MethodResult.from_json(saved)


def train_method(
    config, dataset: Dataset, workdir: str, *, name: str, check_nonfinite_steps: bool = True
) -> MethodResult:
    """Trains all seeds of one method (resuming if possible), then evaluates.

    The final evaluation is on ``config.final_split`` (default ``"test"``; the
    sweep uses ``"validation"``): ``MethodResult.final_accuracy`` and the others.
    ``extra["nonfinite_steps"]`` holds, per seed, the steps skipped for
    non-finite gradients. A method whose ``result.json`` is of this config is
    read back, not trained again. Files are written by process 0 only.

    Raises:
      ConfigChangedError: ``workdir`` holds checkpoints or a result of another config.
      NonFiniteStepsError: (if ``check_nonfinite_steps``) a seed skipped more than
        ``config.max_nonfinite_fraction`` of its steps; raised after the result,
        metrics and checkpoints are written.
    """
    (result,) = train_group(
        {name: config},
        dataset,
        {name: workdir},
        record_dir=workdir,
        check_nonfinite_steps=check_nonfinite_steps,
    ).values()
    return result


def train_group(
    configs: dict[str, ml_collections.ConfigDict],
    dataset: Dataset,
    workdirs: dict[str, str],
    *,
    record_dir: str,
    check_nonfinite_steps: bool = True,
) -> dict[str, MethodResult]:
    """Trains the methods of one group together (``experiments/runs.py``), then
    evaluates each: :func:`train_method` for several methods sharing a loop.

    Methods already finished (their ``result.json`` is of their config) are read
    back; the others train in one program on one stream of batches, resumed from
    their checkpoints at a common step. Each method's files go to its own workdir,
    as if it had trained alone; ``record_dir`` gets ``runs_mode.json`` (what
    ``runs_mode="auto"`` chose).

    Raises:
      ConfigChangedError, NonFiniteStepsError: as :func:`train_method`.
      GroupOutOfStepError: the methods' checkpoints have no common step.
    """
    results, todo = {}, []
    for name, config in configs.items():
        workdir = workdirs[name]
        os.makedirs(workdir, exist_ok=True)
        check_same_config(config, workdir, name=name)
        result = read_result(workdir, config_hash(config))
        if result is not None:
            print(f"[{name}] already finished; read back {workdir}/result.json", flush=True)
            results[name] = result
        else:
            todo.append(name)
    if todo:
        lead = configs[todo[0]]
        mesh = training.make_mesh(lead.get("num_devices", 0) or None)
        started = []
        for name in todo:
            _write_json(os.path.join(workdirs[name], "config.json"), configs[name].to_dict())
            started.append(_start(configs[name], dataset, workdirs[name], name, mesh))
        _align(started)
        info = _train_together(started, record_dir)
        for run in started:
            results[run.name] = _finish(run, workdirs[run.name], runs_info=info)
    results = {name: results[name] for name in configs}
    if check_nonfinite_steps:
        check_nonfinite(
            [(results[n], max_nonfinite_fraction(configs[n])) for n in configs], record_dir
        )
    return results


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overrides: dict | None = None
) -> dict:
    """Trains every method of ``config`` and writes ``summary.json`` + plots to ``workdir``.

    Nothing trains unless every method's config is valid (``experiments/config_check.py``):
    checked before the data is read, and again with the dataset's size and splits.
    Methods that share a training loop are trained together when ``runs_mode`` says
    so (``experiments/runs.py``); otherwise one after the other.

    Args:
      config: the config; its ``methods`` (if any) are trained by groups, in order.
      workdir: where checkpoints, logs, the summary and plots go.
      overrides: the command line's ``--config.*`` overrides (``{dotted path: value}``);
        one that a method would shadow is refused.

    Raises:
      config_check.ConfigError: every problem of the config, before any training.
      WorkdirLocked: another run is using ``workdir`` (checked before anything is
        loaded or written).
    """
    config_check.validate(config, overrides=overrides)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        config = models.resolve_pretrained(config)
        dataset = get_dataset(config.dataset, **config.get("dataset_kwargs", {}))
        config_check.validate(config, num_train=dataset.num_train, eval_splits=dataset.eval_splits)
        method_configs = expand_methods(config)
        results = {}
        for group in runs.group_methods(method_configs):
            results.update(
                train_group(
                    {name: method_configs[name] for name in group},
                    dataset,
                    {name: os.path.join(workdir, name) for name in group},
                    record_dir=workdir,
                    check_nonfinite_steps=False,  # checked below, once every method is written
                )
            )
        results = {name: results[name] for name in method_configs}
        summary = _summarize(config, dataset, results, workdir)
        check_nonfinite(
            [(results[n], max_nonfinite_fraction(c)) for n, c in method_configs.items()], workdir
        )
        return summary


def _summarize(config, dataset: Dataset, results: dict[str, MethodResult], workdir: str) -> dict:
    """The run's summary; process 0 also prints it and writes it with the plots."""
    from experiments import report

    if jax.process_index() == 0:
        return report.write_summary(config, dataset.name, results, workdir)
    return report.summarize(config, dataset.name, results)
