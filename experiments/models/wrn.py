"""Wide residual networks (WRN-d-k) of Zagoruyko and Komodakis.

References:
  S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models.common import (
    BatchNormCNN,
    batch_norm_partial,
    check_depth,
    check_images,
    check_positive_int,
    check_rate,
    classifier_head,
    conv_partial,
)


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus the shortcut.

    Where the shape changes the shortcut is a 1x1 convolution (with the block's
    stride) of the pre-activated input, as in the authors' code.
    """

    features: int
    strides: int
    dropout_rate: float
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x, train: bool):
        preact = nn.relu(self.norm(name="bn1")(x))
        y = self.conv(self.features, (3, 3), strides=self.strides, name="conv1")(preact)
        y = nn.relu(self.norm(name="bn2")(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features, (3, 3), name="conv2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = self.conv(
                self.features, (1, 1), strides=self.strides, padding="VALID", name="shortcut"
            )(preact)
        else:
            shortcut = x
        return y + shortcut


class WideResNet(BatchNormCNN):
    """WRN-``depth``-``widen_factor``: a pre-activation ResNet, wide and shallow.

    A 3x3 convolution with 16 channels, three groups of ``n = (depth - 4) / 6``
    pre-activation blocks with ``16 k``, ``32 k``, ``64 k`` channels (strides 1,
    2, 2), then BN-ReLU, global average pooling and the ``head``. Dropout, when
    ``dropout_rate > 0``, sits between the two convolutions of each block.
    WRN-28-10 for 100 classes has 36,536,884 parameters (36,479,194 for 10), the
    paper's 36.5M.

    Attributes:
      depth: ``6 n + 4`` with ``n >= 1`` (16, 22, 28, 40, ...).
      widen_factor: ``k >= 1``.
      num_classes: classes of the head.
      dropout_rate: dropout inside each block (0.3 in parts of the paper; 0 in
        the PMM paper's recipe); draws from the ``"dropout"`` rng stream.
      dtype, bn_axis_name, bn_momentum: the body's compute dtype and BatchNorm
        settings, as in every CNN here (``experiments/models/common.py``).
    """

    depth: int = 28
    widen_factor: int = 10
    num_classes: int = 100
    dropout_rate: float = 0.0

    def __post_init__(self):
        check_depth("WideResNet", self.depth, 4, "16, 22, 28, 40")
        check_positive_int("widen_factor", self.widen_factor)
        check_positive_int("num_classes", self.num_classes)
        check_rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_images(x, "WideResNet")
        blocks_per_group = (self.depth - 4) // 6
        conv = conv_partial(self, padding=((1, 1), (1, 1)))
        norm = batch_norm_partial(self, train)
        x = jnp.asarray(x, self.dtype)
        x = conv(16, (3, 3), name="stem_conv")(x)
        for group in range(3):
            for block in range(blocks_per_group):
                x = _PreActBlock(
                    features=16 * 2**group * self.widen_factor,
                    strides=2 if group > 0 and block == 0 else 1,
                    dropout_rate=self.dropout_rate,
                    conv=conv,
                    norm=norm,
                    name=f"group{group + 1}_block{block + 1}",
                )(x, train)
        x = nn.relu(norm(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return classifier_head(x, self.num_classes)
