"""Pieces shared by the models: initializers, the classifier head, parameter counting.

Numerics shared by every model here: the body runs in the module's ``dtype``
(e.g. ``jnp.bfloat16``) with float32 parameters; the classifier head runs in
float32 on ``pre_logits`` cast to float32, so ``logits`` and ``aux["pre_logits"]``
are float32 whatever ``dtype`` is (the head costs ``d * k`` multiply-adds, nothing
next to the body, and the loss and the PMM penalty then see float32 inputs).

Attributes shared by every CNN here (``CifarResNet``, ``WideResNet``, ``VGG16BN``,
``MobileNetV1``), keyword-only, from :class:`BatchNormCNN`:

* ``dtype``: compute dtype of the body; parameters stay float32; the head runs in
  float32 (above);
* ``bn_axis_name``: mapped axis to average BatchNorm statistics over under ``pmap``
  / ``shard_map``; ``None`` under ``jit`` over global arrays;
* ``bn_momentum``: BatchNorm running-average momentum (:data:`BN_MOMENTUM`:
  PyTorch's 0.1 is 0.9 here).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. 2015 ("fan_out", as torchvision's ResNets): the initialization the CIFAR
# ResNet, WRN and MobileNet papers' code used for convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), which the papers'
# recipes were tuned with.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class BatchNormCNN(nn.Module, kw_only=True):
    """The keyword-only attributes of every CNN here (see the module docstring)."""

    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = BN_MOMENTUM


def classifier_head(pre_logits: jax.Array, num_classes: int) -> tuple[jax.Array, dict[str, Any]]:
    """The contract's head: ``nn.Dense(num_classes, name="head")`` in float32.

    Must be called inside a compact ``__call__`` (the Dense becomes a child of the
    calling module).

    Args:
      pre_logits: ``[B, d]`` features, any float dtype.
      num_classes: ``k``.

    Returns:
      ``(logits, {"pre_logits": pre_logits})``: float32 ``[B, k]`` and float32
      ``[B, d]``, with ``logits == pre_logits @ kernel + bias``.
    """
    pre_logits = pre_logits.astype(jnp.float32)
    logits = nn.Dense(num_classes, dtype=jnp.float32, name="head")(pre_logits)
    return logits, {"pre_logits": pre_logits}


def check_positive_int(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless ``value`` is an int >= 1 (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def check_rate(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless ``0 <= value < 1``."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def check_width_multiplier(value: Any) -> None:
    """Raises ``ValueError`` unless ``value`` is a number > 0."""
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {value!r}.")


def check_depth(model: str, depth: Any, offset: int, examples: str) -> None:
    """Raises ``ValueError`` unless ``depth`` is an int ``6 n + offset`` with ``n >= 1``.

    ``examples`` lists valid depths for the message, e.g. ``"16, 22, 28, 40"``.
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 6 + offset
        or (depth - offset) % 6
    ):
        raise ValueError(
            f"{model} depth must be 6n + {offset} with n >= 1 ({examples}, ...), got {depth!r}."
        )


def check_images(x: jax.Array, name: str) -> None:
    """Raises ``ValueError`` unless ``x`` is ``[B, H, W, C]``."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects images [B, H, W, C], got shape {tuple(x.shape)}.")


def param_count(params: Any) -> int:
    """Number of scalars in a parameter tree: arrays, or ``jax.ShapeDtypeStruct``s.

    The one parameter counter of the experiments (``count_params``, ``--list-configs``
    and the step benchmarks use it). Count ``variables["params"]`` only: BatchNorm
    statistics are not parameters.
    """
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def count_params(model: nn.Module, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> int:
    """Number of parameters (the ``"params"`` collection) of ``model``.

    Uses ``jax.eval_shape``: nothing is allocated or computed, so this is instant
    even for ImageNet models. BatchNorm statistics are not parameters and are not
    counted.

    Args:
      model: a Flax linen module called as ``model(x, train=False)``.
      input_shape: the shape of ``x`` including the batch, e.g. ``(1, 32, 32, 3)``.
      dtype: the dtype of ``x``.

    Returns:
      The parameter count, a plain ``int``.

    Example:
      >>> from experiments.models.resnet_cifar import CifarResNet
      >>> count_params(CifarResNet(20), (1, 32, 32, 3))
      269722
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return param_count(variables.get("params", {}))


def conv_partial(module: nn.Module, **defaults) -> Any:
    """``nn.Conv`` as every CNN here uses it: no bias, He fan-out init, the module's dtype.

    ``defaults`` (e.g. ``kernel_size``, ``padding``) become defaults of the partial.
    """
    return functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_kernel_init, dtype=module.dtype, **defaults
    )


def batch_norm_partial(module: nn.Module, train: bool) -> Any:
    """``nn.BatchNorm`` with PyTorch's epsilon, the module's momentum, dtype and axis name."""
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=module.bn_momentum,
        epsilon=BN_EPSILON,
        axis_name=module.bn_axis_name,
        dtype=module.dtype,
    )
