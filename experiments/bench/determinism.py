"""Is the kernel gradient bitwise reproducible? Ours vs a plain gather's scatter-add.

    python -m experiments.bench determinism --out determinism.json

Many examples share few classes (B=8192, k=10), so a scatter-add backward pass
has many colliding float additions, whose order GPUs do not fix. Each variant's
gradient is computed ``--repeats`` times; the JSON says whether all runs were
bitwise equal and the largest difference seen.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import pmm_jax
from experiments.bench.timing import device_name


def naive_penalty(logits, labels, features, kernel):
    """Gather-and-subtract differentiated by plain JAX (backward: scatter-add)."""
    m = pmm_jax.competitor_classes(logits, labels)
    diff = jnp.take(kernel, labels, axis=1) - jnp.take(kernel, m, axis=1)
    return jnp.sum(diff**2, axis=0) * jnp.max(jnp.sum(features**2, -1))


def check(fn, args, repeats: int) -> dict:
    grad = jax.jit(jax.grad(lambda k, *a: jnp.sum(fn(a[0], a[1], a[2], k))))
    runs = [np.asarray(grad(args[3], *args[:3])) for _ in range(repeats)]
    diffs = [float(np.max(np.abs(r - runs[0]))) for r in runs[1:]]
    return {
        "bitwise_identical": all(np.array_equal(r, runs[0]) for r in runs[1:]),
        "max_abs_diff": max(diffs) if diffs else 0.0,
        "repeats": repeats,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench determinism", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(args.batch, args.dim)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(args.dim, args.classes)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, args.classes, args.batch), jnp.int32)
    logits = feats @ kernel
    inputs = (logits, labels, feats, kernel)
    result = {
        "device": device_name(),
        "jax": jax.__version__,
        "shape": {"batch": args.batch, "dim": args.dim, "classes": args.classes},
        "pmm_penalty": check(pmm_jax.pmm_penalty, inputs, args.repeats),
        "naive_gather_scatter_add": check(naive_penalty, inputs, args.repeats),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
