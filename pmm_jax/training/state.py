"""The train state and its creation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes, as one pytree.

    Attributes:
      step: ``int32[]`` optimizer steps taken (including skipped non-finite ones).
      params: the model parameters (``variables["params"]``).
      batch_stats: BatchNorm statistics (``variables["batch_stats"]``), ``{}`` for
        models without BatchNorm.
      opt_state: the optax state; the optimizer is wrapped in
        ``optax.apply_if_finite``, so it also counts skipped steps.
      rng: ``uint32[2]`` base PRNG key (raw key data, so it checkpoints as a plain
        array); each step folds in the step number (and the device index under
        ``pmap``).
      apply_fn: ``model.apply`` (static).
      tx: the optax transformation (static).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        out = {"params": self.params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out

    def checkpoint_items(self) -> dict:
        """The arrays to save: everything but the static functions."""
        return {
            "step": self.step,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "opt_state": self.opt_state,
            "rng": self.rng,
        }

    def replace_items(self, items: dict) -> TrainState:
        return self.replace(**items)


def create_train_state(
    model,
    tx: optax.GradientTransformation,
    sample_input,
    *,
    seed: int | Sequence[int] = 0,
    max_consecutive_nonfinite: int = 100,
) -> TrainState:
    """Initializes a model that follows the contract and wraps ``tx``.

    ``tx`` is wrapped in ``optax.apply_if_finite``: a step whose gradients hold a
    NaN/Inf leaves the parameters unchanged and is counted
    (``opt_state.total_notfinite``); after ``max_consecutive_nonfinite`` in a row
    the update is applied anyway (optax's rule), so a diverged run shows up.

    Args:
      model: a flax linen module (or an adapter with ``init``/``apply``) called as
        ``model.apply(variables, x, train=...)``.
      tx: the optimizer.
      sample_input: a batch of model input (an array or a dict of arrays) of the
        right shape and dtype; only its shape matters.
      seed: seeds the parameters and the state's rng. A sequence of seeds gives
        a *stacked* state (leading axis = seeds) for ``jax.vmap``-ed training of
        independent replicas, initialized in one vmapped call.
      max_consecutive_nonfinite: see above.

    Returns:
      A :class:`TrainState` at step 0.
    """
    tx = optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive_nonfinite)

    def init(seed):
        init_key, dropout_key, state_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        variables = dict(
            model.init({"params": init_key, "dropout": dropout_key}, sample_input, train=False)
        )
        params = variables.pop("params")
        batch_stats = variables.pop("batch_stats", {})
        return jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), state_key

    seeds = _check_seeds(seed)
    if isinstance(seed, (int, np.integer)):
        arrays = jax.jit(init)(seeds[0])
    else:
        arrays = jax.jit(jax.vmap(init))(jnp.asarray(seeds, jnp.int32))
    step, params, batch_stats, opt_state, rng = arrays
    return TrainState(
        step=step,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rng=rng,
        apply_fn=model.apply,
        tx=tx,
    )


_SEED_RANGE = (-(2**31), 2**31)  # int32: stacked seeds are one int32 array


def _check_seeds(seed) -> list[int]:
    """``seed`` as a list of Python ints, each an integer that fits int32."""
    single = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
    try:
        seeds = [seed] if single else list(seed)
    except TypeError:
        seeds = None
    lo, hi = _SEED_RANGE
    if not seeds or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and lo <= s < hi for s in seeds
    ):
        raise ValueError(
            f"`seed` must be an integer in [-2**31, 2**31) or a non-empty sequence of them "
            f"(a stacked state holds its seeds as int32); got {seed!r}."
        )
    return [int(s) for s in seeds]


def nonfinite_steps(state: TrainState) -> jax.Array:
    """How many steps were skipped for non-finite gradients so far."""
    return state.opt_state.total_notfinite
