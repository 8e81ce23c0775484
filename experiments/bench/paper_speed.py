"""paper_speed: how fast the paper's CIFAR ResNet-44 training program runs, R runs at a time.

    python -m experiments.bench paper-speed --out paper_speed.json [--runs 1,2,10]
        [--modes vmap,unroll,sequential] [--dtypes float32,bfloat16] [--steps-per-call 50]
        [--peer eager,reduce-overhead] [--max-time 180] [--tiny]

What is timed is what the trainer runs for ``experiments/configs/cifar10_resnet44.py``
(``get_config("")``: batch 64, SGD momentum 0.9, weight decay 1e-4, the step lr
schedule, on-device crop + flip + normalization, PMM with the authors' arithmetic
``penalty_reduction="official"`` and the per-epoch alpha ramp; the baseline is the
same config with ``pmm.alpha_schedule="none"``): each method's ``Trainee`` from
``experiments.run.build.build`` (given a stand-in CIFAR-10 ``Dataset``: same shapes,
classes, training-set size and preprocess, no records), their one-run steps
combined by ``experiments.run.forms.program`` in one of its modes (``vmap``,
``unroll``, ``sequential`` and their ``_loop`` forms), fed blocks ``{"x":
uint8[steps, seeds, 64, 32, 32, 3], "y": int32[steps, seeds, 64]}`` of random
data made on the device once (no host copy in the timed loop).

The runs of a row: R=1 is PMM alone (one seed); R=2 is the baseline and PMM twins
of one seed; R=2s is s seeds x {baseline, PMM} (R=10: 5 seeds). Each row: one
call of ``--steps-per-call`` scanned steps to compile and warm up
(``first_call_s``; ``compile_s`` = that minus one timed call), then up to
``--reps`` timed calls (at least 2 unless ``--reps 1``; none started after
``--row-time`` s), each
ended by ``jax.block_until_ready``. ``step_ms`` is the *median* call divided by
the steps per call (``step_ms_min``: the fastest call): the wall time of one
training step of all R runs together. ``images_per_s`` = R * 64 * 1000 /
step_ms; ``projected_200_epochs_min`` = 200 epochs * 703 steps (45,000 images /
64) * step_ms / 60,000: the time to train all R runs of the row for 200 epochs
(the steps alone: no evaluation, checkpoints or data loading). ``per_run_ms`` =
step_ms / R, and ``comparisons`` hold each R > 1 row against R separate runs:
``ratio`` = step_ms / (R x the fastest R=1 row of its dtype and XLA flags); above
1 the R-runs program is slower per run than separate runs. (R=1 is a PMM run;
half of the runs of an R > 1 row are baseline runs, whose step skips the
penalty: a ratio of 1 is then a slight loss.)

On CPU the default runs are R in {1, 2} and ``unroll`` is not timed at R >= 10
(an R-fold program to compile; ``--allow-slow-compile`` times it). Rows of the
modes:R in ``--isolate`` (default ``unroll:10``) run in a child process under
``--row-timeout`` seconds, as do the ``--xla-variants`` (each a child with extra
``XLA_FLAGS``: ``cmdbuf_off`` turns XLA:GPU's command buffers (CUDA graphs) off,
``cmdbuf_while`` adds ``WHILE`` and ``CONDITIONAL`` to the default command types,
so that the scanned loop may be captured whole; GPU only). The R=1 ``noscan``
rows (``--no-reference`` drops them) are a reference, not a trainer mode: the
same one-run step, jitted alone and called once per step from Python, no
``lax.scan``. The work runs in order of importance (float32: the reference,
vmap and sequential rows; the PyTorch peer's first variant; its other quick
variants and the float32 unroll rows; bfloat16; the XLA variants; the isolated
rows; the slow peer variant); nothing new starts after ``--max-time`` seconds, and
the JSON is rewritten after each piece, so a run cut short keeps what it did.
What was not run is listed in ``skipped`` with the reason.

The PyTorch peer (``experiments.bench.torch_peer``; optional: skipped when torch
is not installed): one run of the same network and the authors' objective at
batch 64, each ``--peer`` variant (eager, channels_last, ``torch.compile`` modes)
in a child process under ``--peer-timeout``; the fastest is the ``peers`` row
(the others, and failures, in its ``variants``).

JSON: ``{"device", "jax", "date", "command", "rows": [{"name", "runs",
"batch_per_run": 64, "step_ms", "images_per_s", "projected_200_epochs_min",
"mode", "dtype", "steps_per_call", "compile_s", ...}], "peers": [...],
"comparisons": [...], "skipped": [...]}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

PROG = "python -m experiments.bench paper-speed"
BATCH = 64
EPOCHS = 200
CIFAR_TRAIN = 45_000
STEPS_PER_EPOCH = CIFAR_TRAIN // BATCH  # 703
MODES = (  # experiments.config.fields.CANDIDATES
    "vmap",
    "unroll",
    "sequential",
    "vmap_loop",
    "unroll_loop",
    "sequential_loop",
)
NOSCAN = "noscan"  # the reference row: one jitted step per Python-loop iteration
DTYPES = ("float32", "bfloat16")
XLA_VARIANTS = {
    "cmdbuf_off": "--xla_gpu_enable_command_buffer=",
    "cmdbuf_while": (
        "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
    ),
}
PEER_DEFAULT = {"cpu": "eager", "gpu": "eager,reduce-overhead,max-autotune-no-cudagraphs"}
PEER_SLOW = ("max-autotune-no-cudagraphs",)  # run last: minutes of autotuning
PEER_PREFIX = "PEER_JSON "  # experiments.bench.torch_peer's output line
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def layout(runs: int) -> tuple[tuple[str, ...], int]:
    """The methods and seeds per method of a row of ``runs`` runs (module docstring)."""
    if runs == 1:
        return ("pmm",), 1
    if runs >= 2 and runs % 2 == 0:
        return ("baseline", "pmm"), runs // 2
    raise ValueError(f"runs must be 1 or even (seeds x baseline/PMM), got {runs}.")


def projected_200_epochs_min(step_ms: float) -> float:
    return EPOCHS * STEPS_PER_EPOCH * step_ms / 60_000


def throughput(runs: int, step_ms: float) -> dict:
    return {
        "runs": runs,
        "batch_per_run": BATCH,
        "step_ms": step_ms,
        "per_run_ms": step_ms / runs,
        "images_per_s": runs * BATCH * 1000 / step_ms,
        "projected_200_epochs_min": projected_200_epochs_min(step_ms),
    }


def default_runs(backend: str) -> tuple[int, ...]:
    """R in {1, 2} on CPU, where a ResNet-44 step is slow (``docs/gpu.md``), else {1, 2, 10}."""
    return (1, 2) if backend == "cpu" else (1, 2, 10)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def _names(text: str, allowed) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip() and t.strip() != "none")
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad} not in {sorted(allowed)}")
    return names


# --------------------------------------------------------------------------------------
# the program of a row


def fake_cifar10():
    """A ``Dataset`` with CIFAR-10's shapes, classes, training-set size (45,000 after
    the 5,000 validation images) and on-device preprocess (crop + flip +
    normalization, as ``experiments.data.images.cifar`` builds it), but no records."""
    from experiments.data import augment
    from experiments.data.base import Dataset

    def no_records(*args, **kwargs):
        raise NotImplementedError("paper_speed's stand-in dataset has no records")

    return Dataset(
        name="cifar10",
        num_classes=10,
        num_train=CIFAR_TRAIN,
        input_spec={"x": ((32, 32, 3), "uint8")},
        train_iter=no_records,
        eval_iter=no_records,
        eval_splits=(),
        preprocess=augment.make_preprocess(
            mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD, crop_flip=True
        ),
    )


def method_configs(*, dtype: str, seeds: int, tiny: bool) -> dict:
    """``{"baseline", "pmm"}``: the ResNet-44 row config and its PMM-off twin."""
    from experiments.configs import cifar10_resnet44

    pmm = cifar10_resnet44.get_config("")
    pmm.seeds = tuple(range(seeds))
    pmm.model_kwargs.dtype = dtype
    if tiny:
        pmm.model_kwargs.depth = 8
        pmm.model_kwargs.width = 4
    baseline = copy.deepcopy(pmm)
    baseline.pmm.alpha_schedule = "none"
    return {"baseline": baseline, "pmm": pmm}


def build_methods(runs: int, dtype: str, *, tiny: bool, mesh):
    """``(step_fns, states, methods)`` of a row: the trainer's ``Trainee`` per method."""
    from experiments.config.plan import plan_of
    from experiments.run.build import build

    methods, seeds = layout(runs)
    configs = method_configs(dtype=dtype, seeds=seeds, tiny=tiny)
    dataset = fake_cifar10()
    trainees = []
    for name in methods:
        config = configs[name]
        trainees.append(build(config, dataset, mesh, plan_of(config, dataset.num_train)))
    return [t.train_step for t in trainees], tuple(t.initial_state() for t in trainees), methods


