"""The opt-in bf16 compute mode of the image models (``model_kwargs.dtype="bfloat16"``).

A short run of the CIFAR ResNet recipe (tiny: depth 8, width 4; PMM on with a
constant alpha 1e-3, so the penalty is part of the loss) in float32 and in
bfloat16 compute, on the same mock CIFAR batches, fed as the trainer feeds them.

Tolerance: every step's training loss within 2e-2 relative, and the first step's
(the same parameters: the forward pass alone) within 5e-3. Why: bf16 keeps 8
significand bits, so every activation is rounded by up to 2^-9 (~2e-3) relative;
over a batch these errors mostly average out in the loss (measured at step 0:
4e-5), then the two trajectories separate as their updates differ (measured on
CPU: at most 5.2e-3 over these 12 steps; 6.4e-3 over 20 steps in a probe with
other data and seeds). The bound is ~4x the measured difference. The
parameters, BatchNorm statistics and the optimizer state must stay float32
(checked exactly), and the head, loss and PMM penalty see float32 inputs
(``experiments/models/common.py``).
"""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.config.plan import plan_of
from experiments.configs import cifar10_resnet44
from experiments.data import feed, images
from experiments.run.build import build
from pmm_jax import training

STEPS = 12
BATCH = 16
RTOL_STEP0 = 5e-3
RTOL = 2e-2


def _run(dtype: str):
    config = cifar10_resnet44.get_config("local")
    config.model_kwargs.dtype = dtype  # as --config.model_kwargs.dtype=bfloat16 sets it
    config.num_train_steps = STEPS
    config.batch_size = BATCH
    config.steps_per_call = STEPS
    for what in ("log", "eval", "checkpoint"):
        config[f"{what}_every_steps"] = STEPS
    config.pmm.alpha_schedule = "constant"
    config.pmm.alpha_end = 1e-3
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=256):
        ds = images.get_dataset("cifar10", validation_size=0)
        mesh = training.make_mesh()
        trainee = build(config, ds, mesh, plan_of(config, ds.num_train))
        block = next(feed.train_blocks(ds, trainee.seeds, BATCH, STEPS, mesh))
        state, metrics = trainee.train_steps(trainee.initial_state(), block)
    return state, {k: np.asarray(v)[:, 0] for k, v in metrics.items()}


def _float_dtypes(tree) -> set[str]:
    return {
        str(leaf.dtype)
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)
    }


@pytest.mark.slow
def test_bf16_compute_changes_a_short_run_little_and_keeps_float32_state():
    state32, m32 = _run("float32")
    state16, m16 = _run("bfloat16")
    for state in (state32, state16):
        assert _float_dtypes(state.params) == {"float32"}
        assert _float_dtypes(state.batch_stats) == {"float32"}
        assert _float_dtypes(state.opt_state) == {"float32"}
    for key in ("loss", "penalty"):
        assert m16[key].dtype == np.float32
    assert (m16["penalty"] > 0).all()
    rel = np.abs(m16["loss"] - m32["loss"]) / np.abs(m32["loss"])
    assert rel[0] < RTOL_STEP0, rel
    assert rel.max() < RTOL, rel
    assert rel.max() > 0  # bf16 did change the computation
