"""Runs in one program: the seeds x methods of a group trained together.

A *run* is one (method, seed). The loop (``experiments/run/loop.py``) groups
the methods of a config that share a training loop -- the same data stream, the
same length, and the same log, evaluation and checkpoint steps (the
``loop`` fields of ``experiments.config.fields`` equal) -- and trains every run
of a group in one jitted program per call, on one stream of training blocks
``[steps, seeds, batch, ...]``. So the baseline and PMM twins of a seed see the
same batches in the same order: the comparison is paired by construction. Each
method keeps its own model, optimizer, alpha schedule and loss (its own step
function); only the loop and the data are shared. Results are reported per
method, per seed, as before.

How the runs share the program (``config.runs_mode``):

``"per_method"``
  no grouping: each method trains alone, its seeds ``jax.vmap``-ed.
``"vmap"``
  each method's seeds ``jax.vmap``-ed, the methods side by side in one
  ``lax.scan``-ned program.
``"unroll"``
  every run its own copy of the step, side by side in one scanned program (no
  batched convolutions; a program R times as large to compile).
``"sequential"``
  one scanned program per method, run once per seed (the seed a dynamic index
  into the stacked state, updated in place), one after another on the same block.
``"vmap_loop"``, ``"unroll_loop"``, ``"sequential_loop"``
  the same forms with one program per step, dispatched ``steps_per_call`` times
  from Python, instead of a ``lax.scan`` over the block (XLA:CPU lays 2-D
  convolutions out differently inside a scan; ``docs/gpu.md`` has the figures).
``"auto"``
  a form fixed by :func:`auto_form` from the backend and the model (the same on
  every run of the same command: no timing decides it).
``"measure"``
  the fastest of the six, timed on the first block (:func:`measure`; opt-in:
  on a loaded machine two fresh runs may choose differently).

The forms are numerically the same training (each run's step is the same
function of its state and batch) but not bitwise: XLA fuses and orders the
floating-point work of each form differently. A run is reproducible bit for bit
given its form, so ``"auto"`` and ``"measure"`` record their choice in
``runs_mode.json`` and keep it when the run resumes; each method's log records
the form of every stretch of steps (``meta.json``'s ``forms``, in
``result.json`` as ``extra["runs"]["forms"]``), and resuming in another form
says so with a :class:`FormChangedWarning`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.config.fields import CANDIDATES, LOOP
from experiments.run.workdir import RUNS_RECORD, write_json
from pmm_jax import training

# Training blocks are [steps_per_call, seeds, batch, ...]: sharded on axis 2.
TRAIN_BATCH_AXIS = 2

# A program: (states, block) -> (states, metrics), one state and one metrics
# dict ([steps, seeds] leaves) per method of the group.
Program = Callable[[tuple, dict], tuple[tuple, tuple]]

# The models whose steps XLA:CPU runs well vmapped and scanned (1-D convolutions and
# dense layers; the 2-D convnets did not: docs/gpu.md, paper_speed).
SCAN_FRIENDLY_ON_CPU = ("cnn1d", "mlp")


class FormChangedWarning(UserWarning):
    """A method resumed in another program form than the one that trained its steps so
    far: the float rounding differs from an uninterrupted run from there on."""


def auto_form(backend: str, model: str) -> str:
    """The form ``runs_mode="auto"`` trains a group in: fixed by the backend and the
    model, so that two runs of one command train alike.

    On the CPU, 2-D convnets train one program per step and per run
    (``"sequential_loop"``: XLA:CPU runs their scanned and their batched
    convolutions slower, as measured in ``docs/gpu.md``), the 1-D CNN and the MLP
    vmapped and scanned (``"vmap"``); on accelerators every form is ``"vmap"`` (one
    program doing the R runs' work per launch). ``"measure"`` times them instead.
    """
    if backend == "cpu" and model not in SCAN_FRIENDLY_ON_CPU:
        return "sequential" + LOOP
    return "vmap"


def program(step_fns: Sequence[Callable], num_seeds: int, mode: str, mesh: Mesh) -> Program:
    """The jitted program that trains every run of a group for one block.

    Args:
      step_fns: one train step per method, ``(state, batch) -> (state, metrics)``
        for one run (``pmm_jax.training.make_train_step``).
      num_seeds: the seeds per method (the states' and the blocks' seed axis).
      mode: one of :data:`CANDIDATES` (module docstring): a form, scanned over the
        block's steps in one program, or with ``"_loop"`` one program per step.
      mesh: the data-parallel mesh; states replicated, blocks sharded on
        :data:`TRAIN_BATCH_AXIS`.

    Returns:
      ``(states, block) -> (states, metrics)``; the states are donated.
    """
    if mode not in CANDIDATES:
        raise ValueError(f"runs mode must be one of {CANDIDATES}, got {mode!r}.")
    form, scanned = mode.removesuffix(LOOP), not mode.endswith(LOOP)
    if form == "sequential":
        return _sequential(step_fns, num_seeds, mesh, scanned)
    run_method = _vmapped if form == "vmap" else _unrolled(num_seeds)

    def body(states, batch):
        outs = [run_method(f, s, batch) for f, s in zip(step_fns, states, strict=True)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    if scanned:
        return training.jit_sharded(
            lambda states, block: lax.scan(body, states, block), mesh, batch_axis=TRAIN_BATCH_AXIS
        )
    one_step = _jit(lambda states, block, t: body(states, _at(block, t, 0)), mesh, indices=1)

    def call(states, block):
        metrics = []
        for t in range(_steps(block)):
            states, m = one_step(states, block, np.int32(t))
            metrics.append(m)
        return states, _stack(metrics)  # [steps, seeds] per method

    return call


def _jit(fn, mesh: Mesh, *, indices: int):
    """``fn(state, block, *indices)`` jitted: state replicated and donated, block
    sharded on :data:`TRAIN_BATCH_AXIS`, integer indices replicated."""
    replicated = NamedSharding(mesh, P())
    data = training.batch_sharding(mesh, batch_axis=TRAIN_BATCH_AXIS)
    return jax.jit(
        fn,
        in_shardings=(replicated, data) + (replicated,) * indices,
        out_shardings=replicated,
        donate_argnums=(0,),
    )


def _vmapped(step, state, batch):
    return jax.vmap(step)(state, batch)


def _unrolled(num_seeds: int):
    def run_method(step, state, batch):
        outs = [step(_index(state, i), _index(batch, i)) for i in range(num_seeds)]
        return _stack([o[0] for o in outs]), _stack([o[1] for o in outs])

    return run_method


def _index(tree, i: int):
    return jax.tree.map(lambda a: a[i], tree)


def _at(tree, i, axis: int):
    """Entry ``i`` (a traced integer) of every leaf along ``axis``."""
    return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, axis, keepdims=False), tree)


def _steps(block) -> int:
    return jax.tree.leaves(block)[0].shape[0]


def _stack(trees, axis: int = 0):
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=axis), *trees)


def _sequential(step_fns, num_seeds: int, mesh: Mesh, scanned: bool) -> Program:
    """One program per method, called once per seed (scanned over the block), or once
    per seed and step (``scanned=False``); the seed's state updated in place."""

    def one_run(step):
        def put(state, i, own):
            return jax.tree.map(
                lambda a, x: lax.dynamic_update_index_in_dim(a, x, i, 0), state, own
            )

        if scanned:

            def run(state, block, i):
                own, metrics = lax.scan(step, _at(state, i, 0), _at(block, i, 1))
                return put(state, i, own), metrics

            return _jit(run, mesh, indices=1)

        def run_step(state, block, i, t):
            own, metrics = step(_at(state, i, 0), _at(_at(block, t, 0), i, 0))
            return put(state, i, own), metrics

        return _jit(run_step, mesh, indices=2)

    programs = [one_run(step) for step in step_fns]

    def call(states, block):
        new_states, metrics = [], []
        for run, state in zip(programs, states, strict=True):
            if scanned:
                per_seed = []
                for i in range(num_seeds):
                    state, m = run(state, block, np.int32(i))
                    per_seed.append(m)
                metrics.append(_stack(per_seed, axis=1))  # [steps, seeds]
            else:
                per_step = []
                for t in range(_steps(block)):
                    per_seed = []
                    for i in range(num_seeds):
                        state, m = run(state, block, np.int32(i), np.int32(t))
                        per_seed.append(m)
                    per_step.append(_stack(per_seed))
                metrics.append(_stack(per_step))  # [steps, seeds]
            new_states.append(state)
        return tuple(new_states), tuple(metrics)

    return call


def measure(
    step_fns: Sequence[Callable],
    num_seeds: int,
    mesh: Mesh,
    states: tuple,
    block: dict,
    *,
    candidates: Sequence[str] = CANDIDATES,
    steps: int = 4,
    repeats: int = 2,
) -> dict:
    """Times each candidate mode on the first ``steps`` steps of ``block``.

    Each candidate trains copies of ``states`` (the originals are left as they
    are): one call to compile and warm up, then ``repeats`` timed calls; its
    figure is the fastest call, per step of all the group's runs.

    Returns:
      ``{"mode": the fastest, "ms_per_step": {mode: float}, "compile_s": {mode:
      float}, "measure_steps": int}``.
    """
    steps = max(1, min(steps, jax.tree.leaves(block)[0].shape[0]))
    sub = jax.tree.map(lambda a: a[:steps], block)
    ms, compile_s = {}, {}
    for mode in candidates:
        call = program(step_fns, num_seeds, mode, mesh)
        trial = jax.tree.map(jnp.copy, states)
        t0 = time.perf_counter()
        trial, metrics = call(trial, sub)
        jax.block_until_ready((trial, metrics))
        compile_s[mode] = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            trial, metrics = call(trial, sub)
            jax.block_until_ready((trial, metrics))
            best = min(best, time.perf_counter() - t0)
        ms[mode] = 1000 * best / steps
        del trial, metrics
    return {
        "mode": min(ms, key=ms.get),
        "ms_per_step": ms,
        "compile_s": compile_s,
        "measure_steps": steps,
    }


def agree(choice: dict | None) -> dict | None:
    """Process 0's ``choice`` (or its ``None``) on every process.

    With several processes each one measures its own timings, and may read a
    record the others cannot see: all must run the same programs, so process 0
    decides whether to measure and which mode wins. One process: as it is.
    """
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils

    index = -1 if choice is None else CANDIDATES.index(choice["mode"])
    index = int(multihost_utils.broadcast_one_to_all(np.int32(index)))
    if index < 0:
        return None
    if choice is None or choice["mode"] != CANDIDATES[index]:
        choice = {"mode": CANDIDATES[index], "ms_per_step": {}, "from": "process 0"}
    return choice


def read_choice(workdir: str, group: str, hashes: Mapping[str, str]) -> dict | None:
    """The choice ``"auto"`` recorded for ``group`` (methods with these config
    hashes) in ``workdir/runs_mode.json``, if any."""
    record = _read(workdir).get(group)
    if record and record.get("config_hashes") == dict(hashes):
        return record
    return None


def write_choice(workdir: str, group: str, hashes: Mapping[str, str], choice: dict) -> None:
    """Records ``choice`` for ``group`` in ``workdir/runs_mode.json`` (atomically;
    process 0 only)."""
    records = _read(workdir)
    records[group] = {**choice, "config_hashes": dict(hashes)}
    write_json(os.path.join(workdir, RUNS_RECORD), records, sort_keys=True)


def _read(workdir: str) -> dict:
    path = os.path.join(workdir, RUNS_RECORD)
    if not os.path.exists(path):
        return {}  # none yet
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError):
        records = None
    if not isinstance(records, dict):
        warnings.warn(
            f"{path} is unreadable (torn or not a JSON object): the runs' form is chosen "
            "again, and a resumed run may then differ from an uninterrupted one in float "
            "rounding (it is the same training).",
            stacklevel=2,
        )
        return {}
    return records


