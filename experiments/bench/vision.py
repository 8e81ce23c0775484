"""Train-step throughput of the Table I image models, with the on-device augmentation.

One jitted step = the library's ``pmm_jax.training.make_train_step``: preprocess
(augmentation + normalization, on the device) -> model apply in train mode ->
cross-entropy + alpha * PMM -> SGD-momentum update; timed at the paper's batch
sizes, float32 and bfloat16 compute, and with the augmentation swapped out to
show its cost. Used by ``python -m experiments.bench --only vision`` (tiny models on
CPU) and, with its own flags, by ``python -m experiments.bench vision``; ``--tiny``
models make a CPU smoke run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench.timing import time_interleaved
from experiments.data import augment
from experiments.models.mobilenet import MobileNetV1
from experiments.models.resnet_cifar import CifarResNet
from experiments.models.vgg import VGG16BN
from experiments.models.wrn import WideResNet
from pmm_jax import training

CIFAR_AUG = {
    "none": None,
    "crop_flip": dict(crop_flip=True),
    "aa_cutout": dict(crop_flip=True, autoaugment=True, cutout_size=16),
}

# (name, model factory (dtype, tiny) -> module, image size, batch, augmentations, dtypes)
WORKLOADS = (
    (
        "resnet44",
        lambda dtype, tiny: CifarResNet(8 if tiny else 44, width=4 if tiny else 16, dtype=dtype),
        32,
        64,
        ("crop_flip", "none", "aa_cutout"),
        ("float32", "bfloat16"),
    ),
    (
        "vgg16bn",
        lambda dtype, tiny: VGG16BN(10, width_multiplier=1 / 16 if tiny else 1.0, dtype=dtype),
        32,
        64,
        ("crop_flip",),
        ("float32", "bfloat16"),
    ),
    (
        "wrn28-10",
        lambda dtype, tiny: WideResNet(10 if tiny else 28, 1 if tiny else 10, 100, dtype=dtype),
        32,
        64,
        ("aa_cutout",),
        ("float32", "bfloat16"),
    ),
    (
        "mobilenet1.0",
        lambda dtype, tiny: MobileNetV1(
            1000, width_multiplier=1 / 16 if tiny else 1.0, dtype=dtype
        ),
        224,
        256,
        ("normalize",),
        ("float32", "bfloat16"),
    ),
)


def make_step(preprocess, alpha=1e-5):
    """The library's train step (``pmm_jax.training.make_train_step``), jitted, donating."""
    step = training.make_train_step(alpha=alpha, preprocess=preprocess, margin_metrics=False)
    return jax.jit(step, donate_argnums=0)


def _runner(step, state, batch):
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        return holder["state"], metrics

    return run


def _preprocess(name, size):
    if name == "normalize":
        return augment.make_preprocess(mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    if CIFAR_AUG[name] is None:
        return lambda rng, batch, train: {**batch, "x": batch["x"].astype(jnp.float32) / 255.0}
    return augment.make_preprocess(
        mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD, **CIFAR_AUG[name]
    )


def bench_vision(*, tiny=False, reps=20, only=None, batch_scale=1.0, seed=0):
    """Times each workload; returns rows with ms per step and images per second."""
    rows = []
    rng = np.random.default_rng(seed)
    for name, factory, size, batch, augs, dtypes in WORKLOADS:
        if only and name not in only:
            continue
        b = max(2, int(batch * batch_scale))
        data = {
            "x": jnp.asarray(rng.integers(0, 256, (b, size, size, 3)), jnp.uint8),
            "y": jnp.asarray(rng.integers(0, 10, b), jnp.int32),
        }
        fns = {}
        for dtype in dtypes:
            model = factory(jnp.dtype(dtype), tiny)
            tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
            sample = jnp.zeros(data["x"].shape, jnp.float32)
            state0 = training.create_train_state(model, tx, sample, seed=0)
            for aug in augs:
                fns[f"{dtype}/{aug}"] = _runner(
                    make_step(_preprocess(aug, size)),
                    jax.tree.map(jnp.copy, state0),
                    data,
                )
        for key, t in time_interleaved(fns, reps=reps).items():
            dtype, aug = key.split("/")
            rows.append(
                dict(
                    model=name,
                    dtype=dtype,
                    augmentation=aug,
                    batch=b,
                    image_size=size,
                    **t,
                    images_per_s=b / (t["median_ms"] / 1e3),
                )
            )
    # The augmentation alone, per batch, at two batch sizes.
    fns = {}
    for b in (64, 1024):
        x = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3)), jnp.uint8)
        pre = jax.jit(_preprocess("aa_cutout", 32), static_argnums=2)
        fns[f"aa_cutout/{b}"] = functools.partial(pre, jax.random.key(2), {"x": x}, True)
    for key, t in time_interleaved(fns, reps=reps).items():
        aug, b = key.split("/")
        rows.append(
            dict(model="preprocess_only", dtype="float32", augmentation=aug, batch=int(b), **t)
        )
    return rows


def main(argv=None):
    import argparse
    import json

    from experiments.bench.timing import device_name

    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench vision", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch-scale", type=float, default=1.0)
    parser.add_argument("--only", action="append", help="workload names")
    args = parser.parse_args(argv)
    rows = bench_vision(
        tiny=args.tiny, reps=args.reps, only=args.only, batch_scale=args.batch_scale
    )
    result = {"device": device_name(), "jax": jax.__version__, "rows": rows}
    for row in rows:
        ips = row.get("images_per_s")
        print(
            f"{row['model']:16s} {row['dtype']:9s} {row['augmentation']:10s} "
            f"b={row['batch']:5d} {row['median_ms']:9.2f} ms"
            + (f" {ips:10.0f} img/s" if ips else ""),
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
