"""Test-session setup shared by tests/ and the doctests in pmm_jax/.

8 fake CPU devices (for pmap / shard_map tests) with two XLA:CPU threads per
device (``PJRT_NPROC``; without them a loop of sharded steps can deadlock a
collective and XLA aborts the process: see tests/fake_devices.py) and float32
matmuls, set before JAX initialises its backends. Doctests that use Flax are
skipped where it is not installed (the core install, ``pip install -e .``, has no
Flax).

Compiled programs are shared across tests: JAX's persistent compilation cache in a
directory of this session (removed at its end; exported, so that the tests'
subprocesses share it too). Many tests compile the same programs (the same model,
step and shapes): each is compiled once per session.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

from tests.fake_devices import NUM_DEVICES, fake_device_env

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.update(fake_device_env(NUM_DEVICES))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="pmm_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )

import jax
import pytest

if jax.config.jax_platforms in (None, "", "cpu"):
    jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("flax") is not None:
        return
    skip = pytest.mark.skip(reason="the example uses Flax: pip install -e '.[training]'")
    for item in items:
        examples = getattr(getattr(item, "dtest", None), "examples", ())
        if any("flax" in example.source for example in examples):
            item.add_marker(skip)
