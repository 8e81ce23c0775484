"""Config files: one per experiment in ``experiments/configs/``, each with
``get_config(variant="")``.

``load_config("FILE.py", VARIANT)`` loads one as ``--config FILE.py:VARIANT``
does (ml_collections passes everything after the first colon to ``get_config``
as one string: ``glue.py:mnli:baseline`` -> ``get_config("mnli:baseline")``).
Files starting with ``_`` and ``common.py`` hold shared code, not configs.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# The files there that are not configs (besides those starting with "_").
NOT_CONFIGS = ("common.py",)


def config_files(config_dir: str = CONFIG_DIR) -> list[str]:
    """The config files in ``config_dir``, sorted (shared code left out)."""
    return sorted(
        f
        for f in os.listdir(config_dir)
        if f.endswith(".py") and not f.startswith("_") and f not in NOT_CONFIGS
    )


def load_module(path: str):
    """The config file at ``path`` as a module (not registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, variant: str = "") -> ml_collections.ConfigDict:
    """``get_config(variant)`` of the config file ``path`` (``get_config()`` for ``""``)."""
    module = load_module(path)
    return module.get_config(variant) if variant else module.get_config()
