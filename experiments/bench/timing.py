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
    fns: dict[str, Callable[[], object]],
    *,
    reps: int = 20,
    warmup: int = 2,
    min_time: float = 0.0,
    max_time: float = float("inf"),
    min_reps: int = 3,
    pause: float = 0.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Times zero-argument callables, alternating between them every repetition.

    Each callable is run ``warmup`` times first (compilation), then the
    callables take turns, ``reps`` times and for at least ``min_time`` seconds,
    so that drifting machine load affects them alike; no repetition is started
    after ``max_time`` seconds once ``min_reps`` are done (a time budget for slow
    steps on a loaded machine). Each repetition runs them in a fresh random
    order (seeded), so that none has a fixed place in the round. ``pause``
    seconds of sleep (not timed) separate the calls, for libraries whose idle
    threads spin for a while after a call (OpenMP) and would otherwise steal the
    cores from the next one.

    Returns, per name, the median and the 25/75th percentiles in ms, the median
    CPU time of the whole process per call (``cpu_median_ms``: all threads; less
    sensitive than wall time to other jobs on the machine), the number of
    repetitions and the samples themselves (``samples_ms``, in run order: sample
    ``i`` of every callable comes from the same repetition).
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    shuffle = np.random.default_rng(seed).permutation
    start = time.perf_counter()
    i = 0
    while True:
        elapsed = time.perf_counter() - start
        if (i >= reps and elapsed >= min_time) or (i >= min_reps and elapsed >= max_time):
            break
        for j in shuffle(len(names)):
            name = names[j]
            if pause:
                time.sleep(pause)
            c0, t0 = time.process_time(), time.perf_counter()
            block(fns[name]())
            samples[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
        i += 1
    out = {}
    for name, xs in samples.items():
        arr = np.asarray(xs)
        out[name] = {
            "median_ms": float(np.median(arr)),
            "p25_ms": float(np.percentile(arr, 25)),
            "p75_ms": float(np.percentile(arr, 75)),
            "cpu_median_ms": float(np.median(cpu[name])),
            "reps": len(xs),
            "samples_ms": [round(x, 4) for x in xs],
        }
    return out


def paired_ratio(num_ms, den_ms) -> dict[str, float]:
    """Median of the per-repetition ratios ``num_i / den_i`` with a ~95% interval.

    The two sample lists come from the same repetitions of
    :func:`time_interleaved`, so each ratio compares two calls made moments
    apart, under the same machine load. The interval is the distribution-free
    one for a median (order statistics of the binomial(n, 1/2)); with fewer
    than 6 pairs it is the range.
    """
    ratios = np.sort(np.asarray(num_ms, float) / np.asarray(den_ms, float))
    n = len(ratios)
    lo, hi = 0, n - 1
    if n >= 6:
        half = 1.96 * np.sqrt(n) / 2
        lo = max(0, int(np.floor(n / 2 - half)) - 1)  # 1-based ranks -> 0-based
        hi = min(n - 1, int(np.ceil(1 + n / 2 + half)) - 1)
    return {
        "median": float(np.median(ratios)),
        "ci95": [float(ratios[lo]), float(ratios[hi])],
        "pairs": n,
    }


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS to its current RSS (Linux >= 4.0); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """The process's peak RSS since the last :func:`reset_peak_rss` (VmHWM, MiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``uptime``), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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


def write_result(result: dict, path: str, start: float) -> None:
    """Stamps ``result`` with the end load average, peak memory and wall time since
    ``start`` (``time.perf_counter()``) and writes it to ``path`` as JSON, atomically."""
    result["load_avg_end"] = load_average()
    result["peak_memory_mb"] = peak_memory_mb()
    result["wall_s"] = time.perf_counter() - start
    from experiments.run.workdir import write_json

    write_json(path, result, indent=1)
