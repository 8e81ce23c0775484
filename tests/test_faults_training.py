"""Issue #12, pmm_jax.training's edges (needs Flax): misuse gives a clear error.

The library's own cases, which need no Flax, are in tests/test_faults_library.py.
"""

import numpy as np
import pytest

from pmm_jax import training
from tests.conftest import NUM_DEVICES
from tests.test_faults_library import BAD_ALPHAS
from tests.toy import ToyNet, toy_data, toy_state


@pytest.mark.parametrize("alpha", BAD_ALPHAS)
def test_train_step_refuses_a_bad_alpha_before_training(alpha):
    with pytest.raises((ValueError, TypeError), match="alpha"):
        training.make_train_step(alpha=alpha)(toy_state(ToyNet()), toy_data(8))


def test_scalar_leaf_in_a_batch_gets_a_clear_error():
    batch = {"x": np.zeros((8, 6), np.float32), "y": np.zeros(8, np.int32), "temp": 0.5}
    with pytest.raises(ValueError, match=r"\['temp'\].*scalar.*leading batch axis"):
        training.split_for_devices(batch, NUM_DEVICES)
    mesh = training.make_mesh()
    with pytest.raises(ValueError, match=r"\['temp'\].*scalar"):
        training.shard_batch_on_mesh(batch, mesh)


def test_pmap_step_refuses_a_step_built_without_axis_name():
    # What happened before: each replica trained on its own radius and gradients.
    with pytest.raises(ValueError, match=r"axis_name=None.*diverge.*axis_name='batch'"):
        training.pmap_step(training.make_train_step(alpha=1e-2))
    with pytest.raises(ValueError, match=r"axis_name='data'"):
        training.pmap_step(training.make_train_step(alpha=1e-2, axis_name="data"))
    with pytest.raises(ValueError, match="jit_sharded"):
        training.jit_sharded(
            training.make_train_step(alpha=1e-2, axis_name="batch"), training.make_mesh()
        )
    # The right pairings are accepted, and so is a user's own step function.
    training.pmap_step(training.make_train_step(alpha=1e-2, axis_name="batch"))
    training.pmap_step(training.make_eval_step(axis_name="batch"))
    training.pmap_step(lambda state, batch: (state, {}))