_BUILT: dict = {}  # (runs, dtype, tiny) -> build_methods' result, shared by the modes


def build_row(runs: int, mode: str, dtype: str, *, tiny: bool, mesh):
    """``(program, states, methods)`` of a row: the methods' one-run steps combined by
    ``experiments.run.forms.program``; the states are fresh copies of the initial ones
    (built once per runs and dtype: the modes of a row start from the same state)."""
    import jax
    import jax.numpy as jnp

    from experiments.run import forms as runs_lib

    key = (runs, dtype, tiny, id(mesh))
    if key not in _BUILT:
        _BUILT.clear()  # one group at a time in memory
        _BUILT[key] = build_methods(runs, dtype, tiny=tiny, mesh=mesh)
    step_fns, states, methods = _BUILT[key]
    if mode == NOSCAN:
        program = _noscan_program(step_fns, mesh)
    else:
        program = runs_lib.program(step_fns, layout(runs)[1], mode, mesh)
    return program, jax.tree.map(jnp.copy, states), methods


def _noscan_program(step_fns, mesh):
    """The reference row's program: one jitted (seed-vmapped) step per method, called
    from a Python loop once per step of the block -- no ``lax.scan`` (not a mode of
    ``experiments.run.forms``). Takes the block as a list of per-step batches."""
    import jax

    from pmm_jax import training

    steps = [training.jit_sharded(jax.vmap(f), mesh, batch_axis=1) for f in step_fns]

    def call(states, batches):
        states, metrics = list(states), [[] for _ in steps]
        for batch in batches:
            for j, f in enumerate(steps):
                states[j], m = f(states[j], batch)
                metrics[j].append(m)
        stacked = [jax.tree.map(lambda *xs: jax.numpy.stack(xs), *ms) for ms in metrics]
        return tuple(states), tuple(stacked)

    return call


