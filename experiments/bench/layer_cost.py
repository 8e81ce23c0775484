"""What PMM at hidden layers costs: the train step with CE, CE + PMM at the head, at one
hidden layer plus the head, and at every marked layer plus the head.

  python -m experiments.bench layer-cost --out docs/results/.../layer_cost.json [--tiny]

Workloads: the MNIST-1D CNN (batch 100; layers ``block1`` .. ``block3``) and ResNet-44
on CIFAR-shaped input (batch 64; layers ``stage1`` .. ``stage3``), random data, SGD.
Each variant is the same jitted ``pmm_jax.training.make_train_step`` with
``pmm_layers`` set (``alpha=1e-3``), timed in interleaved repetitions after warm-up
(``experiments.bench.timing``); the ratio to the CE step is the median of the
per-repetition ratios with its distribution-free 95% interval. JSON: ``{"device",
"jax", "rows": [{"workload", "variant", "layers", "median_ms", "ratio_to_ce": {"median",
"ci95", "pairs"}}], ...}``.
"""

from __future__ import annotations

import argparse
import time

WORKLOADS = {  # name -> (model, model kwargs, input shape, batch, hidden layers)
    "cnn1d": ("cnn1d", {}, (40,), 100, ("block1", "block2", "block3")),
    "resnet44": ("resnet_cifar", {"depth": 44}, (32, 32, 3), 64, ("stage1", "stage2", "stage3")),
}
TINY = {"cnn1d": {"channels": 4}, "resnet44": {"depth": 8, "width": 4}}


def variants(hidden: tuple[str, ...]) -> dict:
    """``{variant: pmm_layers}``: CE (no PMM), the head, one hidden layer + head, all."""
    middle = hidden[len(hidden) // 2]
    return {
        "ce": None,
        "pmm_head": ("head",),
        f"pmm_{middle}_head": (middle, "head"),
        "pmm_all_layers": (*hidden, "head"),
    }


def _steps(name: str, *, tiny: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from experiments.models import get_model
    from pmm_jax import training

    model_name, kwargs, shape, batch, hidden = WORKLOADS[name]
    kwargs = {**kwargs, **(TINY[name] if tiny else {})}
    model = get_model(model_name, num_classes=10, **kwargs)
    state = training.create_train_state(model, optax.sgd(0.01, 0.9), jnp.zeros((2, *shape)))
    rng = np.random.default_rng(0)
    data = {
        "x": jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
    }
    calls = {}
    for variant, layers in variants(hidden).items():
        alpha = None if layers is None else 1e-3
        step = jax.jit(training.make_train_step(alpha=alpha, pmm_layers=layers))
        calls[variant] = (lambda step=step: step(state, data), layers)
    return calls, batch


def bench(names, *, tiny: bool, reps: int, max_time: float) -> list[dict]:
    from experiments.bench.timing import paired_ratio, time_interleaved

    rows = []
    for name in names:
        calls, batch = _steps(name, tiny=tiny)
        timed = time_interleaved(
            {v: fn for v, (fn, _) in calls.items()}, reps=reps, warmup=2, max_time=max_time
        )
        for variant, (_, layers) in calls.items():
            t = timed[variant]
            ratio = paired_ratio(t["samples_ms"], timed["ce"]["samples_ms"])
            rows.append(
                {
                    "workload": name,
                    "batch": batch,
                    "variant": variant,
                    "layers": list(layers or ()),
                    "median_ms": t["median_ms"],
                    "p25_ms": t["p25_ms"],
                    "p75_ms": t["p75_ms"],
                    "reps": t["reps"],
                    "ratio_to_ce": ratio,
                }
            )
            print(
                f"  {name:9s} {variant:22s} {t['median_ms']:9.2f} ms | /ce "
                f"{ratio['median']:.3f} [{ratio['ci95'][0]:.3f}, {ratio['ci95'][1]:.3f}]",
                flush=True,
            )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench layer-cost")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--max-time", type=float, default=240.0, help="seconds per workload")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from experiments.bench.timing import device_name, load_average, write_result

    result = {
        "what": "train step: CE vs CE + PMM at the head / one hidden layer + head / all layers",
        "device": device_name(),
        "load_average_start": load_average(),
        "tiny": args.tiny,
        "alpha": 1e-3,
    }
    result["rows"] = bench(
        args.only or list(WORKLOADS), tiny=args.tiny, reps=args.reps, max_time=args.max_time
    )
    write_result(result, args.out, start)
