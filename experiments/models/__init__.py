"""Models for the experiments, all following one contract (big_vision style).

The contract every model here follows, and which ``pmm_jax.training`` relies on:

* A ``flax.linen.Module`` called as ``model.apply(variables, x, train=bool,
  rngs=..., mutable=...)``; ``train`` is keyword-only.
* It returns ``(logits, aux)``: ``logits`` is ``[B, num_classes]``; ``aux`` is a
  dict with ``aux["pre_logits"]`` = exactly the input of the classifier head
  (after any dropout in front of it), so that
  ``logits == aux["pre_logits"] @ head.kernel + head.bias``.
* The classifier head is ``nn.Dense(num_classes, name="head")``, so PMM finds
  its kernel at ``params["head"]["kernel"]`` (``[d, k]``).
* ``dtype`` (compute dtype, e.g. ``jnp.bfloat16``) is an attribute; parameters
  stay float32 (``param_dtype`` default).
* Models with BatchNorm keep statistics in the ``batch_stats`` collection, use
  ``use_running_average=not train``, and take ``bn_axis_name: str | None`` -- the
  mapped axis to average batch statistics over under ``pmap``/``shard_map``
  (leave ``None`` under ``jit`` over global arrays, where the batch is global).
* Dropout draws from the ``"dropout"`` rng stream.

``get_model(name, **kwargs)`` builds one by name; modules are imported lazily so
that a missing optional dependency of one model does not break the others.
"""

from __future__ import annotations

import importlib

# name -> (module, class)
_REGISTRY = {
    "cnn1d": ("experiments.models.cnn1d", "ConvNet1D"),
    "mlp": ("experiments.models.cnn1d", "MLP"),
    "resnet_cifar": ("experiments.models.resnet_cifar", "CifarResNet"),
    "vgg16_bn": ("experiments.models.vgg", "VGG16BN"),
    "wrn": ("experiments.models.wrn", "WideResNet"),
    "mobilenet_v1": ("experiments.models.mobilenet", "MobileNetV1"),
    "bert": ("experiments.models.bert", "build_classifier"),
}
MODEL_NAMES = tuple(_REGISTRY)


def get_model(name: str, **kwargs):
    """Instantiates the model registered under ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; known: {sorted(_REGISTRY)}.")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)
