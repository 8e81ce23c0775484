"""Benchmarks -> JSON.

  python -m experiments.bench --out bench.json [--quick] [--only penalty]

Workloads are added as the models land; each is timed in this one process with
interleaved repetitions after warm-up (see experiments/timing.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax

from experiments.timing import device_name, peak_memory_mb


def _penalty(quick: bool):
    from experiments.bench_penalty import DEFAULT_KS, bench_penalty_vs_k

    ks = (10, 1000, 100000) if quick else DEFAULT_KS
    return {"penalty_vs_k": bench_penalty_vs_k(ks, reps=5 if quick else 20)}


WORKLOADS = {"penalty": _penalty}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    parser.add_argument(
        "--only", action="append", choices=sorted(WORKLOADS), help="run only these workloads"
    )
    args = parser.parse_args(argv)
    result = {
        "device": device_name(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "rows": [],
        "peers": [],
    }
    for name in args.only or sorted(WORKLOADS):
        print(f"[bench] {name}", flush=True)
        for key, value in WORKLOADS[name](args.quick).items():
            if isinstance(result.get(key), list):
                result[key].extend(value)
            else:
                result[key] = value
    result["peak_memory_mb"] = peak_memory_mb()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
