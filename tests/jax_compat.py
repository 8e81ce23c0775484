"""Test-side spellings that moved between the JAX versions the core tests run on.

The core tests run on the newest JAX and on the oldest that ``pyproject.toml``
allows (``.ci/run``); each fallback says which JAX needs it.
"""

import re
from importlib.metadata import version

import jax
import jax.experimental
import jax.extend

# (major, minor, patch) of the installed jaxlib: XLA's behaviour goes with it.
JAXLIB_VERSION = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)\.(\d+)", version("jaxlib")).groups())

if hasattr(jax, "enable_x64"):
    enable_x64 = jax.enable_x64
else:  # JAX < 0.8
    enable_x64 = jax.experimental.enable_x64

if hasattr(jax.extend.core, "jaxprs_in_params"):
    jaxprs_in_params = jax.extend.core.jaxprs_in_params
else:  # JAX < 0.10
    jaxprs_in_params = jax.core.jaxprs_in_params
