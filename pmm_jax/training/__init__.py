"""Training with PMM: train state, train/eval steps, data parallelism, checkpoints.

Needs Flax and orbax-checkpoint (``pip install "pmm_jax[training]"``);
``import pmm_jax`` alone does not import this package.
"""

# First: a clear ImportError naming the extra when Flax or orbax is missing.
from pmm_jax.training import _deps  # noqa: F401, I001

from pmm_jax.training.adapters import with_pre_logits
from pmm_jax.training.layer_points import layer_point
from pmm_jax.training.checkpoint import (
    CheckpointCorruptWarning,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointNotSavedWarning,
    CheckpointNotVerifiedWarning,
)
from pmm_jax.training.parallel import (
    DATA_AXIS,
    batch_sharding,
    check_divisible,
    gather_to_host,
    jit_sharded,
    make_mesh,
    pmap_step,
    replicate,
    replicate_on_mesh,
    shard_batch_on_mesh,
    split_for_devices,
    unreplicate,
)
from pmm_jax.training.state import TrainState, create_train_state, nonfinite_steps
from pmm_jax.training.steps import make_eval_step, make_train_step

__all__ = [
    "DATA_AXIS",
    "CheckpointCorruptWarning",
    "CheckpointMismatchError",
    "CheckpointNotSavedWarning",
    "CheckpointNotVerifiedWarning",
    "Checkpointer",
    "TrainState",
    "batch_sharding",
    "check_divisible",
    "create_train_state",
    "gather_to_host",
    "jit_sharded",
    "layer_point",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "nonfinite_steps",
    "pmap_step",
    "replicate",
    "replicate_on_mesh",
    "shard_batch_on_mesh",
    "split_for_devices",
    "unreplicate",
    "with_pre_logits",
]
