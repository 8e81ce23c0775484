"""Alpha schedules: plain optax schedules ``step -> alpha``.

The paper (§IV-A) ramps alpha linearly from 1e-5 to 1e-3 over the CIFAR runs
and keeps it constant at 1e-5 for ImageNet and BERT (1e-6 for MNLI-mismatched).
Its official code changes alpha once per epoch::

    alpha(epoch) = 0                                     if epoch == 0
                 = init + epoch * (end - init) / epochs  otherwise

(the last epoch gets ``init + (epochs-1)/epochs * (end - init)``, just short of
``end``). :func:`epoch_linear_alpha_schedule` reproduces that exactly;
:func:`linear_alpha_schedule` is the smooth per-step ramp.

These values assume the paper's reduction (mean cross-entropy + *summed*
penalty, see :func:`pmm_jax.pmm_loss`) and BatchNorm'd features; other networks
need their own alpha (sweep it on a validation split over a wide log grid).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

PAPER_ALPHA_RANGE = (1e-5, 1e-3)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def linear_alpha_schedule(
    init_value: float = PAPER_ALPHA_RANGE[0],
    end_value: float = PAPER_ALPHA_RANGE[1],
    *,
    total_steps: int,
    transition_begin: int = 0,
) -> optax.Schedule:
    """Per-step linear ramp ``init_value -> end_value`` over ``total_steps``.

    Example:
      >>> import pmm_jax
      >>> s = pmm_jax.linear_alpha_schedule(total_steps=100)
      >>> [round(float(s(t)), 8) for t in (0, 50, 100, 200)]
      [1e-05, 0.000505, 0.001, 0.001]
    """
    total_steps = _check_positive_int("total_steps", total_steps)
    return optax.linear_schedule(
        init_value, end_value, transition_steps=total_steps, transition_begin=transition_begin
    )


def epoch_linear_alpha_schedule(
    init_value: float = PAPER_ALPHA_RANGE[0],
    end_value: float = PAPER_ALPHA_RANGE[1],
    *,
    steps_per_epoch: int,
    num_epochs: int,
) -> optax.Schedule:
    """The official code's ramp: 0 in epoch 0, then linear in the epoch index.

    ``alpha = init + epoch * (end - init) / num_epochs`` for ``epoch >= 1``, with
    ``epoch = step // steps_per_epoch``.

    Example:
      >>> import pmm_jax
      >>> s = pmm_jax.epoch_linear_alpha_schedule(1.0, 3.0, steps_per_epoch=10, num_epochs=4)
      >>> [float(s(t)) for t in (0, 9, 10, 25, 39)]
      [0.0, 0.0, 1.5, 2.0, 2.5]
    """
    steps_per_epoch = _check_positive_int("steps_per_epoch", steps_per_epoch)
    num_epochs = _check_positive_int("num_epochs", num_epochs)
    slope = (end_value - init_value) / num_epochs

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch
        return jnp.where(epoch > 0, init_value + epoch * slope, 0.0)

    return schedule


def constant_alpha_schedule(value: float = PAPER_ALPHA_RANGE[0]) -> optax.Schedule:
    """Constant alpha (ImageNet and BERT in the paper: 1e-5).

    Example:
      >>> import pmm_jax
      >>> round(float(pmm_jax.constant_alpha_schedule()(123)), 10)
      1e-05
    """
    return optax.constant_schedule(value)
