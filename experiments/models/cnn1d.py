"""Small models for MNIST-1D (Greydanus 2020): the published ConvBase and an MLP.

ConvBase: three 1-D convolutions of 25 channels (kernel 5 stride 2, then kernel 3
stride 2 twice, padding 1, ReLU) turn a length-40 signal into 5 x 25 = 125
features, then a linear head. The MNIST-1D paper reports ~94% test accuracy for
it (MLP ~68%, logistic regression ~32%).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from pmm_jax.training import layer_point


class Conv1D(nn.Module):
    """A 1-D convolution computed as one matmul over gathered windows (im2col).

    Same parameters (``kernel [k, C_in, C_out]``, ``bias [C_out]``) and the same
    result as ``nn.Conv(features, (k,), strides=(s,), padding=((p, p),))``
    (tested), for MNIST-1D's tiny convolutions, where XLA:CPU's direct convolution
    is slow (``docs/performance.md``), and it batches well under ``jax.vmap`` over
    seeds (a batched matmul instead of a grouped convolution).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, length, channels = x.shape
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, channels, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
        out_len = (length + 2 * self.padding - k) // self.stride + 1
        span = self.stride * (out_len - 1) + 1
        windows = jnp.stack([x[:, i : i + span : self.stride] for i in range(k)], axis=2)
        windows = windows.reshape(batch, out_len, k * channels).astype(self.dtype)
        out = windows @ kernel.reshape(k * channels, self.features).astype(self.dtype)
        return out + bias.astype(self.dtype)


class ConvNet1D(nn.Module):
    """MNIST-1D ConvBase; ``aux["pre_logits"]`` are the 125 flattened conv features.

    Attributes:
      num_classes: classes of the head.
      channels: channels of each conv layer (25 in the published model).
      dropout_rate: dropout on the features in front of the head (0 = none).
      dtype: compute dtype.

    Layers marked for PMM at hidden layers (``pmm.layers``): ``block1`` .. ``block3``,
    each conv layer's output after its ReLU ([B, 19 | 10 | 5, channels]).
    """

    POINTS: ClassVar[tuple[str, ...]] = ("block1", "block2", "block3")
    num_classes: int = 10
    channels: int = 25
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        if x.ndim == 2:  # [B, L] -> [B, L, 1]
            x = x[..., None]
        x = x.astype(self.dtype)
        for i, (kernel, stride) in enumerate([(5, 2), (3, 2), (3, 2)]):
            x = Conv1D(self.channels, kernel, stride, 1, dtype=self.dtype, name=f"conv{i + 1}")(x)
            x = layer_point(self, f"block{i + 1}", nn.relu(x))  # for PMM at hidden layers
        feats = x.reshape(x.shape[0], -1)
        feats = nn.Dropout(self.dropout_rate, deterministic=not train)(feats)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
        return logits, {"pre_logits": feats}


class MLP(nn.Module):
    """A ReLU MLP (MNIST-1D's baseline MLP has two hidden layers of 100).

    Layer marked for PMM at hidden layers (``pmm.layers``): ``hidden1``, the first
    hidden layer's output (the last one is the head's input, ``"head"``).
    """

    POINTS: ClassVar[tuple[str, ...]] = ("hidden1",)
    num_classes: int = 10
    hidden: tuple[int, ...] = (100, 100)
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense{i + 1}")(x))
            if i == 0:
                x = layer_point(self, "hidden1", x)  # for PMM at hidden layers
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), {"pre_logits": x}
