"""MobileNet v1 of Howard et al. for ImageNet.

References:
  A. G. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
  Mobile Vision Applications", arXiv:1704.04861 (Table 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models import common

# Table 1: (output channels, stride) of the 13 depthwise-separable layers.
MOBILENET_V1_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(common.BatchNormCNN):
    """MobileNet v1: a strided 3x3 conv, 13 depthwise-separable layers, the head.

    Each separable layer is a 3x3 depthwise convolution (stride 1 or 2) and a 1x1
    pointwise convolution, each followed by BatchNorm and ReLU (the paper's ReLU,
    not ReLU6). Global average pooling, optional dropout, then ``head``. The
    width multiplier scales every layer's channels (``int(c * alpha)``).
    Parameters for 1000 classes: 4,231,976 at 1.0 (the paper's 4.2M) and
    1,331,592 at 0.5 (1.3M).

    Attributes:
      num_classes: classes of the head.
      width_multiplier: ``alpha`` in (0, 1] in the paper (any > 0 works).
      dropout_rate: dropout on the pooled features, in front of the head (the
        pre_logits are taken after it); ``"dropout"`` rng stream.
      dtype, bn_axis_name, bn_momentum: the body's compute dtype and BatchNorm
        settings, as in every CNN here (``experiments/models/common.py``).
    """

    num_classes: int = 1000
    width_multiplier: float = 1.0
    dropout_rate: float = 0.0

    def __post_init__(self):
        common.check_positive_int("num_classes", self.num_classes)
        common.check_rate("dropout_rate", self.dropout_rate)
        common.check_width_multiplier(self.width_multiplier)
        super().__post_init__()

    def _width(self, channels: int) -> int:
        return max(1, int(channels * self.width_multiplier))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        common.check_images(x, "MobileNetV1")
        conv = common.conv_partial(self)
        norm = common.batch_norm_partial(self, train)
        x = jnp.asarray(x, self.dtype)
        x = conv(self._width(32), (3, 3), strides=2, padding=((1, 1), (1, 1)), name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        for i, (channels, stride) in enumerate(MOBILENET_V1_LAYERS, start=1):
            in_channels = x.shape[-1]
            x = conv(
                in_channels,
                (3, 3),
                strides=stride,
                padding=((1, 1), (1, 1)),
                feature_group_count=in_channels,
                name=f"dw{i}",
            )(x)
            x = nn.relu(norm(name=f"dw{i}_bn")(x))
            x = conv(self._width(channels), (1, 1), padding="VALID", name=f"pw{i}")(x)
            x = nn.relu(norm(name=f"pw{i}_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return common.classifier_head(x, self.num_classes)
