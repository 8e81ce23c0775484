"""``--list-configs``: one line per config: name, model, dataset, parameter count.

Counted with ``jax.eval_shape`` (no memory), from the dataset's classes and
example shapes (``experiments.data.registry.dataset_info``): no data is read and
no checkpoint is needed.
"""

from __future__ import annotations

import os

import jax

from experiments.config.files import config_files, load_module
from experiments.data.base import sample_input
from experiments.data.registry import dataset_info


def count_params(config) -> int:
    """Parameter count of the config's model via ``jax.eval_shape`` (no memory)."""
    from experiments.models import get_model
    from experiments.models.common import param_count

    num_classes, input_spec = dataset_info(config.dataset, **config.dataset_kwargs)
    model = get_model(config.model, num_classes=num_classes, **config.model_kwargs)
    x = sample_input(input_spec, batch=1, abstract=True)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
    return param_count(variables["params"])


def print_configs(config_dir: str) -> None:
    """Prints every config of ``config_dir``; a file with ``LIST_VARIANTS`` once per variant.

    ``glue.py`` lists one line per task (``glue:mrpc``, ...): it needs the task.
    """
    for fname in config_files(config_dir):
        module = load_module(os.path.join(config_dir, fname))
        for variant in getattr(module, "LIST_VARIANTS", ("",)):
            config = module.get_config(variant) if variant else module.get_config()
            name = fname[:-3] + (f":{variant}" if variant else "")
            print(f"{name}\t{config.model}\t{config.dataset}\t{count_params(config)}")