def synthetic_block(steps: int, seeds: int, mesh, seed: int = 0) -> dict:
    """``{"x": uint8[steps, seeds, 64, 32, 32, 3], "y": int32[steps, seeds, 64]}``,
    random, made on the device and sharded as the trainer's blocks are."""
    import jax
    import jax.numpy as jnp

    from experiments.run import forms as runs_lib
    from pmm_jax import training

    sharding = training.batch_sharding(mesh, batch_axis=runs_lib.TRAIN_BATCH_AXIS)

    def make(key):
        kx, ky = jax.random.split(key)
        x = jax.random.randint(kx, (steps, seeds, BATCH, 32, 32, 3), 0, 256, jnp.int32)
        y = jax.random.randint(ky, (steps, seeds, BATCH), 0, 10, jnp.int32)
        return {"x": x.astype(jnp.uint8), "y": y}

    return jax.jit(make, out_shardings=sharding)(jax.random.PRNGKey(seed))


def time_row(
    runs: int,
    mode: str,
    dtype: str,
    *,
    steps_per_call: int,
    reps: int,
    row_time: float,
    tiny: bool,
    mesh,
) -> dict:
    """Builds, compiles and times one row (module docstring); returns the row."""
    import jax
    import numpy as np

    t0 = time.perf_counter()
    program, states, methods = build_row(runs, mode, dtype, tiny=tiny, mesh=mesh)
    block = synthetic_block(steps_per_call, layout(runs)[1], mesh)
    if mode == NOSCAN:  # per-step batches, sliced before the timed calls
        block = [jax.tree.map(lambda a, i=i: a[i], block) for i in range(steps_per_call)]
    jax.block_until_ready((states, block))
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    states, metrics = program(states, block)
    jax.block_until_ready((states, metrics))
    first_call_s = time.perf_counter() - t0
    first_losses = [np.asarray(m["loss"]) for m in metrics]

    calls = []
    start = time.perf_counter()
    while len(calls) < max(1, reps):
        if len(calls) >= min(2, reps) and time.perf_counter() - start > row_time:
            break
        t0 = time.perf_counter()
        states, metrics = program(states, block)
        jax.block_until_ready((states, metrics))
        calls.append(time.perf_counter() - t0)
    call_ms = [1000 * c for c in calls]
    step_ms = statistics.median(call_ms) / steps_per_call
    losses = [np.asarray(m["loss"]) for m in metrics]  # [steps, seeds] per method
    finite = all(np.isfinite(a).all() for a in first_losses + losses)
    del states, metrics, block, program
    return {
        "name": task_name(("row", runs, mode, dtype), tiny),
        "reference": mode == NOSCAN,
        **throughput(runs, step_ms),
        "mode": mode,
        "dtype": dtype,
        "methods": list(methods),
        "seeds_per_method": layout(runs)[1],
        "steps_per_call": steps_per_call,
        "stat": "median",
        "step_ms_min": min(call_ms) / steps_per_call,
        "calls_ms": [round(c, 3) for c in call_ms],
        "build_s": build_s,
        "first_call_s": first_call_s,
        "compile_s": max(0.0, first_call_s - statistics.median(calls)),
        "loss_finite": bool(finite),
        "last_loss": {m: [float(v) for v in a[-1]] for m, a in zip(methods, losses, strict=True)},
    }


