"""Stress test of collectives on fake CPU devices (kept out of the test suite).

Runs ``--trials`` fresh processes, each ``--steps`` sharded-``jit`` PMM train steps
(the toy model of the tests) and then ``--steps`` plain-JAX ``psum`` steps (no
PMM) on ``--devices`` fake CPU devices, never waiting on a result in between (a
training loop that logs rarely), and counts the processes that XLA aborted because
a collective's rendezvous timed out (``Termination timeout for 'all reduce ...'``)::

    python -m tests.stress_fake_devices --devices 4 --trials 5 --no-fix  # aborts
    python -m tests.stress_fake_devices --devices 8 --trials 30 --hogs 1

The trials get the test session's setting (``tests/fake_devices.py``: two XLA:CPU
threads per device in ``PJRT_NPROC``); ``--no-fix`` leaves ``PJRT_NPROC`` unset
(XLA's default: one thread per device when there are fewer cores), ``--nproc K``
sets it to K, ``--sync-every K`` waits on the result every K steps and ``--hogs N``
adds N busy-loop processes (more load). An aborted trial takes about a minute (a
stuck warning after 20 s, the abort 40 s later). One trial in this process::

    python -m tests.stress_fake_devices --child --devices 4 --steps 300

Measured on the 2-core VM, 300 steps a trial, load average 3-12 from another job:
with ``--no-fix`` 10 of 10 trials aborted on 4 devices, 3 of 3 on 8 devices, 3 of
3 with the ``psum`` loop alone, 5 of 5 with ``--sync-every 64``, 5 of 5 with
``--nproc 5`` (one spare thread) and 0 of 10 with ``--sync-every 16`` or ``1``;
with the setting 0 of 80 (30 on 4 devices, 30 on 8 devices with a hog, 20 of 1000
steps on 4 devices with two hogs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABORT = "Termination timeout"
STUCK = "may be stuck"


def _child(args: argparse.Namespace) -> None:
    """One trial: ``args.steps`` steps of each workload, never waiting in between."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from pmm_jax import training
    from tests.toy import ToyNet, toy_data, toy_state

    n = args.devices
    mesh = training.make_mesh()
    assert mesh.devices.size == n, jax.devices()
    t0 = time.perf_counter()

    if args.workload in ("pmm", "both"):
        state = training.replicate_on_mesh(toy_state(ToyNet()), mesh)
        step = training.jit_sharded(training.make_train_step(alpha=1e-2), mesh)
        batch = training.shard_batch_on_mesh(toy_data(n=8 * n, big_row=3), mesh)
        for i in range(1, args.steps + 1):
            state, metrics = step(state, batch)
            if args.sync_every and i % args.sync_every == 0:
                jax.block_until_ready(state)
        loss = float(metrics["loss"])
        print(f"pmm: {args.steps} steps, loss {loss:.4f}", flush=True)

    if args.workload in ("psum", "both"):

        def body(x, w):
            h = jnp.tanh(x @ w)  # some work per device before the all-reduce
            return x + jax.lax.psum(h, "data") / n

        f = jax.jit(
            jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data")),
            donate_argnums=0,
        )
        x = jax.device_put(np.ones((4 * n, 64), np.float32), NamedSharding(mesh, P("data")))
        w = jax.device_put(np.eye(64, dtype=np.float32) * 0.01, NamedSharding(mesh, P()))
        for i in range(1, args.steps + 1):
            x = f(x, w)
            if args.sync_every and i % args.sync_every == 0:
                jax.block_until_ready(x)
        print(f"psum: {args.steps} steps, sum {float(x.sum()):.4f}", flush=True)
    print(f"child done in {time.perf_counter() - t0:.1f} s", flush=True)


def _env(args: argparse.Namespace) -> dict[str, str]:
    from tests.fake_devices import fake_device_env

    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=args.xla_flags)
    for name in ("PJRT_NPROC", "NPROC"):
        env.pop(name, None)
    env.update(fake_device_env(args.devices, env))
    if args.no_fix:
        del env["PJRT_NPROC"]
    if args.nproc:
        env["PJRT_NPROC"] = str(args.nproc)
    return env


def _parent(args: argparse.Namespace) -> int:
    env = _env(args)
    child = [sys.executable, "-m", "tests.stress_fake_devices", "--child"]
    child += ["--devices", str(args.devices), "--steps", str(args.steps)]
    child += ["--workload", args.workload, "--sync-every", str(args.sync_every)]
    print(
        f"XLA_FLAGS={env['XLA_FLAGS']!r} PJRT_NPROC={env.get('PJRT_NPROC', '(unset)')}; "
        f"{args.trials} trials; {args.hogs} hog(s); sync every {args.sync_every or 'never'}",
        flush=True,
    )
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    counts = {"ok": 0, "abort": 0, "stuck": 0, "other": 0}
    try:
        for trial in range(1, args.trials + 1):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            try:
                p = subprocess.run(
                    child, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
                )
                rc, out = p.returncode, p.stdout + p.stderr
            except subprocess.TimeoutExpired as e:
                rc, out = "timeout", str(e.stdout or "") + str(e.stderr or "")
            seconds = time.perf_counter() - t0
            stuck = out.count(STUCK)
            if ABORT in out:
                kind = "abort"
            elif rc != 0:
                kind = "other"
            else:
                kind = "ok"
            counts[kind] += 1
            counts["stuck"] += stuck > 0
            print(
                f"trial {trial:3d}: {kind:5s} rc={rc} {seconds:6.1f} s load {load:4.1f}"
                + (f" ({stuck} stuck warnings)" if stuck else ""),
                flush=True,
            )
            if kind != "ok" and args.verbose:
                lines = [x for x in out.splitlines() if ABORT in x or STUCK in x or "Error" in x]
                print("    " + "\n    ".join(lines[-5:] or out.splitlines()[-5:]), flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(
        f"devices={args.devices} steps={args.steps} workload={args.workload} "
        f"trials={args.trials}: {counts['abort']} aborted, {counts['other']} other failures, "
        f"{counts['ok']} ok; {counts['stuck']} with stuck warnings",
        flush=True,
    )
    return 1 if counts["abort"] or counts["other"] else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300, help="steps per workload per trial")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--workload", choices=("pmm", "psum", "both"), default="both")
    ap.add_argument("--hogs", type=int, default=0, help="busy-loop processes for more load")
    ap.add_argument("--no-fix", action="store_true", help="without the test suite's PJRT_NPROC")
    ap.add_argument("--nproc", type=int, default=0, help="PJRT_NPROC for the trials instead")
    ap.add_argument(
        "--sync-every", type=int, default=0, help="wait for the result every K steps (0: never)"
    )
    ap.add_argument("--xla-flags", default="", help="more XLA_FLAGS for the trials")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per trial")
    ap.add_argument("--verbose", action="store_true", help="print the log lines of failures")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
