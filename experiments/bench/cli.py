"""The one benchmark CLI: train-step and penalty benchmarks -> JSON; profile; determinism.

  python -m experiments.bench --out bench.json [--quick] [--full] [--only NAME ...]
  python -m experiments.bench profile WORKLOAD [--alpha 1e-4] [--steps 2] [--top 12]
  python -m experiments.bench determinism --out determinism.json [--repeats 10]
  python -m experiments.bench vision [--tiny] [--only NAME ...] [--out vision.json]
  python -m experiments.bench sharded-head --out sharded_head.json [--ks 32768,262144]
  python -m experiments.bench paper-speed --out paper_speed.json [--runs 1,2,10] [--tiny]
  python -m experiments.bench layer-cost --out layer_cost.json [--tiny]

Without a mode it runs the benchmarks. Workloads (``--only``, repeatable):
``cnn1d``, ``resnet44`` (batch 64 and 128, with the PyTorch peer when torch is
installed), ``wrn28_10`` (skipped on CPU unless ``--full``), ``mobilenet_v1``,
``bert``, ``penalty`` (the penalty alone vs k, ``experiments.bench.penalty``);
``vision`` (augmentation / dtype throughput, ``experiments.bench.vision``) runs
only when named. Each train-step workload times the same jitted step with
cross-entropy only and with cross-entropy + PMM, in this one process, in
interleaved repetitions after warm-up (``experiments.bench.steps``).

On CPU, JAX and PyTorch get the same number of threads (``--threads``, default
all cores), set before either library starts; the JSON says what was set.
JSON: ``{"device", "jax", "rows": [{"name", "batch", "ce_step_ms", "pmm_step_ms",
"pmm_overhead", ...}], "peers": [{"name", "ours_ms", "peer_ms", "ratio"}], ...}``.

The modes (the first argument) hand the rest of the command line to a module's
``main``: ``profile`` -> ``experiments.bench.profile_step``, ``determinism`` ->
``experiments.bench.determinism``, ``vision`` -> ``experiments.bench.vision`` (its
own flags: one model, batch scale, tiny models), ``sharded-head`` ->
``experiments.bench.sharded_head`` (8 fake CPU devices, set before JAX starts),
``paper-speed`` -> ``experiments.bench.paper_speed`` (the trainer's ResNet-44 CIFAR
training program for R runs at batch 64 each, per runs mode and compute dtype,
with a one-run PyTorch peer). ``MODE --help`` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time

PROG = "python -m experiments.bench"
STEP_WORKLOADS = {  # --only name -> row names it covers (prefixes)
    "cnn1d": ("cnn1d",),
    "resnet44": ("resnet44",),
    "wrn28_10": ("wrn28_10",),
    "mobilenet_v1": ("mobilenet_v1",),
    "bert": ("bert",),
}
OTHER_WORKLOADS = ("penalty", "vision")
DEFAULT = (*STEP_WORKLOADS, "penalty")  # "vision" only when named
MODES = {  # first argument -> module whose main(argv) gets the rest
    "profile": "experiments.bench.profile_step",
    "determinism": "experiments.bench.determinism",
    "vision": "experiments.bench.vision",
    "sharded-head": "experiments.bench.sharded_head",
    "paper-speed": "experiments.bench.paper_speed",
    "layer-cost": "experiments.bench.layer_cost",
}
EPILOG = """modes (the first argument; MODE --help for its flags):
  profile WORKLOAD      where a train step's time goes, per XLA:CPU operation
  determinism --out F   is the kernel gradient bitwise reproducible (ours vs scatter-add)
  vision                image-model step throughput with on-device augmentation
  sharded-head --out F  PMM on a class-sharded head: class-parallel vs all-gathered
  paper-speed --out F   ResNet-44 CIFAR training program, R runs x batch 64: step ms,
                        images/s, minutes for 200 epochs; per runs mode and dtype
  layer-cost --out F    the train step with PMM at the head, a hidden layer, every layer"""


def set_threads(threads: int) -> dict:
    """Sets JAX's CPU thread pool size; must run before JAX starts its backend."""
    info = {"requested": threads}
    if "jax" in sys.modules:  # e.g. under pytest: too late, say so
        info["jax"] = "not set (JAX was already imported; its default: all cores)"
        return info
    eigen = "true" if threads > 1 else "false"
    flags = f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    info["jax"] = f"XLA_FLAGS {flags}"
    return info


