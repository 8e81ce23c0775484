"""PMM's cost in the train step: the same jitted step with cross-entropy only and with PMM.

For each workload (model, batch), three steps are built from
``pmm_jax.training.make_train_step`` on one ``TrainState`` (SGD with momentum
0.9, float32, ``donate_argnums=0``):

* ``ce``: ``alpha=None, margin_metrics=False`` -- cross-entropy alone, no penalty;
* ``pmm``: ``alpha=1e-4, penalty_reduction="official", margin_metrics=False`` --
  cross-entropy + alpha * PMM, the objective of the authors' code (and of the
  PyTorch peer);
* ``pmm_metrics`` (not with ``--quick``): PMM with the default logging metrics
  (radius, normalized pairwise margins) that a training run reports.

They run on the same synthetic batch, in the same process, each on its own copy
of the state, in interleaved repetitions after warm-up (``timing.time_interleaved``).
The step has no preprocessing: the batch is already what the model eats
(normalized float32 images, token ids). The ResNet-44 rows also time the PyTorch
peer (``experiments.bench.torch_peer``) in the same interleaved repetitions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench import torch_peer
from experiments.bench.timing import (
    block,
    load_average,
    paired_ratio,
    peak_rss_mb,
    reset_peak_rss,
    time_interleaved,
)
from experiments.models.common import param_count
from pmm_jax import training

ALPHA = 1e-4  # constant; within the paper's 1e-5 .. 1e-3 ramp
LR = 0.1
MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class StepWorkload:
    """One row: a model, a batch size, and how to make a synthetic batch.

    Attributes:
      name: the row name (contains the model name).
      model: builds the flax module.
      make_x: ``(rng, batch) -> x`` model input, as numpy arrays.
      batch: batch size.
      num_classes: ``k``.
      description: what the model is, honestly (e.g. a small BERT config on CPU).
      peer: also time the PyTorch ResNet peer on this row.
      metrics_variant: also time the PMM step with the default logging metrics.
      reps: interleaved repetitions wanted.
      budget_s: seconds after which no repetition starts (once 3 are done).
    """

    name: str
    model: Callable[[], object]
    make_x: Callable[[np.random.Generator, int], object]
    batch: int
    num_classes: int
    description: str
    peer: bool = False
    metrics_variant: bool = True
    reps: int = 20
    budget_s: float = 60.0


def _images(size):
    return lambda rng, b: rng.normal(size=(b, size, size, 3)).astype(np.float32)


def _tokens(length, vocab):
    def make(rng, b):
        return {
            "input_ids": rng.integers(0, vocab, (b, length)).astype(np.int32),
            "token_type_ids": (np.arange(length)[None, :] >= length // 2)
            .repeat(b, 0)
            .astype(np.int32),
            "attention_mask": np.ones((b, length), np.int32),
        }

    return make


def workloads(platform: str, *, full: bool = False):
    """``(workload, None)`` to run or ``(name, reason)`` to skip, for ``platform``.

    On CPU the sizes and time budgets keep the default run short (small batches,
    a BERT-Tiny-sized classifier, WRN-28-10 only with ``full``); on an accelerator
    the paper-size models run.
    """
    on_cpu = platform == "cpu"
    out = [(_cnn1d(), None)]
    for b, reps, budget in ((64, 20, 90.0), (128, 12, 110.0)):
        out.append((_resnet44(b, reps, budget, on_cpu), None))
    if on_cpu and not full:
        out.append(
            ("wrn28_10_b64", "skipped on CPU (tens of s per step on 2 cores); run with --full")
        )
    else:
        out.append((_wrn28_10(on_cpu), None))
    out.append((_mobilenet_v1(on_cpu), None))
    out.append((_bert(on_cpu), None))
    return out


def _cnn1d() -> StepWorkload:
    from experiments.models.cnn1d import ConvNet1D

    return StepWorkload(
        "cnn1d_b100",
        lambda: ConvNet1D(10),
        lambda rng, b: rng.normal(size=(b, 40)).astype(np.float32),
        100,
        10,
        "MNIST-1D ConvBase (3 conv1d x 25 channels, 125 features), input [B, 40]",
        reps=200,
        budget_s=15.0,
    )


def _resnet44(batch: int, reps: int, budget_s: float, on_cpu: bool) -> StepWorkload:
    from experiments.models.resnet_cifar import CifarResNet

    return StepWorkload(
        f"resnet44_b{batch}",
        lambda: CifarResNet(44, 10),
        _images(32),
        batch,
        10,
        "CIFAR ResNet-44 (option-A shortcuts, 0.66M params), 32x32x3",
        peer=True,
        metrics_variant=batch == 64 or not on_cpu,
        reps=reps,
        budget_s=budget_s,
    )


def _wrn28_10(on_cpu: bool) -> StepWorkload:
    from experiments.models.wrn import WideResNet

    return StepWorkload(
        "wrn28_10_b64",
        lambda: WideResNet(28, 10, 100),
        _images(32),
        64,
        100,
        "WRN-28-10 (36.5M params), 32x32x3, 100 classes",
        reps=5 if on_cpu else 20,
        budget_s=300.0 if on_cpu else 60.0,
    )


def _mobilenet_v1(on_cpu: bool) -> StepWorkload:
    from experiments.models.mobilenet import MobileNetV1

    batch = 4 if on_cpu else 128
    return StepWorkload(
        f"mobilenet_v1_224_b{batch}",
        lambda: MobileNetV1(1000),
        _images(224),
        batch,
        1000,
        "MobileNet v1 1.0 (4.2M params), 224x224x3, 1000 classes"
        + (" (small batch on CPU)" if on_cpu else ""),
        metrics_variant=not on_cpu,
        reps=8 if on_cpu else 20,
        budget_s=45.0 if on_cpu else 60.0,
    )


def _bert(on_cpu: bool) -> StepWorkload:
    """BERT-Tiny-sized on CPU, BERT-base elsewhere; random weights either way."""
    from experiments.models.bert import build_classifier

    if on_cpu:
        sizes = dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512)
        name = "bert_tiny_L2_H128_seq128_b32"
        description = (
            "BERT-Tiny config (L=2, H=128, 2 heads, FFN 512; not BERT-base) classifier, "
            "3 classes, sequence length 128, random weights"
        )
    else:
        sizes = {}
        name = "bert_base_seq128_b32"
        description = (
            "BERT-base (L=12, H=768) classifier, 3 classes, sequence length 128, random weights"
        )
    return StepWorkload(
        name,
        lambda: build_classifier(3, **sizes),
        _tokens(128, 30522),
        32,
        3,
        description,
        reps=20,
        budget_s=30.0,
    )


def _copy_state(state):
    return jax.tree.map(jnp.copy, state)


def compile_step(step, state, batch):
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    seconds = time.perf_counter() - t0
    temp_mb = None
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            temp_mb = mem.temp_size_in_bytes / 2**20
    except (AttributeError, NotImplementedError, RuntimeError):
        pass
    return compiled, seconds, temp_mb


class _Runner:
    """Calls a donating step on its own state; keeps the last metrics."""

    def __init__(self, compiled, state, batch):
        self.compiled, self.state, self.batch, self.metrics = compiled, state, batch, None

    def __call__(self):
        self.state, self.metrics = self.compiled(self.state, self.batch)
        return self.state, self.metrics


def penalty_fwd_bwd_ms(batch, dim, k, *, reps=50, min_time=1.0, seed=0):
    """Median ms of alpha * sum(PMM) forward + backward alone at this (B, d, k)."""
    import pmm_jax

    rng = np.random.default_rng(seed)
    feats = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(dim, k)) / np.sqrt(dim), jnp.float32)
    labels = jnp.asarray(rng.integers(0, k, batch), jnp.int32)
    logits = feats @ kernel

    def penalty(feats, kernel):
        return ALPHA * jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel))

    grad = jax.jit(jax.grad(penalty, (0, 1)))
    t = time_interleaved({"p": lambda: grad(feats, kernel)}, reps=reps, min_time=min_time)
    return t["p"]["median_ms"]


MAX_SAMPLES = 200  # per variant in the JSON; more are summarized only
PEER_PAUSE_S = 0.05


def bench_workload(
    w: StepWorkload,
    *,
    reps: int | None = None,
    min_time: float = 5.0,
    max_time: float | None = None,
    metrics_variant: bool = True,
    peer: bool = True,
    threads: int | None = None,
    seed: int = 0,
):
    """Times one workload; returns ``(row, peer_row or None)``.

    ``reps`` and ``max_time`` default to the workload's own; ``metrics_variant``
    and ``peer`` can only turn off what the workload has.
    """
    reps = w.reps if reps is None else reps
    max_time = w.budget_s if max_time is None else max_time
    on_cpu = jax.default_backend() == "cpu"
    load_before = load_average()
    state0, batch, shapes = _setup(w, seed)
    fns, stats = _warm_jax_steps(
        _jax_variants(metrics_variant and w.metrics_variant), state0, batch
    )
    del state0
    use_peer = (
        w.peer and peer and torch_peer.available() and (on_cpu or torch_peer.cuda_available())
    )
    peer_info = _warm_peer_steps(w, fns, stats, threads, seed, on_cpu) if use_peer else None
    # With the peer, a short untimed pause before each call lets the idle threads
    # of the other library (OpenMP spins after a parallel region) go to sleep.
    pause = PEER_PAUSE_S if use_peer else 0.0
    t = time_interleaved(
        fns, reps=reps, warmup=0, min_time=min_time, max_time=max_time, pause=pause
    )
    row = _step_row(w, t, shapes)
    row.update(
        reps=t["ce"]["reps"],
        spread_ms={name: [v["p25_ms"], v["p75_ms"]] for name, v in t.items()},
        cpu_ms={name: v["cpu_median_ms"] for name, v in t.items()},
        compile_s=stats["compile_s"],
        compiled_temp_mb=stats["temp_mb"],
        peak_rss_mb=stats["rss_mb"] if on_cpu else None,
        nonfinite_steps={
            name: float(fn.metrics["nonfinite_steps"])
            for name, fn in fns.items()
            if isinstance(fn, _Runner)
        },
        load_avg={"before": load_before, "after": load_average()},
    )
    if t["ce"]["reps"] <= MAX_SAMPLES:
        row["samples_ms"] = {name: v["samples_ms"] for name, v in t.items()}
    return row, (_peer_row(w, t, pause, peer_info) if use_peer else None)


def _setup(w: StepWorkload, seed: int):
    """``(state, batch, {"feature_dim", "params"})``: the workload's initial train state
    and its synthetic batch."""
    rng = np.random.default_rng(seed)
    x = jax.tree.map(jnp.asarray, w.make_x(rng, w.batch))
    batch = {"x": x, "y": jnp.asarray(rng.integers(0, w.num_classes, w.batch), jnp.int32)}
    model = w.model()
    state = training.create_train_state(model, optax.sgd(LR, momentum=MOMENTUM), x, seed=seed)
    _, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), state.variables, x)
    shapes = {"feature_dim": int(aux["pre_logits"].shape[-1]), "params": param_count(state.params)}
    return state, batch, shapes


def _jax_variants(metrics_variant: bool) -> dict:
    """The steps compared: ``ce``, ``pmm`` and (with ``metrics_variant``) ``pmm_metrics``."""
    variants = {
        "ce": training.make_train_step(alpha=None, margin_metrics=False),
        "pmm": training.make_train_step(
            alpha=ALPHA, penalty_reduction="official", margin_metrics=False
        ),
    }
    if metrics_variant:
        variants["pmm_metrics"] = training.make_train_step(
            alpha=ALPHA, penalty_reduction="official"
        )
    return variants


def _warm_jax_steps(variants: dict, state0, batch):
    """``(fns, stats)``: each step compiled on its own copy of ``state0`` and called
    twice (the warm-up); ``stats``: ``compile_s``, ``temp_mb`` and ``rss_mb`` (the peak
    RSS of each step's warm-up alone) per step."""
    fns = {}
    stats = {"compile_s": {}, "temp_mb": {}, "rss_mb": {}}
    for name, step in variants.items():
        state = _copy_state(state0)
        compiled, stats["compile_s"][name], stats["temp_mb"][name] = compile_step(
            step, state, batch
        )
        fns[name] = _Runner(compiled, state, batch)
        reset_peak_rss()
        for _ in range(2):
            block(fns[name]())
        stats["rss_mb"][name] = peak_rss_mb()
    return fns, stats


def _warm_peer_steps(w: StepWorkload, fns: dict, stats: dict, threads, seed: int, on_cpu: bool):
    """Adds the PyTorch peer's ``torch_ce`` and ``torch_pmm`` steps to ``fns``, warmed up
    as :func:`_warm_jax_steps` does (on the CPU with ``threads``, else on CUDA); returns
    the peer's info."""
    torch_steps, peer_info = torch_peer.make_resnet_steps(
        w.batch,
        num_classes=w.num_classes,
        alpha=ALPHA,
        threads=threads if on_cpu else None,
        seed=seed,
        device="cpu" if on_cpu else "cuda",
    )
    for name, fn in torch_steps.items():
        reset_peak_rss()
        for _ in range(2):
            fn()
        stats["rss_mb"][f"torch_{name}"] = peak_rss_mb()
        fns[f"torch_{name}"] = fn
    return peer_info


def _step_row(w: StepWorkload, t: dict, shapes: dict) -> dict:
    """The row's workload, its median step times and PMM's overheads."""
    med = {name: v["median_ms"] for name, v in t.items()}
    row = {
        "name": w.name,
        "description": w.description,
        "batch": w.batch,
        "num_classes": w.num_classes,
        "feature_dim": shapes["feature_dim"],
        "params": shapes["params"],
        "preprocessing": "none (synthetic inputs of the model's input shape, made before the step)",
        "ce_step_ms": med["ce"],
        "pmm_step_ms": med["pmm"],
        "pmm_overhead": med["pmm"] / med["ce"],
        "pmm_overhead_paired": paired_ratio(t["pmm"]["samples_ms"], t["ce"]["samples_ms"]),
    }
    if "pmm_metrics" in med:
        row["pmm_metrics_step_ms"] = med["pmm_metrics"]
        row["pmm_metrics_overhead"] = med["pmm_metrics"] / med["ce"]
        row["pmm_metrics_overhead_paired"] = paired_ratio(
            t["pmm_metrics"]["samples_ms"], t["ce"]["samples_ms"]
        )
    # What PMM's own operations cost at this (B, d, k), timed alone: the floor
    # of the step-level difference, which is below the noise for large steps.
    row["penalty_fwd_bwd_ms"] = penalty_fwd_bwd_ms(w.batch, shapes["feature_dim"], w.num_classes)
    row["penalty_share_of_ce_step"] = row["penalty_fwd_bwd_ms"] / med["ce"]
    return row


def _peer_row(w: StepWorkload, t: dict, pause: float, peer_info: dict) -> dict:
    """Ours against the PyTorch peer, timed in the same interleaved repetitions."""
    med = {name: v["median_ms"] for name, v in t.items()}
    return {
        "name": f"{w.name} vs PyTorch (eager, official PMM)",
        "ours_ms": med["pmm"],
        "peer_ms": med["torch_pmm"],
        "ratio": med["pmm"] / med["torch_pmm"],
        "ratio_paired": paired_ratio(t["pmm"]["samples_ms"], t["torch_pmm"]["samples_ms"]),
        "ours_ce_ms": med["ce"],
        "peer_ce_ms": med["torch_ce"],
        "ce_ratio": med["ce"] / med["torch_ce"],
        "ours_cpu_ms": t["pmm"]["cpu_median_ms"],
        "peer_cpu_ms": t["torch_pmm"]["cpu_median_ms"],
        "peer_pmm_overhead": med["torch_pmm"] / med["torch_ce"],
        "peer_pmm_overhead_paired": paired_ratio(
            t["torch_pmm"]["samples_ms"], t["torch_ce"]["samples_ms"]
        ),
        "pause_between_calls_s": pause,
        **peer_info,
    }
