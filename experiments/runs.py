"""Runs in one program: the seeds x methods of a config trained together.

A *run* is one (method, seed). The trainer (``experiments/trainer.py``) groups
the methods of a config that share a training loop -- the same data stream, the
same length, and the same log, evaluation and checkpoint steps (the fields of
:data:`LOOP_FIELDS` equal) -- and trains every run of a group in one jitted
program per call, on one stream of training blocks ``[steps, seeds, batch,
...]``. So the baseline and PMM twins of a seed see the same batches in the same
order: the comparison is paired by construction. Each method keeps its own
model, optimizer, alpha schedule and loss (its own step function); only the loop
and the data are shared. Results are reported per method, per seed, as before.

How the runs share the program (``config.runs_mode``):

``"per_method"``
  no grouping: each method trains alone, its seeds ``jax.vmap``-ed (the MNIST-1D
  job's default: its published numbers were produced this way).
``"vmap"``
  each method's seeds ``jax.vmap``-ed, the methods side by side in one
  ``lax.scan``-ned program.
``"unroll"``
  every run its own copy of the step, side by side in one scanned program (no
  batched convolutions; a program R times as large to compile).
``"sequential"``
  one scanned program per method, run once per seed (the seed a dynamic index
  into the stacked state, updated in place), one after another on the same block.
``"auto"``
  the fastest of those three, measured on the first block (:func:`measure`),
  printed, recorded in ``runs_mode.json`` in the workdir and in each method's
  ``result.json`` (``extra["runs"]``), and reused when the run resumes, so that
  a resumed run computes exactly what an uninterrupted one does.

Why measure: what is fastest depends on the backend. On XLA:CPU a vmapped
convolution becomes a grouped convolution that costs several times R separate
ones (ResNet-20, 2 runs: 4x per run), while the MNIST-1D CNN vmaps well; on a GPU
whose step is bound by kernel launches (the CIFAR ResNets at batch 64), one
program doing R runs' work per launch is the point.

The programs are numerically the same training (each run's step is the same
function of its state and batch) but not bitwise: XLA fuses and orders the
floating-point work of each form differently. A run is reproducible bit for bit
given its mode, which is why ``"auto"`` keeps its choice across resumes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pmm_jax import training

RUNS_MODES = ("per_method", "auto", "vmap", "unroll", "sequential")
CANDIDATES = ("vmap", "unroll", "sequential")  # what "auto" chooses from

# Methods share a program only if these fields are equal: the data stream, the
# length, and the steps at which the loop logs, evaluates and checkpoints.
LOOP_FIELDS = (
    "dataset",
    "dataset_kwargs",
    "seeds",
    "batch_size",
    "num_train_steps",
    "num_epochs",
    "steps_per_call",
    "epochs_per_call",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "log_every_epochs",
    "eval_every_epochs",
    "checkpoint_every_epochs",
    "eval_split",
    "final_split",
    "eval_batch_size",
    "save_best",
    "keep_checkpoints",
    "num_devices",
    "runs_mode",
)

# Training blocks are [steps_per_call, seeds, batch, ...]: sharded on axis 2.
TRAIN_BATCH_AXIS = 2
RECORD = "runs_mode.json"

# A program: (states, block) -> (states, metrics), one state and one metrics
# dict ([steps, seeds] leaves) per method of the group.
Program = Callable[[tuple, dict], tuple[tuple, tuple]]


def group_methods(configs: Mapping[str, Mapping]) -> list[list[str]]:
    """The methods of ``configs`` (``{name: config}``, in run order) in groups that
    share a program: equal :data:`LOOP_FIELDS`, ``runs_mode`` not ``"per_method"``.
    The groups keep the order of their first method; a method alone is a group."""
    groups: dict[str, list[str]] = {}
    for name, config in configs.items():
        mode = config.get("runs_mode", "per_method")
        if mode == "per_method":
            key = "\0" + name
        else:
            loop = {f: _plain(config.get(f)) for f in LOOP_FIELDS}
            key = json.dumps(loop, sort_keys=True, default=str)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def program(step_fns: Sequence[Callable], num_seeds: int, mode: str, mesh: Mesh) -> Program:
    """The jitted program that trains every run of a group for one block.

    Args:
      step_fns: one train step per method, ``(state, batch) -> (state, metrics)``
        for one run (``pmm_jax.training.make_train_step``).
      num_seeds: the seeds per method (the states' and the blocks' seed axis).
      mode: ``"vmap"``, ``"unroll"`` or ``"sequential"`` (module docstring).
      mesh: the data-parallel mesh; states replicated, blocks sharded on
        :data:`TRAIN_BATCH_AXIS`.

    Returns:
      ``(states, block) -> (states, metrics)``; the states are donated.
    """
    if mode not in CANDIDATES:
        raise ValueError(f"runs mode must be one of {CANDIDATES}, got {mode!r}.")
    if mode == "sequential":
        return _sequential(step_fns, num_seeds, mesh)
    run_method = _vmapped if mode == "vmap" else _unrolled(num_seeds)

    def body(states, batch):
        outs = [run_method(f, s, batch) for f, s in zip(step_fns, states, strict=True)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    return training.jit_sharded(
        lambda states, block: lax.scan(body, states, block), mesh, batch_axis=TRAIN_BATCH_AXIS
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


def _stack(trees, axis: int = 0):
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=axis), *trees)


def _sequential(step_fns, num_seeds: int, mesh: Mesh) -> Program:
    replicated = NamedSharding(mesh, P())
    data = training.batch_sharding(mesh, batch_axis=TRAIN_BATCH_AXIS)

    def one_run(step):
        def run(state, block, i):
            own = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), state)
            rows = jax.tree.map(
                lambda a: lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False), block
            )
            own, metrics = lax.scan(step, own, rows)
            state = jax.tree.map(
                lambda a, x: lax.dynamic_update_index_in_dim(a, x, i, 0), state, own
            )
            return state, metrics

        return jax.jit(
            run,
            in_shardings=(replicated, data, replicated),
            out_shardings=replicated,
            donate_argnums=(0,),
        )

    runs = [one_run(step) for step in step_fns]

    def call(states, block):
        new_states, metrics = [], []
        for run, state in zip(runs, states, strict=True):
            per_seed = []
            for i in range(num_seeds):
                state, m = run(state, block, np.int32(i))
                per_seed.append(m)
            new_states.append(state)
            metrics.append(_stack(per_seed, axis=1))  # [steps, seeds]
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
    if jax.process_index() != 0:
        return
    records = _read(workdir)
    records[group] = {**choice, "config_hashes": dict(hashes)}
    path = os.path.join(workdir, RECORD)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _read(workdir: str) -> dict:
    try:
        with open(os.path.join(workdir, RECORD)) as f:
            records = json.load(f)
    except (OSError, ValueError):
        return {}  # none yet, or torn: measured again
    return records if isinstance(records, dict) else {}
