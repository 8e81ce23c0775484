"""``--list-configs``: one line per config file: name, model, dataset, parameter count."""

from __future__ import annotations

import importlib.util
import os

import jax

from experiments.data.base import sample_input


def load_config(path: str, variant: str = ""):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def count_params(config, num_classes: int, input_spec) -> int:
    """Parameter count of the config's model via ``jax.eval_shape`` (no memory)."""
    from experiments.models import get_model
    from experiments.models.common import param_count

    model = get_model(config.model, num_classes=num_classes, **config.model_kwargs)

    x = sample_input(input_spec, batch=1, abstract=True)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
    return param_count(variables["params"])


def print_configs(config_dir: str) -> None:
    for fname in sorted(os.listdir(config_dir)):
        if not fname.endswith(".py") or fname.startswith("_") or fname == "listing.py":
            continue
        config = load_config(os.path.join(config_dir, fname))
        num_classes, input_spec = _shape_info(config)
        params = count_params(config, num_classes, input_spec)
        print(f"{fname[:-3]}\t{config.model}\t{config.dataset}\t{params}")


def _shape_info(config):
    """(num_classes, input_spec) without touching the data (configs may name them)."""
    if "num_classes" in config and "input_spec" in config:
        return config.num_classes, config.input_spec.to_dict()
    if config.dataset == "mnist1d":
        return 10, {"x": ((40,), "float32")}
    raise ValueError(f"config {config.name!r} must set `num_classes` and `input_spec` to be listed")
