"""Constants for the tests (the device setup is in the root conftest.py)."""

import jax

from tests.fake_devices import NUM_DEVICES

__all__ = ["NUM_DEVICES", "ON_CPU"]
ON_CPU = jax.default_backend() == "cpu"
