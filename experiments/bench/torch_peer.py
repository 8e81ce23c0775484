"""The PyTorch peer of the ResNet-44 train step: cross-entropy, and + PMM the authors' way.

The same network as ``experiments.models.resnet_cifar.CifarResNet(44)`` (He et
al.'s CIFAR ResNet, option-A shortcuts: strided identity zero-padded with the new
channels; 658,586 parameters for 10 classes), float32, SGD with momentum, eager
PyTorch in its default NCHW layout. The PMM step's loss is the authors' objective
(``experiments.bench.official_torch.official_objective``: mean cross-entropy +
``alpha * (r * mean_i ||w_{y_i} - w_{m_i}||) ** 2``), the same function the
tests hold ``pmm_jax.pmm_loss(..., penalty_reduction="official")`` against.

PyTorch is an optional dependency: ``available()`` says whether it imports, and
``python -m experiments.bench`` skips the peer with a message when it does not.
Nothing here imports torch at module import time.

``make_pmm_train`` is the peer of ``python -m experiments.bench paper-speed``: one
run's PMM training (SGD momentum 0.9, weight decay 1e-4), eager or
``torch.compile``-d, optionally channels_last. Run as a module it times one
variant and prints one JSON line (the benchmark runs each variant in its own
process, under a time limit)::

    python -m experiments.bench.torch_peer --variant eager --device cpu --steps 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time

import numpy as np

from experiments.bench import official_torch


def available() -> bool:
    """Whether PyTorch can be imported."""
    return importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA GPU."""
    if not available():
        return False
    import torch

    return torch.cuda.is_available()


def _build_resnet(depth: int, num_classes: int, width: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.stride = stride
            self.extra = planes - in_planes

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            shortcut = x
            if self.stride != 1:
                shortcut = shortcut[:, :, :: self.stride, :: self.stride]
            if self.extra:  # option A: zero channels appended (as ours)
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + shortcut)

    class CifarResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(width)
            blocks, in_planes = [], width
            for stage in range(3):
                planes = width * 2**stage
                for block in range(n):
                    stride = 2 if stage > 0 and block == 0 else 1
                    blocks.append(BasicBlock(in_planes, planes, stride))
                    in_planes = planes
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(in_planes, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = self.blocks(x)
            features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            return self.fc(features), features

    return CifarResNet()


def make_resnet_steps(
    batch: int,
    *,
    depth: int = 44,
    num_classes: int = 10,
    width: int = 16,
    alpha: float = 1e-4,
    threads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
):
    """Two zero-argument train steps (``"ce"``, ``"pmm"``) on one synthetic batch.

    Each step has its own model and optimizer (same initialization), so that
    both run the same number of updates from the same start, like ours.
    ``device="cuda"`` runs on the GPU (each step then waits for the GPU, as ours
    is blocked on). Returns ``(steps, info)``; ``info`` records the torch version,
    device and threads.
    """
    import torch
    from torch.nn import functional as F

    if threads is not None:
        torch.set_num_threads(threads)
    x, y = _synthetic_batch(batch, num_classes, seed, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def make(use_pmm):
        torch.manual_seed(seed)
        model = _build_resnet(depth, num_classes, width).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            logits, features = model(x)
            if use_pmm:
                loss = official_torch.official_objective(
                    logits, y, features, model.fc.weight, alpha
                )
            else:
                loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            sync()
            return loss.detach()

        return step, model

    ce, model = make(False)
    pmm, _ = make(True)
    info = {**_torch_info(device, model), "layout": "NCHW (PyTorch default), eager"}
    return {"ce": ce, "pmm": pmm}, info


def _synthetic_batch(batch: int, num_classes: int, seed: int, device: str):
    """``(x, y)``: normal float32 images ``[batch, 3, 32, 32]`` and int64 labels."""
    import torch

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, num_classes, batch).astype(np.int64)).to(device)
    return x, y


def _torch_info(device: str, model) -> dict:
    """The torch version, device, threads and the model's parameter count."""
    import torch

    return {
        "torch": torch.__version__,
        "torch_device": str(torch.device(device)),
        "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
    }


# variant -> (torch.compile mode or None, channels_last)
PEER_VARIANTS = {
    "eager": (None, False),
    "eager-cl": (None, True),
    "compile": ("default", False),
    "reduce-overhead": ("reduce-overhead", True),
    "max-autotune-no-cudagraphs": ("max-autotune-no-cudagraphs", True),
}
PEER_PREFIX = "PEER_JSON "


