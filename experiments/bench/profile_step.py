"""Where a benchmarked train step spends its time, per XLA operation (CPU thunks).

  python -m experiments.bench profile resnet44_b128 [--alpha 1e-4] [--steps 2] [--top 12]

Runs the step of ``experiments.bench.steps`` under ``jax.profiler`` with XLA:CPU's
per-thunk trace events on, and prints the time per kind of fused operation
(``transpose_copy_fusion``, ``ynn_fusion`` = convolutions and dots, ...) summed
over the worker threads, the top operations with their output shape and number
of fused inputs, and the minor page faults per step. Without ``--alpha`` it is
the cross-entropy step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import resource
import sys
import tempfile


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workload", help="a row name of the benchmarks' JSON, e.g. resnet44_b128")
    parser.add_argument("--alpha", type=float, default=None, help="PMM weight (default: CE only)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        raise RuntimeError(
            "run from the command line (python -m experiments.bench profile ...): "
            "the trace flag must be set before JAX starts"
        )
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
    w, compiled, state, batch, temp_mb = _compiled_step(args.workload, args.alpha)
    profile, faults = _trace(compiled, state, batch, args.steps)
    per_op = _thread_ms_per_op(profile, args.steps)
    per_kind = collections.Counter()
    for name, ms in per_op.items():
        per_kind[re.sub(r"\.\d+$", "", name)] += ms
    total = sum(per_kind.values())
    what = f"PMM alpha={args.alpha:g}" if args.alpha else "CE only"
    print(f"{w.name} ({what}):")
    print(f"  thunk time {total:.1f} ms/step (summed over threads); scratch {temp_mb:.0f} MiB;")
    print(f"  {faults:.0f} minor page faults/step")
    for kind, ms in per_kind.most_common(args.top):
        print(f"  {ms:9.1f} ms {100 * ms / total:5.1f}%  {kind}")
    print("  top operations:")
    hlo = compiled.as_text()
    for name, ms in per_op.most_common(args.top):
        m = re.search(r"%" + re.escape(name) + r" = (\S+) fusion\(([^)]*)\)", hlo)
        shape, inputs = (m.group(1), len(m.group(2).split(","))) if m else ("", 0)
        print(f"  {ms:9.1f} ms  {name}  {shape}  ({inputs} fused inputs)")


def _compiled_step(workload: str, alpha):
    """``(workload, compiled step, state, batch, scratch MiB)`` of the named benchmark row,
    the step called twice (the warm-up)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from experiments.bench import steps
    from pmm_jax import training

    [w] = [w for w, r in steps.workloads("cpu", full=True) if not r and w.name == workload]
    rng = np.random.default_rng(0)
    x = jax.tree.map(jnp.asarray, w.make_x(rng, w.batch))
    batch = {"x": x, "y": jnp.asarray(rng.integers(0, w.num_classes, w.batch), jnp.int32)}
    state = training.create_train_state(w.model(), optax.sgd(steps.LR, momentum=steps.MOMENTUM), x)
    step = training.make_train_step(alpha=alpha, margin_metrics=False)
    compiled, _, temp_mb = steps.compile_step(step, state, batch)
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return w, compiled, state, batch, temp_mb


def _trace(compiled, state, batch, steps: int):
    """``(profile, minor page faults per step)`` of ``steps`` steps under ``jax.profiler``."""
    import jax

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                state, metrics = compiled(state, batch)
                jax.block_until_ready((state, metrics))
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
        [path] = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        return jax.profiler.ProfileData.from_file(path), faults


def _thread_ms_per_op(profile, steps: int) -> collections.Counter:
    """ms per step of each XLA operation, summed over the XLA:CPU worker threads."""
    per_op = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            for event in line.events:
                if "ThunkExecutor" in event.name or event.name.startswith("end:"):
                    continue
                per_op[event.name] += event.duration_ns / 1e6 / steps
    return per_op
