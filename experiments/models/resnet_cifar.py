"""The CIFAR ResNets of He et al. 2016 (ResNet-20/32/44/56/110, depth 6n+2).

References:
  K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016, section 4.2 (CIFAR-10 and analysis).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models.common import (
    BatchNormCNN,
    batch_norm_partial,
    check_depth,
    check_images,
    check_positive_int,
    classifier_head,
    conv_partial,
)
from pmm_jax.training import layer_point


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an option-A (zero-padded identity) shortcut."""

    features: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, strides=self.strides, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        shortcut = x
        if self.strides != 1:
            shortcut = shortcut[:, :: self.strides, :: self.strides, :]
        extra = self.features - shortcut.shape[-1]
        if extra:
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra)))
        return nn.relu(y + shortcut)


class CifarResNet(BatchNormCNN):
    """He et al.'s CIFAR ResNet of depth ``6n + 2`` (20, 32, 44, 56, 110, ...).

    A 3x3 convolution with 16 channels, then three stages of ``n`` basic blocks
    (two 3x3 convolutions each) with 16, 32 and 64 channels on 32x32, 16x16 and
    8x8 maps (the first block of stages 2 and 3 has stride 2), global average
    pooling and the ``head``. Every convolution is followed by BatchNorm.

    Shortcuts are **option A** of the paper, its choice for CIFAR: the identity,
    subsampled by 2 and zero-padded with the new channels where the shape
    changes, so shortcuts have no parameters. Parameter counts (``count_params``
    on a 32x32x3 input, 10 classes): ResNet-20 269,722; ResNet-32 464,154;
    ResNet-44 658,586; ResNet-56 853,018; ResNet-110 1,727,962 -- the paper's
    0.27M / 0.46M / 0.66M / 0.85M / 1.7M.

    Attributes:
      depth: total depth ``6n + 2`` with ``n >= 1``.
      num_classes: classes ``k`` of the head.
      width: channels of the first stage (16 in the paper; the stages have
        ``width``, ``2 width``, ``4 width``). Small values make tiny test models.
      dtype, bn_axis_name, bn_momentum: the body's compute dtype and BatchNorm
        settings, as in every CNN here (``experiments/models/common.py``).

    Layers marked for PMM at hidden layers (``pmm.layers``): ``stage1`` .. ``stage3``,
    each stage's output.

    Call: ``model.apply(variables, x, train=..., mutable=["batch_stats"])`` with
    ``x`` float ``[B, H, W, 3]`` (normalized images); returns ``(logits,
    {"pre_logits": [B, 4 width]})``.
    """

    POINTS: ClassVar[tuple[str, ...]] = ("stage1", "stage2", "stage3")
    depth: int
    num_classes: int = 10
    width: int = 16

    def __post_init__(self):
        check_positive_int("num_classes", self.num_classes)
        check_positive_int("width", self.width)
        check_depth("CifarResNet", self.depth, 2, "20, 32, 44, 56, 110")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_images(x, "CifarResNet")
        blocks_per_stage = (self.depth - 2) // 6
        conv = conv_partial(self, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
        norm = batch_norm_partial(self, train)
        x = jnp.asarray(x, self.dtype)
        x = conv(self.width, name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        for stage in range(3):
            for block in range(blocks_per_stage):
                x = _BasicBlock(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    conv=conv,
                    norm=norm,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x)
            x = layer_point(self, f"stage{stage + 1}", x)  # for PMM at hidden layers
        x = jnp.mean(x, axis=(1, 2))
        return classifier_head(x, self.num_classes)
