"""Constants for the tests (the device setup is in the root conftest.py)."""

import jax

NUM_DEVICES = 8
ON_CPU = jax.default_backend() == "cpu"