def make_pmm_train(
    batch: int,
    *,
    variant: str = "eager",
    device: str = "cpu",
    depth: int = 44,
    width: int = 16,
    num_classes: int = 10,
    alpha: float = 1e-3,
    threads: int | None = None,
    seed: int = 0,
):
    """One run's PMM training on one synthetic batch: ``train(steps) -> last loss``.

    The model and the authors' objective (cross-entropy + ``alpha`` * the official
    penalty) are one module, ``torch.compile``-d for the compile variants
    (:data:`PEER_VARIANTS`); SGD (lr 0.1, momentum 0.9, weight decay 1e-4) stays
    eager (``fused=True`` on CUDA where this PyTorch has it, else ``foreach``).
    ``train`` runs ``steps`` steps and waits for the device once, at the end.
    The input is a fixed normalized float batch: no augmentation or data
    pipeline is timed. Returns ``(train, info)``.
    """
    import torch

    compile_mode, channels_last = PEER_VARIANTS[variant]
    if threads is not None:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    x, y = _synthetic_batch(batch, num_classes, seed, device)
    torch.manual_seed(seed)
    model = _build_resnet(depth, num_classes, width).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    objective = _objective(model, alpha)
    if compile_mode is not None:
        objective = torch.compile(objective, mode=compile_mode)
    opt, optimizer = _sgd(model, cuda)
    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    graphs = compile_mode == "reduce-overhead" and mark is not None

    def train(steps: int):
        loss = None
        for _ in range(steps):
            if graphs:
                mark()
            opt.zero_grad(set_to_none=True)
            loss = objective(x, y)
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        return loss.detach().float().item()

    info = {
        **_torch_info(device, model),
        "variant": variant,
        "compile_mode": compile_mode,
        "layout": "channels_last" if channels_last else "NCHW",
        "optimizer": f"SGD momentum 0.9, weight decay 1e-4, {optimizer}",
        "cudnn_benchmark": cuda,
    }
    return train, info


def _objective(model, alpha: float):
    """``model`` and the authors' objective as one module: ``(images, labels) -> loss``."""
    from torch import nn

    class Objective(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images, labels):
            logits, features = self.net(images)
            return official_torch.official_objective(
                logits, labels, features, self.net.fc.weight, alpha
            )

    return Objective(model)


def _sgd(model, cuda: bool):
    """``(optimizer, kind)``: SGD (lr 0.1, momentum 0.9, weight decay 1e-4), ``fused`` on
    CUDA where this PyTorch has it, else ``foreach`` on CUDA and the default on the CPU."""
    import torch

    opt_kwargs = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    if cuda:
        try:
            return torch.optim.SGD(model.parameters(), fused=True, **opt_kwargs), "fused"
        except (TypeError, RuntimeError):
            pass
    return torch.optim.SGD(model.parameters(), **opt_kwargs), "foreach" if cuda else "default"


def time_pmm_train(
    batch: int,
    *,
    steps: int,
    reps: int = 5,
    max_time: float = 30.0,
    warmup: int = 2,
    **kwargs,
) -> dict:
    """Times :func:`make_pmm_train`: ``warmup`` calls of ``steps`` steps (the first
    one compiles; ``first_call_s``), then up to ``reps`` timed calls (at least 2;
    none started after ``max_time`` s); ``step_ms`` = the median call / ``steps``."""
    t0 = time.perf_counter()
    train, info = make_pmm_train(batch, **kwargs)
    build_s = time.perf_counter() - t0
    first = None
    loss = float("nan")
    for i in range(max(1, warmup)):
        t0 = time.perf_counter()
        loss = train(steps)
        if i == 0:
            first = time.perf_counter() - t0
    calls = []
    start = time.perf_counter()
    while len(calls) < max(2, reps):
        if len(calls) >= 2 and time.perf_counter() - start > max_time:
            break
        t0 = time.perf_counter()
        loss = train(steps)
        calls.append(time.perf_counter() - t0)
    call_ms = [1000 * c for c in calls]
    return {
        **info,
        "batch": batch,
        "steps_per_call": steps,
        "step_ms": statistics.median(call_ms) / steps,
        "step_ms_min": min(call_ms) / steps,
        "stat": "median",
        "calls_ms": [round(c, 3) for c in call_ms],
        "build_s": build_s,
        "first_call_s": first,
        "loss_finite": bool(np.isfinite(loss)),
    }


def main(argv=None):
    """Times one variant and prints ``PEER_JSON {...}`` (see module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench.torch_peer",
        description="Time one run of the PyTorch ResNet PMM training (one JSON line).",
    )
    parser.add_argument("--variant", choices=sorted(PEER_VARIANTS), default="eager")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed call")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-time", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--depth", type=int, default=44)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args(argv)
    out = time_pmm_train(**vars(args))  # the flags are time_pmm_train's arguments
    print(PEER_PREFIX + json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
