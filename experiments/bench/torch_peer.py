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
"""

from __future__ import annotations

import importlib.util

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
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, num_classes, batch).astype(np.int64)).to(device)
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
    info = {
        "torch": torch.__version__,
        "torch_device": str(torch.device(device)),
        "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "layout": "NCHW (PyTorch default), eager",
    }
    return {"ce": ce, "pmm": pmm}, info
