"""One method's training in this process: started (or resumed) and brought in step
with the other methods of its group.

A :class:`Session` holds what does not change while a method trains -- its
config, plan, trainee, checkpointers, log, clock and directory; the train state
is a value passed to and returned by the functions that advance it.
"""

from __future__ import annotations

import dataclasses
import time

import ml_collections
from jax.sharding import Mesh

from experiments.config.plan import Plan, plan_of
from experiments.data.base import Dataset
from experiments.run import calibrate
from experiments.run.build import Trainee, build, initial_state_fn
from experiments.run.logs import MetricsLog, best_from_curves, say
from experiments.run.workdir import MethodDir
from pmm_jax import training


class Clock:
    """A method's wall time: what earlier sessions logged, plus this one's since ``start``."""

    def __init__(self, elapsed: float):
        self.elapsed, self.t0 = elapsed, None

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return self.elapsed + (0.0 if self.t0 is None else time.perf_counter() - self.t0)


@dataclasses.dataclass(frozen=True)
class Session:
    """One method's training in this process (its state is passed alongside)."""

    name: str
    config: ml_collections.ConfigDict
    dataset: Dataset
    plan: Plan
    trainee: Trainee
    dir: MethodDir
    ckpt: training.Checkpointer
    best_ckpt: training.Checkpointer | None  # the best state by mean eval_split accuracy
    log: MetricsLog
    clock: Clock


def step_of(state: training.TrainState) -> int:
    return int(training.gather_to_host(state.step)[0])


def start(
    config, dataset: Dataset, mdir: MethodDir, name: str, mesh: Mesh
) -> tuple[Session, training.TrainState, int]:
    """Builds the method's trainee and resumes it from its latest checkpoint, if any.

    Returns:
      ``(session, state, step)``: the state restored (or initial) and its step.
    """
    plan = plan_of(config, dataset.num_train)
    ckpt = training.Checkpointer(
        mdir.checkpoints, save_every=plan.every["checkpoint"], keep=config.keep_checkpoints
    )
    best_ckpt = None
    if config.get("save_best", False):  # select on validation!
        best_ckpt = training.Checkpointer(mdir.best, save_every=1, keep=1)
    state = initial_state_fn(config, dataset, mesh, plan)()
    state = ckpt.restore_latest(state) or state
    step = step_of(state)
    log = MetricsLog(mdir.path, start_step=step)
    trainee = build(
        config,
        dataset,
        mesh,
        plan,
        alpha_ratio=_alpha_ratio(config, dataset, mesh, plan, log, name),
    )
    clock = Clock(log.meta.get("wall_time_s", 0.0))
    session = Session(name, config, dataset, plan, trainee, mdir, ckpt, best_ckpt, log, clock)
    if best_ckpt is not None and "best_acc" not in log.meta:
        # meta.json was lost: the best evaluation so far is the curves' best.
        best = best_from_curves(log.curves(), f"{config.eval_split}_accuracy")
        if best is not None:
            log.set_meta(best_acc=best[0], best_step=best[1])
    if step:
        say(f"[{name}] resuming at step {step}/{plan.total}")
    return session, state, step


def _alpha_ratio(config, dataset, mesh, plan, log: MetricsLog, name: str) -> float | None:
    """``alpha_schedule="auto"``'s measured ratio: recorded in ``meta.json`` (read back
    on resume), or measured now (``experiments/run/calibrate.py``)."""
    if config.pmm.get("alpha_schedule") != "auto":
        return None
    record = log.meta.get("alpha_calibration")
    if not (isinstance(record, dict) and isinstance(record.get("ratio"), float)):
        record = calibrate.measure(config, dataset, mesh, plan)
        log.set_meta(alpha_calibration=record)
    end = config.pmm.alpha_end * record["ratio"]
    say(
        f"[{name}] alpha 'auto': base risk / penalty at the start = {record['ratio']:.4g} "
        f"(over {record['steps']} steps); alpha ramps {end / 100:.3g} -> {end:.3g}"
    )
    return record["ratio"]


class GroupOutOfStepError(RuntimeError):
    """The methods of a group were checkpointed at different steps and cannot be
    brought back to a common one."""


def align(
    sessions: list[Session], states: list[training.TrainState], steps: list[int]
) -> tuple[list[Session], list[training.TrainState], int]:
    """Brings the methods of a group to one step: the earliest of their latest
    checkpoints (a crash between two methods' saves leaves them one save apart).

    Returns:
      ``(sessions, states, step)``: a method moved back gets a new log (its lines
      after that step dropped).

    Raises:
      GroupOutOfStepError: a method holds no checkpoint at that step.
    """
    common = min(steps)
    out_sessions, out_states = [], []
    for s, state, step in zip(sessions, states, steps, strict=True):
        if step != common:
            state = _back_to(s, state, step, common)
            say(f"[{s.name}] back to step {common}, where its group's other methods are")
            s.log.close()
            s = dataclasses.replace(s, log=MetricsLog(s.dir.path, start_step=common))
        out_sessions.append(s)
        out_states.append(state)
    return out_sessions, out_states, common


def _back_to(s: Session, state, step: int, common: int):
    if common == 0:
        return s.trainee.initial_state()
    restored = s.ckpt.restore_latest(state, max_step=common)
    if restored is None or step_of(restored) != common:
        raise GroupOutOfStepError(
            f"[{s.name}] is at step {step}, the other methods of its group at "
            f"{common}, and {s.ckpt.directory} holds no checkpoint at step {common}. "
            "Delete the newer checkpoints of that method (or all of its checkpoints) "
            "to train the group on from a common step."
        )
    return restored
