"""The penalty alone against k: ours vs jnp.argmax(logits) vs a naive all-pairs form.

Ours must stay flat in k beyond the argmax that every classifier pays anyway;
the naive form builds the k x k matrix of pairwise column distances and blows up.
Used by ``python -m experiments.bench --only penalty``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import pmm_jax
from experiments.bench.timing import time_interleaved

DEFAULT_KS = (10, 100, 1000, 10000, 100000)
NAIVE_MAX_K = 10000  # k*k floats beyond this do not fit a laptop's memory


def naive_all_pairs(logits, labels, features, kernel):
    """What we avoid: all k*k pairwise distances, then pick one per example."""
    k = logits.shape[-1]
    wrong = jnp.where(jax.nn.one_hot(labels, k, dtype=bool), -jnp.inf, logits)
    m = jnp.argmax(wrong, -1)
    gram = kernel.T @ kernel
    sq = jnp.diag(gram)
    pairs = sq[:, None] + sq[None, :] - 2.0 * gram
    return pairs[labels, m] * jnp.max(jnp.sum(features**2, -1))


def bench_penalty_vs_k(ks=DEFAULT_KS, *, batch=128, dim=256, reps=20, seed=0):
    rows = []
    for k in ks:
        rng = np.random.default_rng(seed)
        feats = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(dim, k)) / np.sqrt(dim), jnp.float32)
        labels = jnp.asarray(rng.integers(0, k, batch), jnp.int32)
        logits = feats @ kernel

        argmax = jax.jit(lambda lg: jnp.argmax(lg, -1))
        ours = jax.jit(pmm_jax.pmm_penalty)
        ours_grad = jax.jit(
            jax.grad(lambda f, w, lg, y: jnp.sum(pmm_jax.pmm_penalty(lg, y, f, w)), (0, 1))
        )
        fns = {
            "argmax": partial(argmax, logits),
            "ours": partial(ours, logits, labels, feats, kernel),
            "ours_grad": partial(ours_grad, feats, kernel, logits, labels),
        }
        if k <= NAIVE_MAX_K:
            fns["naive"] = partial(jax.jit(naive_all_pairs), logits, labels, feats, kernel)
            np.testing.assert_allclose(
                np.asarray(fns["naive"]()), np.asarray(fns["ours"]()), rtol=2e-2, atol=1e-2
            )
        t = time_interleaved(fns, reps=reps)
        row = {
            "k": k,
            "batch": batch,
            "dim": dim,
            "argmax_ms": t["argmax"]["median_ms"],
            "penalty_ms": t["ours"]["median_ms"],
            "penalty_grad_ms": t["ours_grad"]["median_ms"],
            "naive_ms": t["naive"]["median_ms"] if "naive" in t else None,
            "spread": {name: [v["p25_ms"], v["p75_ms"]] for name, v in t.items()},
        }
        rows.append(row)
        print(
            f"  k={k:>6}: argmax {row['argmax_ms']:8.3f} ms | penalty {row['penalty_ms']:8.3f} ms"
            f" | penalty fwd+bwd {row['penalty_grad_ms']:8.3f} ms | naive all-pairs "
            + (f"{row['naive_ms']:8.3f} ms" if row["naive_ms"] is not None else "skipped (k*k)"),
            flush=True,
        )
    return rows
