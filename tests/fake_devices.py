"""The process settings for fake CPU devices (root conftest.py, test subprocesses, stress script).

XLA:CPU runs the per-device programs of a multi-device call on one thread pool
of ``max(PJRT_NPROC or cores, devices)`` threads, and on the same pool it also
runs each device's launch of the next call; a launch blocks its thread while its
device already has 32 calls queued (a loop that dispatches faster than the
devices compute). With one thread per device, a blocked launch leaves a
collective a participant short: the others wait in its rendezvous for good (the
launch waits for that very call to finish), and after 40 s XLA aborts the process
(``Termination timeout for 'all reduce ...'``). Two threads per device hold all
launches of one call and all programs of the other at once, so the queue drains;
one spare thread is not enough (4 devices with ``PJRT_NPROC=5`` still aborted).
``python -m tests.stress_fake_devices`` reproduces the abort with ``--no-fix``.

Import this module before JAX creates its CPU client; it imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NUM_DEVICES = 8  # the fake devices of the test session


def pjrt_nproc(num_devices: int, environ: Mapping[str, str] = os.environ) -> str:
    """``PJRT_NPROC`` for ``num_devices`` fake devices: at least two threads per device.

    Keeps a larger value already set (``PJRT_NPROC``, else ``NPROC``, which XLA also
    reads, else the number of cores).
    """
    for name in ("PJRT_NPROC", "NPROC"):
        value = environ.get(name, "").strip()
        if value.isdigit():
            have = int(value)
            break
    else:
        have = os.cpu_count() or 1
    return str(max(have, 2 * num_devices))


def fake_device_env(num_devices: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set for ``num_devices`` fake CPU devices, given ``environ``.

    ``XLA_FLAGS`` gains ``--xla_force_host_platform_device_count`` (kept after any
    flags already there) and ``PJRT_NPROC`` is sized by :func:`pjrt_nproc`. Also
    call ``jax.config.update("jax_num_cpu_devices", num_devices)`` in the process.
    """
    flags = environ.get("XLA_FLAGS", "")
    flags = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
    return {"XLA_FLAGS": flags, "PJRT_NPROC": pjrt_nproc(num_devices, environ)}


def one_device_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` for a subprocess on one CPU device: without the fake-device settings."""
    env = dict(environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    env.pop("PJRT_NPROC", None)
    return env