def choose(
    mode: str,
    *,
    group: str,
    hashes: Mapping[str, str],
    record_dir: str,
    backend: str,
    model: str,
    measure_args: Callable[[], tuple] | None,
) -> dict:
    """The form a group trains in, and how it was chosen.

    An explicit form is taken as it is. ``"auto"`` and ``"measure"`` first look for
    the choice recorded for this group (methods with these config hashes) in
    ``record_dir/runs_mode.json``, so that a resumed run trains in the form of the
    uninterrupted one; without one, ``"auto"`` takes :func:`auto_form` and
    ``"measure"`` times the candidates (:func:`measure`) on the first block, and the
    choice is recorded. With several processes all take process 0's choice.

    Args:
      mode: the config's ``runs_mode`` (not ``"per_method"``).
      group: the group's name (its methods joined by ``+``).
      hashes: ``{method: config hash}``.
      record_dir: where ``runs_mode.json`` is.
      backend, model: for :func:`auto_form`.
      measure_args: ``() -> (step_fns, num_seeds, mesh, states, block, candidates)``
        for ``"measure"``; None when nothing is left to train (nothing is measured).

    Returns:
      ``{"mode": form, "how": "given" | "rule" | "measured" | "recorded", ...}``,
      with the timings when measured.
    """
    if mode not in ("auto", "measure"):
        return {"mode": mode, "how": "given"}
    recorded = agree(read_choice(record_dir, group, hashes))
    if recorded is not None:
        return {**recorded, "how": "recorded"}
    if mode == "auto":
        choice = {"mode": auto_form(backend, model), "how": "rule", "backend": backend}
    elif measure_args is None:
        return {"mode": "vmap", "how": "not measured: nothing left to train"}
    else:
        steps, num_seeds, mesh, states, block, candidates = measure_args()
        choice = measure(steps, num_seeds, mesh, states, block, candidates=candidates)
        choice["how"] = "measured"
    choice["device"] = str(jax.devices()[0].device_kind)
    choice = agree(choice)  # every process takes process 0's choice
    write_choice(record_dir, group, hashes, choice)
    return choice
