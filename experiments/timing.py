"""Timing helpers for the benchmarks: warm-up, interleaved repetitions, medians."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

import jax
import numpy as np


def block(x):
    return jax.block_until_ready(x)


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, reps: int = 20, warmup: int = 2, min_time: float = 0.0
) -> dict[str, dict[str, float]]:
    """Times zero-argument callables, alternating between them every repetition.

    Each callable is run ``warmup`` times first (compilation), then the
    callables take turns ``reps`` times, so that drifting machine load affects
    them alike. Returns, per name, the median and the 25/75th percentiles in ms.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    i = 0
    while i < reps or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            block(fn())
            samples[name].append((time.perf_counter() - t0) * 1e3)
        i += 1
    out = {}
    for name, xs in samples.items():
        arr = np.asarray(xs)
        out[name] = {
            "median_ms": float(np.median(arr)),
            "p25_ms": float(np.percentile(arr, 25)),
            "p75_ms": float(np.percentile(arr, 75)),
            "reps": len(xs),
        }
    return out


def peak_memory_mb() -> float | None:
    """Peak device memory on an accelerator, else the process's peak RSS (MiB)."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024 if os.name == "posix" else None


def device_name() -> str:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {kind})"
    return f"{dev.platform} ({kind})"