# --------------------------------------------------------------------------------------
# children: isolated rows, XLA-flag variants, PyTorch peer variants


def _child_env(extra_xla_flags: str = "") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The parent holds its share of an accelerator's memory: the child allocates as it goes.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if extra_xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + extra_xla_flags).strip()
    return env


def _tail(text: str | bytes | None, n: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _child_command(args, out: str, *, runs, modes, dtypes) -> list[str]:
    """The command line of :func:`run_child_rows`' child, writing its JSON to ``out``."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench",
        "paper-speed",
        "--out",
        out,
        "--runs",
        ",".join(map(str, runs)),
        "--modes",
        ",".join(modes),
        "--dtypes",
        ",".join(dtypes),
        "--steps-per-call",
        str(args.steps_per_call),
        "--reps",
        str(args.reps),
        "--row-time",
        str(args.row_time),
        "--peer",
        "none",
        "--isolate",
        "none",
        "--xla-variants",
        "none",
        "--no-reference",
        "--allow-slow-compile",
        *(["--tiny"] if args.tiny else []),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def run_child_rows(args, *, runs, modes, dtypes, timeout: float, xla_flags: str = "") -> dict:
    """This benchmark in a child process (the given rows only, no peer, nothing isolated):
    ``{"rows": [...], "skipped": [...]}`` or ``{"error": ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        cmd = _child_command(args, out, runs=runs, modes=modes, dtypes=dtypes)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                env=_child_env(xla_flags),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            partial = _read_json(out)
            return {
                "error": f"timed out after {timeout:.0f} s (--row-timeout)",
                "rows": partial.get("rows", []),
                "stderr_tail": _tail(e.stderr),
            }
        result = _read_json(out)
        if proc.returncode != 0 or not result:
            return {
                "error": f"child exited with status {proc.returncode}",
                "rows": result.get("rows", []),
                "stderr_tail": _tail(proc.stderr),
            }
        result["child_s"] = time.perf_counter() - t0
        return result


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run_peer_variant(variant: str, *, device: str, args, timeout: float) -> dict:
    """One ``experiments.bench.torch_peer`` variant in a child process: its JSON, or
    ``{"variant", "error"}``."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.torch_peer",
        "--variant",
        variant,
        "--device",
        device,
        "--batch",
        str(BATCH),
        "--steps",
        str(args.steps_per_call),
        "--reps",
        str(args.reps),
        "--max-time",
        str(args.row_time),
    ]
    if args.tiny:
        cmd += ["--depth", "8", "--width", "4"]
    if device == "cpu" and args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=_child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        return {
            "variant": variant,
            "error": f"timed out after {timeout:.0f} s (--peer-timeout)",
            "stderr_tail": _tail(e.stderr),
        }
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PEER_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {
            "variant": variant,
            "error": f"exited with status {proc.returncode}",
            "stderr_tail": _tail(proc.stderr),
        }
    out = json.loads(lines[-1][len(PEER_PREFIX) :])
    out["child_s"] = time.perf_counter() - t0
    return out


def peer_row(variants: list[dict], tiny: bool) -> dict | None:
    """The fastest successful variant as the ``peers`` row (all variants inside)."""
    ok = [v for v in variants if "step_ms" in v]
    if not ok:
        return None
    best = min(ok, key=lambda v: v["step_ms"])
    how = (
        f"PyTorch {best['torch']} on {best['torch_device']}, variant {best['variant']}"
        f" ({best['layout']}, torch.compile mode {best['compile_mode']}),"
        f" {best['optimizer']}; the authors' objective (CE + alpha * official penalty);"
        f" median of {len(best['calls_ms'])} calls of {best['steps_per_call']} steps;"
        " a fixed normalized float batch: no augmentation or data pipeline timed"
        " (ours includes the on-device crop + flip + normalization)"
    )
    return {
        "name": "torch_resnet8_w4_pmm" if tiny else "torch_resnet44_pmm",
        **throughput(1, best["step_ms"]),
        "step_ms_min": best["step_ms_min"],
        "how": how,
        "variant": best["variant"],
        "variants": variants,
    }


# --------------------------------------------------------------------------------------
# the order of the work


def plan(args, backend: str) -> tuple[list[tuple], list[dict]]:
    """The work, most important first, and what is skipped up front.

    Tasks: ``("row", runs, mode, dtype)``, ``("child", runs, mode, dtype)``,
    ``("xla", variant)``, ``("peer", variant)``.
    """
    skipped = []
    rows = []
    for dtype in args.dtypes:
        for runs in args.runs:
            for mode in args.modes:
                slow = mode.startswith("unroll") and runs >= 10
                if slow and backend == "cpu" and not args.allow_slow_compile:
                    skipped.append(
                        {
                            "name": f"resnet44_{mode}_r{runs}_{dtype}",
                            "reason": "unroll at R >= 10 on CPU: an R-fold program whose "
                            "compile takes too long here (--allow-slow-compile times it)",
                        }
                    )
                    continue
                isolated = f"{mode}:{runs}" in args.isolate or "all" in args.isolate
                rows.append(("child" if isolated else "row", runs, mode, dtype))

    if args.reference:
        rows = [("row", 1, NOSCAN, dtype) for dtype in args.dtypes] + rows

    def rank(task):
        kind, _, mode, dtype = task
        if kind == "child":
            return 6
        if mode == NOSCAN:
            return 0 if dtype == "float32" else 3
        tier = 0 if mode in ("vmap", "sequential") else 2
        return tier + (3 if dtype != "float32" else 0)

    peers = list(args.peer)
    fast_peers = [p for p in peers if p not in PEER_SLOW]
    tasks = [(rank(t), i, t) for i, t in enumerate(rows)]
    for i, p in enumerate(peers):
        first = p == (fast_peers[0] if fast_peers else None)
        tasks.append((1 if first else (2 if p not in PEER_SLOW else 7), i, ("peer", p)))
    if backend == "gpu":
        for i, v in enumerate(args.xla_variants):
            tasks.append((5, i, ("xla", v)))
    elif args.xla_variants:
        skipped.append(
            {"name": "xla_variants", "reason": "command-buffer variants are XLA:GPU flags"}
        )
    tasks.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in tasks], skipped


def task_name(task: tuple, tiny: bool) -> str:
    """A task's name in the log and in ``skipped``: a row's name, ``xla_...``, ``torch_...``."""
    if task[0] in ("row", "child"):
        _, runs, mode, dtype = task
        return f"{'tiny' if tiny else 'resnet44'}_{mode}_r{runs}_{dtype}"
    return f"{'xla' if task[0] == 'xla' else 'torch'}_{task[1]}"


def _sort_rows(rows):
    return sorted(
        rows,
        key=lambda r: (
            r.get("xla_variant", ""),
            DTYPES.index(r["dtype"]) if r["dtype"] in DTYPES else 9,
            r["runs"],
            MODES.index(r["mode"]) if r["mode"] in MODES else 9,
        ),
    )


def comparisons(rows) -> list[dict]:
    """Each R > 1 row against R separate runs: R x the fastest R=1 row of a trainer mode
    (vmap, unroll, sequential) of its dtype and XLA variant (``ratio``), and R x the
    no-scan reference row (``ratio_vs_noscan``) where there is one."""
    out = []
    for row in rows:
        if row["runs"] == 1 or row["mode"] == NOSCAN:
            continue
        same = [
            r
            for r in rows
            if r["runs"] == 1
            and r["dtype"] == row["dtype"]
            and r.get("xla_variant") == row.get("xla_variant")
        ]
        ones = [r for r in same if r["mode"] != NOSCAN]
        if not ones:
            continue
        one = min(ones, key=lambda r: r["step_ms"])
        separate = row["runs"] * one["step_ms"]
        entry = {
            "name": row["name"],
            "runs": row["runs"],
            "mode": row["mode"],
            "dtype": row["dtype"],
            "xla_variant": row.get("xla_variant"),
            "step_ms": row["step_ms"],
            "separate_runs_ms": separate,
            "separate_from": one["name"],
            "ratio": row["step_ms"] / separate,
            "slower_than_separate": row["step_ms"] > separate,
        }
        noscan = [r for r in same if r["mode"] == NOSCAN]
        if noscan:
            entry["ratio_vs_noscan"] = row["step_ms"] / (row["runs"] * noscan[0]["step_ms"])
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------


def main(argv=None):
    """Runs the benchmark (module docstring); writes ``--out``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    from experiments.bench.cli import set_threads

    threads = set_threads(args.threads or os.cpu_count())

    import jax

    from pmm_jax import training

    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    _fill_defaults(args, backend)
    result = _header(args, argv, backend, threads)
    _choose_peer(args, backend, result)
    tasks, skipped = plan(args, backend)
    result["skipped"] += skipped
    session = _Session(args, result, start, training.make_mesh(), backend)
    print(f"[paper-speed] {len(tasks)} pieces of work on {result['device']}", flush=True)
    for task in tasks:
        session.run(task)
    session.write()
    for c in result["comparisons"]:
        print(
            f"  {c['name']:34s} {c['ratio']:.3f} x {c['runs']} separate runs"
            f" ({c['step_ms']:.1f} vs {c['separate_runs_ms']:.1f} ms)",
            flush=True,
        )
    print(f"[paper-speed] wrote {args.out} ({result['wall_s']:.0f} s)", flush=True)
    return result


def _variants(text: str) -> tuple[str, ...]:
    """A comma-separated list; ``none`` names nothing."""
    return tuple(x.strip() for x in text.split(",") if x.strip() != "none")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See experiments/bench/paper_speed.py's docstring for what each field means.",
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    _add_row_arguments(parser)
    _add_work_arguments(parser)
    return parser


def _add_row_arguments(parser):
    """The flags of what a row is and how long it is timed."""
    parser.add_argument(
        "--runs", type=_ints, default=None, help="R values, e.g. 1,2,10 (CPU default 1,2)"
    )
    parser.add_argument(
        "--modes", type=lambda t: _names(t, MODES), default=MODES, help="runs modes"
    )
    parser.add_argument(
        "--dtypes", type=lambda t: _names(t, DTYPES), default=DTYPES, help="compute dtypes"
    )
    parser.add_argument(
        "--steps-per-call", type=int, default=None, help="scanned steps per call (CPU 2, GPU 50)"
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="timed calls per row (at most; at least 2 unless 1)"
    )
    parser.add_argument(
        "--row-time", type=float, default=20.0, help="no timed call started after this (s)"
    )
    parser.add_argument(
        "--max-time", type=float, default=None, help="no new row or peer started after this (s)"
    )


def _add_work_arguments(parser):
    """The flags of which work runs, where, and under which time limits."""
    parser.add_argument(
        "--isolate",
        type=_variants,
        default=("unroll:10",),
        help="MODE:R rows (or 'all') run in a child process under --row-timeout",
    )
    parser.add_argument("--row-timeout", type=float, default=120.0, help="per isolated child (s)")
    parser.add_argument(
        "--allow-slow-compile", action="store_true", help="time unroll at R >= 10 on CPU too"
    )
    parser.add_argument(
        "--xla-variants",
        type=lambda t: _names(t, XLA_VARIANTS),
        default=(),
        help=f"XLA:GPU flag variants ({', '.join(XLA_VARIANTS)}): float32 vmap rows, in a child",
    )
    parser.add_argument(
        "--peer",
        type=_variants,
        default=None,
        help="PyTorch peer variants (none to skip; CPU default eager, CUDA: eager, "
        "reduce-overhead, max-autotune-no-cudagraphs)",
    )
    parser.add_argument("--peer-timeout", type=float, default=180.0, help="per peer variant (s)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for JAX and PyTorch (default: all)"
    )
    parser.add_argument("--tiny", action="store_true", help="ResNet-8 width 4 (tests)")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the R=1 no-scan reference rows (one jitted step per Python-loop step)",
    )


def _fill_defaults(args, backend: str) -> None:
    """The backend's default runs and steps per call; every R checked."""
    args.runs = args.runs or default_runs(backend)
    for r in args.runs:
        layout(r)
    args.steps_per_call = args.steps_per_call or (2 if backend == "cpu" else 50)


def _header(args, argv, backend: str, threads: dict) -> dict:
    """The result before any work: what ran, where, and the empty lists."""
    import jax

    from experiments.bench.timing import device_name, load_average

    return {
        "device": device_name(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join([*PROG.split(), *argv]),
        "cpu_threads": threads if backend == "cpu" else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_start": load_average(),
        "config": "experiments/configs/cifar10_resnet44.py get_config('')"
        + (" with depth 8, width 4 (--tiny)" if args.tiny else ""),
        "rows": [],
        "peers": [],
        "comparisons": [],
        "skipped": [],
    }


def _choose_peer(args, backend: str, result: dict) -> None:
    """``args.peer``: the backend's default variants, or none where PyTorch cannot run."""
    from experiments.bench import torch_peer

    if args.peer is None:
        args.peer = tuple(PEER_DEFAULT[backend].split(","))
    if args.peer and not torch_peer.available():
        result["skipped"].append({"name": "torch peer", "reason": "PyTorch not installed"})
        args.peer = ()
    elif args.peer and backend == "gpu" and not torch_peer.cuda_available():
        result["skipped"].append({"name": "torch peer", "reason": "PyTorch sees no CUDA GPU"})
        args.peer = ()
    if backend == "cpu" and "eager" in args.peer and "compile" not in args.peer:
        result["peer_note"] = (
            "torch.compile not run on CPU by default: Inductor's compile of the ResNet-44 step"
            " takes about a minute on a 2-core machine, and a try here was no faster than"
            " eager (--peer eager,compile runs it)"
        )


class _Session:
    """Runs the planned tasks one by one into ``result``, rewriting ``--out`` after each."""

    def __init__(self, args, result: dict, start: float, mesh, backend: str):
        self.args, self.result, self.start, self.mesh = args, result, start, mesh
        self.peer_device = "cpu" if backend == "cpu" else "cuda"
        self.peer_variants: list[dict] = []

    def write(self):
        """The result so far, with its rows sorted, comparisons and peer row, to ``--out``."""
        from experiments.bench.timing import write_result

        result = self.result
        result["rows"] = _sort_rows(result["rows"])
        result["comparisons"] = comparisons(result["rows"])
        row = peer_row(self.peer_variants, self.args.tiny)
        result["peers"] = [row] if row else []
        result["peer_variants_failed"] = [v for v in self.peer_variants if "error" in v]
        write_result(result, self.args.out, self.start)

    def run(self, task: tuple):
        """One task, or its ``skipped`` entry once ``--max-time`` has passed."""
        elapsed = time.perf_counter() - self.start
        name = task_name(task, self.args.tiny)
        max_time = self.args.max_time
        if max_time is not None and elapsed > max_time:
            self.skip(name, f"--max-time {max_time:.0f} s reached", echo=False)
            return
        getattr(self, task[0])(task, name)  # row, child, xla or peer
        self.write()

    def skip(self, name: str, reason: str, *, echo: bool = True):
        self.result["skipped"].append({"name": name, "reason": reason})
        if echo:
            print(f"  {name}: {reason}", flush=True)

    def add_row(self, row: dict):
        self.result["rows"].append(row)
        _print_row(row)

    def row(self, task, name):
        _, runs, mode, dtype = task
        args = self.args
        try:
            row = time_row(
                runs,
                mode,
                dtype,
                steps_per_call=args.steps_per_call,
                reps=args.reps,
                row_time=args.row_time,
                tiny=args.tiny,
                mesh=self.mesh,
            )
        except Exception as e:  # recorded; the other rows still run
            self.result["skipped"].append({"name": name, "reason": f"failed: {e!r}"[:600]})
            print(f"  {name}: failed: {e!r}"[:300], flush=True)
            return
        self.add_row(row)

    def child(self, task, name):
        _, runs, mode, dtype = task
        child = run_child_rows(
            self.args, runs=(runs,), modes=(mode,), dtypes=(dtype,), timeout=self.args.row_timeout
        )
        for row in child.get("rows", []):
            row["isolated"] = True
            self.add_row(row)
        if "error" in child or not child.get("rows"):
            self.skip(
                name, child.get("error", "no row") + ": " + child.get("stderr_tail", "")[-300:]
            )

    def xla(self, task, name):
        variant = task[1]
        flags = XLA_VARIANTS[variant]
        child = run_child_rows(
            self.args,
            runs=self.args.runs,
            modes=("vmap",),
            dtypes=("float32",),
            timeout=self.args.row_timeout,
            xla_flags=flags,
        )
        for row in child.get("rows", []):
            row["xla_variant"] = variant
            row["xla_flags"] = flags
            row["name"] += f"_{variant}"
            self.add_row(row)
        if "error" in child:
            self.skip(name, child["error"] + ": " + child.get("stderr_tail", "")[-300:])

    def peer(self, task, name):
        variant = task[1]
        out = run_peer_variant(
            variant, device=self.peer_device, args=self.args, timeout=self.args.peer_timeout
        )
        self.peer_variants.append(out)
        if "error" in out:
            print(f"  torch {variant}: {out['error']}", flush=True)
        else:
            print(
                f"  torch {variant:28s} step {out['step_ms']:9.2f} ms"
                f" | first call {out['first_call_s']:.1f} s",
                flush=True,
            )


def _print_row(row):
    print(
        f"  {row['name']:34s} step {row['step_ms']:9.2f} ms ({row['per_run_ms']:8.2f} per run)"
        f" | {row['images_per_s']:8.0f} img/s | 200 ep {row['projected_200_epochs_min']:8.1f} min"
        f" | compile {row['compile_s']:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
