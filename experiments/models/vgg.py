"""VGG-16 with BatchNorm, in its usual CIFAR form.

References:
  K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015 (configuration D); BatchNorm after every
  convolution as in S. Ioffe, C. Szegedy, ICML 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models.common import (
    BatchNormCNN,
    batch_norm_partial,
    check_images,
    check_positive_int,
    check_rate,
    check_width_multiplier,
    classifier_head,
    conv_partial,
)

# Configuration D: output channels of the 13 3x3 convolutions, "M" = 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
VGG16_LAYERS += (512, 512, 512, "M")


class VGG16BN(BatchNormCNN):
    """VGG-16 (13 conv-BN-ReLU layers, 5 max-pools) with a CIFAR classifier.

    The 13 3x3 convolutions of configuration D, each followed by BatchNorm and
    ReLU, with 2x2 max-pooling after each of the 5 groups. On 32x32 CIFAR images
    the maps end at 1x1x512; they are average-pooled (an identity at 32x32, so
    other sizes work too) and flattened.

    The classifier (the ImageNet model's three 4096-wide layers make no sense on
    a 1x1x512 map, and CIFAR codebases differ here): by default (``mlp_dims=()``)
    the 512 conv features go straight into ``head`` (one ``Dense(num_classes)``,
    the common CIFAR variant), so ``pre_logits`` are the 512-d pooled conv
    features that PMM acts on: 14,724,042 parameters for 10 classes,
    14,770,212 for 100 (convolutions without bias, since BatchNorm follows).
    ``mlp_dims=(512, 512)`` with ``dropout_rate=0.5`` gives the other common
    variant (Dropout-Dense-ReLU twice, then the head; 15,249,354 parameters for
    10 classes); its ``pre_logits`` are the last hidden layer.

    Attributes:
      num_classes: classes ``k`` of the head.
      mlp_dims: widths of hidden Dense+ReLU layers between the conv features and
        the head; ``()`` for none.
      dropout_rate: dropout before each hidden Dense layer (unused when
        ``mlp_dims=()``); draws from the ``"dropout"`` rng stream.
      width_multiplier: scales every conv width (1.0 = VGG-16; small values make
        tiny test models).
      dtype, bn_axis_name, bn_momentum: the body's compute dtype and BatchNorm
        settings, as in every CNN here (``experiments/models/common.py``).
    """

    num_classes: int = 10
    mlp_dims: Sequence[int] = ()
    dropout_rate: float = 0.0
    width_multiplier: float = 1.0

    def __post_init__(self):
        check_positive_int("num_classes", self.num_classes)
        for i, d in enumerate(self.mlp_dims):
            check_positive_int(f"mlp_dims[{i}]", d)
        check_rate("dropout_rate", self.dropout_rate)
        check_width_multiplier(self.width_multiplier)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        check_images(x, "VGG16BN")
        if x.shape[1] < 32 or x.shape[2] < 32:
            raise ValueError(
                f"VGG16BN pools 5 times and needs images of at least 32x32, got {x.shape[1:3]}."
            )
        conv = conv_partial(self, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
        norm = batch_norm_partial(self, train)
        x = jnp.asarray(x, self.dtype)
        i = 0
        for layer in VGG16_LAYERS:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            i += 1
            features = max(1, int(layer * self.width_multiplier))
            x = conv(features, name=f"conv{i}")(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
        x = jnp.mean(x, axis=(1, 2))
        for j, dim in enumerate(self.mlp_dims):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(nn.Dense(dim, dtype=self.dtype, name=f"fc{j + 1}")(x))
        return classifier_head(x, self.num_classes)
