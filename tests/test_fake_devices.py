"""The test session's fake CPU devices have the XLA:CPU threads they need (see fake_devices.py)."""

import os

import jax
import pytest

from tests.conftest import NUM_DEVICES, ON_CPU
from tests.fake_devices import fake_device_env, one_device_env, pjrt_nproc


@pytest.mark.skipif(not ON_CPU, reason="fake devices are CPU devices")
def test_session_has_two_xla_threads_per_fake_device():
    assert jax.device_count() == NUM_DEVICES
    assert int(os.environ["PJRT_NPROC"]) >= 2 * NUM_DEVICES


def test_pjrt_nproc_is_two_per_device_or_what_was_set_if_larger():
    assert pjrt_nproc(8, {"PJRT_NPROC": "2"}) == "16"
    assert pjrt_nproc(8, {"PJRT_NPROC": "64"}) == "64"
    assert pjrt_nproc(8, {"NPROC": "40"}) == "40"
    assert pjrt_nproc(8, {"PJRT_NPROC": "x", "NPROC": "3"}) == "16"
    assert int(pjrt_nproc(1, {})) == max(os.cpu_count() or 1, 2)


def test_device_env_and_one_device_env():
    env = fake_device_env(4, {"XLA_FLAGS": "--xla_dump_to=/tmp/d", "PJRT_NPROC": "1"})
    assert env == {
        "XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=4",
        "PJRT_NPROC": "8",
    }
    plain = one_device_env({"XLA_FLAGS": env["XLA_FLAGS"], "PJRT_NPROC": "8", "HOME": "/h"})
    assert plain == {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "HOME": "/h"}