def _steps(names, args, result):
    import jax

    from experiments.bench import steps, torch_peer

    platform_name = jax.default_backend()
    if platform_name != "cpu" and not torch_peer.cuda_available():
        result["peer_note"] = "JAX is on a GPU but PyTorch sees none: peer skipped."
    elif not torch_peer.available():
        result["peer_note"] = (
            "PyTorch not installed: peer skipped (pip install torch==2.13.0 for a CPU build)."
        )
        print(f"[bench] {result['peer_note']}", flush=True)
    prefixes = tuple(p for n in names for p in STEP_WORKLOADS[n])
    quick = args.quick
    for w, reason in steps.workloads(platform_name, full=args.full):
        name = w if reason else w.name
        if not name.startswith(prefixes):
            continue
        if quick and name == "resnet44_b64":
            reason = "skipped with --quick (resnet44_b128 is timed)"
        if reason:
            print(f"[bench] {name}: {reason}", flush=True)
            result["skipped"].append({"name": name, "reason": reason})
            continue
        t0 = time.perf_counter()
        reps = args.reps or (min(w.reps, 50 if w.reps >= 50 else 5) if quick else None)
        row, peer = steps.bench_workload(
            w,
            reps=reps,
            min_time=2.0 if quick else 5.0,
            max_time=args.max_time or (min(w.budget_s, 20.0) if quick else None),
            metrics_variant=not quick,
            peer=not args.no_peer,
            threads=args.threads if platform_name == "cpu" else None,
        )
        row["wall_s"] = time.perf_counter() - t0
        result["rows"].append(row)
        paired = row["pmm_overhead_paired"]
        print(
            f"  {name:32s} ce {row['ce_step_ms']:9.2f} ms | pmm {row['pmm_step_ms']:9.2f} ms"
            f" | pmm/ce {row['pmm_overhead']:.4f} (paired {paired['median']:.4f},"
            f" 95% [{paired['ci95'][0]:.4f}, {paired['ci95'][1]:.4f}]) | {row['wall_s']:.0f} s",
            flush=True,
        )
        if peer:
            result["peers"].append(peer)
            print(
                f"  {'  vs torch':32s} torch ce {peer['peer_ce_ms']:9.2f} ms | torch pmm"
                f" {peer['peer_ms']:9.2f} ms | ours/torch (pmm) {peer['ratio']:.3f}"
                f" | torch pmm/ce {peer['peer_pmm_overhead']:.4f} | CPU s/step ours"
                f" {peer['ours_cpu_ms'] / 1e3:.2f} torch {peer['peer_cpu_ms'] / 1e3:.2f}",
                flush=True,
            )


def _penalty(args, result):
    from experiments.bench.penalty import DEFAULT_KS, bench_penalty_vs_k

    ks = args.penalty_ks or ((10, 1000, 100000) if args.quick else DEFAULT_KS)
    result["penalty_vs_k"] = bench_penalty_vs_k(ks, reps=args.reps or (5 if args.quick else 20))


def _vision(args, result):
    import jax

    from experiments.bench.vision import bench_vision

    tiny = jax.default_backend() == "cpu"  # full-size models take minutes per step here
    result["vision"] = bench_vision(tiny=tiny, reps=5 if args.quick else 20)
    result["vision_note"] = "tiny models (CPU smoke run)" if tiny else "paper-size models"


def main(argv=None):
    """Runs the benchmarks, or the mode named by the first argument.

    Args:
      argv: the command line without the program name (default: ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in MODES:
        # Imported only now: ``profile`` must set XLA_FLAGS before JAX starts.
        return importlib.import_module(MODES[argv[0]]).main(argv[1:])
    args = _parser().parse_args(argv)
    threads = set_threads(args.threads)
    if not args.no_peer and "torch" not in sys.modules:
        # PyTorch's OpenMP threads otherwise spin-wait between parallel regions,
        # which on a machine shared with other jobs slows its steps several times
        # (docs/performance.md). Passive waiting is the peer's better setting
        # there, so it is what we compare to.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()

    from experiments.bench.timing import write_result

    result = _header(args, threads)
    names = args.only or list(DEFAULT)
    step_names = [n for n in names if n in STEP_WORKLOADS]
    if step_names:
        print(f"[bench] train steps: {', '.join(step_names)}", flush=True)
        _steps(step_names, args, result)
    for name, fn in (("penalty", _penalty), ("vision", _vision)):
        if name in names:
            print(f"[bench] {name}", flush=True)
            fn(args, result)
    write_result(result, args.out, start)
    print(f"[bench] wrote {args.out} ({result['wall_s']:.0f} s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="fewer workloads and repetitions")
    parser.add_argument(
        "--full", action="store_true", help="also the workloads skipped on CPU (WRN-28-10)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted((*STEP_WORKLOADS, *OTHER_WORKLOADS)),
        help="run only these workloads (repeatable)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per workload")
    parser.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="seconds after which a workload starts no more repetitions (default: its budget)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="CPU threads for JAX and PyTorch"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    parser.add_argument(
        "--penalty-ks",
        type=lambda text: tuple(int(k) for k in text.split(",")),
        help="class counts for the penalty-vs-k table, e.g. 10,1000",
    )
    return parser


def _header(args, threads: dict) -> dict:
    """The result before any workload: where it runs, the threads, the empty lists."""
    import jax

    from experiments.bench.timing import device_name, load_average

    threads["torch"] = args.threads
    threads["torch_env"] = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    return {
        "device": device_name(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "full": args.full,
        "cpu_threads": threads if jax.default_backend() == "cpu" else None,
        "load_avg_start": load_average(),
        "rows": [],
        "peers": [],
        "skipped": [],
    }
