"""The training loop of a group: one stream of blocks, every method's runs in one program.

:func:`train` trains the sessions of a group from their common step to the end:
it chooses the group's program form (``experiments/run/forms.py``), records it
in each method's log (and warns when a resumed method trains in another form
than before), then calls the program on each block, and after each call logs,
evaluates and checkpoints each method when due.
"""

from __future__ import annotations

import threading
import warnings

import jax
import numpy as np

from experiments.config.identity import config_hash
from experiments.data import feed
from experiments.run import evaluation, forms
from experiments.run.logs import progress, say
from experiments.run.session import Session


def _single_program(session: Session) -> forms.Program:
    """One method alone (``runs_mode="per_method"``): its seed-vmapped, scanned program."""

    def call(states, block):
        (state,) = states
        state, metrics = session.trainee.train_steps(state, block)
        return (state,), (metrics,)

    return call


def _choose(sessions: list[Session], states: list, first_block, record_dir: str) -> dict:
    """How the group's runs share a program (``extra["runs"]`` of each result)."""
    config = sessions[0].config
    mode = config.get("runs_mode", "per_method")
    seeds = sessions[0].trainee.seeds
    info = {"group": [s.name for s in sessions], "runs": len(sessions) * len(seeds)}
    if mode == "per_method":
        return {**info, "mode": mode, "how": "given"}

    def measure_args():
        # One run: the forms are the same program; only scan or loop is a choice.
        candidates = ("vmap", "vmap" + forms.LOOP) if info["runs"] == 1 else forms.CANDIDATES
        steps = [s.trainee.train_step for s in sessions]
        return steps, len(seeds), sessions[0].trainee.mesh, tuple(states), first_block, candidates

    choice = forms.choose(
        mode,
        group="+".join(info["group"]),
        hashes={s.name: config_hash(s.config) for s in sessions},
        record_dir=record_dir,
        backend=jax.default_backend(),
        model=config.model,
        measure_args=None if first_block is None else measure_args,
    )
    if mode in ("auto", "measure"):
        timings = ", ".join(f"{m} {t:.1f}" for m, t in choice.get("ms_per_step", {}).items())
        say(
            f"[{'+'.join(info['group'])}] {info['runs']} runs in one program: "
            f"{choice['mode']} (runs_mode={mode!r}, "
            f"{choice['how']}{'; ms per step of all runs: ' + timings if timings else ''})"
        )
    return {**info, "mode": choice["mode"], "how": choice["how"], "choice": choice}


def _begin_form(sessions: list[Session], mode: str, step: int) -> None:
    """Records the form of the steps from ``step`` on; warns when it changed."""
    for s in sessions:
        previous = s.log.begin_form(mode, step)
        if previous is not None and previous["mode"] != "unrecorded":
            warnings.warn(
                f"[{s.name}] steps {previous['from_step']}-{step} were trained in the program "
                f"form {previous['mode']!r} and now resume in {mode!r} (runs_mode="
                f"{s.config.get('runs_mode', 'per_method')!r}): the same training, but its "
                "float rounding differs from here on, so the results will differ slightly "
                f"from an uninterrupted {previous['mode']!r} run. To resume bit-identically, "
                f"pass --config.runs_mode={previous['mode']}. result.json records every form "
                "with the steps it trained.",
                forms.FormChangedWarning,
                stacklevel=2,
            )


def _program(sessions: list[Session], mode: str) -> forms.Program:
    if mode == "per_method":
        return _single_program(sessions[0])
    steps = [s.trainee.train_step for s in sessions]
    trainee = sessions[0].trainee
    return forms.program(steps, len(trainee.seeds), mode, trainee.mesh)


class Stopped(Exception):
    """The group stopped before its end because ``stop`` was set (the user interrupted a
    run of groups in parallel threads); its checkpoints up to here are kept, and a rerun
    resumes."""


def train(
    sessions: list[Session],
    states: list,
    start: int,
    record_dir: str,
    stop: threading.Event | None = None,
) -> tuple[list, dict]:
    """Trains the sessions of a group from their (common) ``start`` step to the end, on
    one stream of blocks; logs, evaluates and checkpoints each method on the way.
    ``stop`` (set from another thread) ends the loop between two calls with
    :class:`Stopped`.

    Returns:
      ``(states, runs_info)``: the final states, and how the runs shared the program
      (``extra["runs"]`` of each result, without its ``forms``).
    """
    lead = sessions[0]
    total, k = lead.plan.total, lead.plan.per_call
    trainee = lead.trainee
    blocks = feed.train_blocks(  # on the device when the dataset has device_data
        lead.dataset, trainee.seeds, lead.config.batch_size, k, trainee.mesh, start_step=start
    )
    first = next(blocks) if start < total else None
    info = _choose(sessions, states, first, record_dir)
    if start < total:
        _begin_form(sessions, info["mode"], start)
    call = _program(sessions, info["mode"])
    for s in sessions:
        s.clock.start()
    bar = progress(total=total, initial=start, desc="+".join(s.name for s in sessions))
    windows = [[] for _ in sessions]  # train metrics since each method's last log
    step, block = start, first
    while step < total:
        if stop is not None and stop.is_set():
            bar.close()
            raise Stopped(f"[{bar.desc}] stopped at step {step} of {total}")
        new_states, metrics = call(tuple(states), block)
        states = list(new_states)
        step += k
        for window, m in zip(windows, metrics, strict=True):
            window.append(m)
        bar.update(k)
        shown = {}
        for i, s in enumerate(sessions):
            train_metrics = _after_call(s, states[i], step, windows[i])
            if train_metrics is not None:
                windows[i] = []
                prefix = f"{s.name} " if len(sessions) > 1 else ""
                shown[f"{prefix}loss"] = f"{train_metrics['loss']:.3f}"
                shown[f"{prefix}acc"] = f"{train_metrics['accuracy']:.3f}"
        if shown:
            bar.set_postfix(shown)
        if step < total:
            block = next(blocks)
    bar.close()
    for s, state in zip(sessions, states, strict=True):
        s.ckpt.save(state, force=True)
        s.ckpt.close()
    return states, info


def _after_call(s: Session, state, step: int, window: list) -> dict[str, float] | None:
    """A method's logging, evaluation and checkpoint after a call that reached ``step``;
    returns the logged train metrics, if it logged."""
    every, total = s.plan.every, s.plan.total
    train_metrics = None
    if step % every["log"] == 0 or step == total:
        train_metrics = _log_train(s, step, window)
    if step % every["eval"] == 0 or step == total:
        evaluation.during_training(s, state, step)
    if s.ckpt.save(state):
        s.log.set_meta(wall_time_s=s.clock())
    return train_metrics


def _log_train(s: Session, step: int, window: list[dict]) -> dict[str, float]:
    """Logs the train metrics of ``window`` (the calls since the last log), averaged."""
    train_metrics = {
        key: float(np.mean(np.concatenate([np.asarray(m[key]).ravel() for m in window])))
        for key in window[0]
    }
    forms_so_far = s.log.forms()
    s.log.write(
        step,
        {f"train/{k}": v for k, v in train_metrics.items()},
        wall_time_s=s.clock(),
        form=forms_so_far[-1] if forms_so_far else None,
    )
    return train_metrics


def forms_trained(s: Session) -> list[dict]:
    """``[{"mode", "from_step", "to_step"}]``: the forms that trained the method's steps."""
    entries = s.log.forms()
    ends = [e["from_step"] for e in entries[1:]] + [s.plan.total]
    return [{**e, "to_step": end} for e, end in zip(entries, ends, strict=True)]
