"""Fails early, naming the extra to install, when pmm_jax.training's dependencies are missing."""

import importlib.util


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # its parent is missing, or it is broken
        return False


for _module, _package in (("flax", "flax"), ("orbax.checkpoint", "orbax-checkpoint")):
    if not _installed(_module):
        raise ImportError(
            f"pmm_jax.training needs {_package}, which is not installed. Install the "
            "training extra: pip install 'pmm_jax[training]' (the experiments extra includes "
            "it). `import pmm_jax` alone needs neither."
        )
