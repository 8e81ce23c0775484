"""Tests for the alpha schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pmm_jax


def test_linear_ramp_endpoints_and_midpoint():
    s = pmm_jax.linear_alpha_schedule(total_steps=1000)
    np.testing.assert_allclose(
        [s(0), s(500), s(1000), s(5000)], [1e-5, 5.05e-4, 1e-3, 1e-3], rtol=1e-5
    )


def test_epoch_ramp_matches_official_formula():
    spe, epochs = 7, 200
    s = jax.jit(pmm_jax.epoch_linear_alpha_schedule(steps_per_epoch=spe, num_epochs=epochs))
    steps = np.arange(0, spe * epochs, 3)
    got = np.asarray(jax.vmap(s)(jnp.asarray(steps)))
    epoch = steps // spe
    want = np.where(epoch > 0, 1e-5 + epoch * (1e-3 - 1e-5) / epochs, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == 0.0 and got.max() < 1e-3


def test_constant():
    assert float(pmm_jax.constant_alpha_schedule(3e-6)(10**6)) == pytest.approx(3e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_step_counts(bad):
    with pytest.raises(ValueError, match="total_steps"):
        pmm_jax.linear_alpha_schedule(total_steps=bad)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        pmm_jax.epoch_linear_alpha_schedule(steps_per_epoch=bad, num_epochs=3)
