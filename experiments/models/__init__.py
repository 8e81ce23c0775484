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

Pretrained weights are each model family's business (as big_vision's
``models/*.py`` each own ``load()``): a family that can start from a checkpoint
registers a module with ``load(params, path, *, model, stacked=False, kind=...)``
and ``resolve_config(config)``; ``load_pretrained`` and ``resolve_pretrained``
dispatch to it by model name (BERT: ``experiments.models.bert_import``).
"""

from __future__ import annotations

import importlib
import inspect

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
# name -> the module with the family's load() and resolve_config().
_PRETRAINED = {"bert": "experiments.models.bert_import"}


def get_model(name: str, **kwargs):
    """Instantiates the model registered under ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; known: {sorted(_REGISTRY)}.")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def model_arguments(name: str) -> set[str] | None:
    """The keyword arguments model ``name`` takes (None: it takes any, or no such model)."""
    if name not in _REGISTRY:
        return None
    module, cls = _REGISTRY[name]
    params = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) - {"num_classes", "parent", "name"}


def layer_points(name: str) -> tuple[str, ...]:
    """The layers model ``name`` marks for PMM at hidden layers (``POINTS``; () if none)."""
    if name not in _REGISTRY:
        return ()
    module, cls = _REGISTRY[name]
    return tuple(getattr(getattr(importlib.import_module(module), cls), "POINTS", ()))


def _pretrained_module(name: str):
    if name not in _PRETRAINED:
        raise ValueError(
            f"Model {name!r} has no pretrained weights to load; models that do: "
            f"{sorted(_PRETRAINED)}. Drop `pretrained` from the config."
        )
    return importlib.import_module(_PRETRAINED[name])


def load_pretrained(name: str, params, path: str, **kwargs):
    """``params`` with the checkpoint at ``path`` loaded by model ``name``'s family.

    ``kwargs`` (``model``, ``stacked``, ``kind``) go to the family's ``load``.

    Raises:
      ValueError: model ``name`` has no pretrained loading.
    """
    return _pretrained_module(name).load(params, path, **kwargs)


def resolve_pretrained(config):
    """``config`` with what its model family derives from ``config.pretrained``.

    E.g. BERT's architecture and tokenizer default to the checkpoint directory.
    A config without ``pretrained`` is returned as is.
    """
    if not config.get("pretrained"):
        return config
    return _pretrained_module(config.model).resolve_config(config)
