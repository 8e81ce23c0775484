"""Test-session setup shared by tests/ and the doctests in pmm_jax/.

8 fake CPU devices (for pmap / shard_map tests) with two XLA:CPU threads per
device (``PJRT_NPROC``; without them a loop of sharded steps can deadlock a
collective and XLA aborts the process: see tests/fake_devices.py) and float32
matmuls, set before JAX initialises its backends.
"""

import os

from tests.fake_devices import NUM_DEVICES, fake_device_env

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.update(fake_device_env(NUM_DEVICES))

import jax

if jax.config.jax_platforms in (None, "", "cpu"):
    jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
jax.config.update("jax_default_matmul_precision", "highest")
