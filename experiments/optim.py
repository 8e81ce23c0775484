"""Optimizers, learning-rate and alpha schedules built from a config."""

from __future__ import annotations

import jax
import optax

import pmm_jax

BASE_LOSSES = {
    "cross_entropy": optax.losses.softmax_cross_entropy_with_integer_labels,
    "hinge": optax.losses.multiclass_hinge_loss,
}
# The names each config field accepts (experiments/config_check.py checks them all
# before training; the errors below are a second line for code that skips it).
OPTIMIZERS = ("sgd", "adam", "adamw")
# "linear_decay" (the lr, down to 0) is named apart from alpha's "linear" (a ramp up).
LR_SCHEDULES = ("constant", "step", "cosine", "linear_decay")
ALPHA_SCHEDULES = ("none", "constant", "linear", "epoch_linear", "auto")
WEIGHT_DECAY_MASKS = ("all", "kernels")


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``constant``, ``step`` (multiply by ``lr_decay`` at ``lr_boundaries`` epochs),
    ``cosine`` or ``linear_decay`` (linearly to 0 over the run); optional linear
    warm-up over ``warmup_steps`` (if > 0) or ``warmup_epochs``."""
    lr = config.learning_rate
    kind = config.get("lr_schedule", "constant")
    if kind == "constant":
        schedule = optax.constant_schedule(lr)
    elif kind == "step":
        boundaries = {
            int(epoch * steps_per_epoch): config.get("lr_decay", 0.1)
            for epoch in config.get("lr_boundaries", ())
        }
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    elif kind == "cosine":
        schedule = optax.cosine_decay_schedule(lr, total_steps)
    elif kind == "linear_decay":
        schedule = optax.linear_schedule(lr, 0.0, total_steps)
    else:
        raise ValueError(f"Unknown lr_schedule {kind!r}; known: {', '.join(LR_SCHEDULES)}.")
    warmup = config.get("warmup_steps", 0) or int(config.get("warmup_epochs", 0) * steps_per_epoch)
    if warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup]
        )
    return schedule


def make_optimizer(config, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """``sgd`` (momentum, nesterov), ``adam`` or ``adamw`` with the lr schedule.

    ``weight_decay`` is coupled L2 (added to the gradient, as PyTorch's
    ``weight_decay`` argument) for ``sgd``/``adam``, decoupled for ``adamw``.
    ``weight_decay_mask="kernels"`` decays only weights of rank >= 2 (conv and
    dense kernels), as the paper's ImageNet recipe ("L2 on conv weights").
    """
    lr = learning_rate_schedule(config, steps_per_epoch, total_steps)
    name = config.optimizer
    wd = config.get("weight_decay", 0.0)
    mask = None
    mask_name = config.get("weight_decay_mask", "all")
    if mask_name not in WEIGHT_DECAY_MASKS:
        raise ValueError(
            f"Unknown weight_decay_mask {mask_name!r}; known: {', '.join(WEIGHT_DECAY_MASKS)}."
        )
    if mask_name == "kernels":
        mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd, mask=mask)
    if name == "sgd":
        opt = optax.sgd(
            lr, momentum=config.get("momentum", 0.9), nesterov=config.get("nesterov", False)
        )
    elif name == "adam":
        opt = optax.adam(lr)
    else:
        raise ValueError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}.")
    if wd:
        opt = optax.chain(optax.add_decayed_weights(wd, mask=mask), opt)
    return opt


def make_alpha(pmm_config, steps_per_epoch: int, total_steps: int, *, ratio: float | None = None):
    """The PMM weight from ``config.pmm``: None (off), a float or an optax schedule.

    ``auto`` (the self-calibrating alpha, ``experiments/run/calibrate.py``): the paper's
    ramp shape, ``alpha_end / 100 -> alpha_end`` per step, in units of ``ratio``, the
    base risk / penalty ratio measured at the start (required then): ``alpha_end = 1``
    ends with the penalty weighing, at the initial scale, what the base risk did.

    ``alpha_schedule``: ``none``; ``constant`` (``alpha_end``: a ramp with init =
    end, so that one field sets alpha whatever the schedule); ``linear`` (per step,
    ``alpha_init -> alpha_end`` over the run); ``epoch_linear`` (the official code:
    0 in epoch 0, then linear in the epoch index).
    """
    kind = pmm_config.get("alpha_schedule", "none")
    if kind == "none":
        return None
    if kind == "constant":
        return pmm_jax.constant_alpha_schedule(pmm_config.alpha_end)
    if kind == "linear":
        return pmm_jax.linear_alpha_schedule(
            pmm_config.alpha_init, pmm_config.alpha_end, total_steps=total_steps
        )
    if kind == "auto":
        if ratio is None:
            raise ValueError("alpha_schedule='auto' needs the measured ratio (calibrate first).")
        end = pmm_config.alpha_end * ratio
        return pmm_jax.linear_alpha_schedule(end / 100, end, total_steps=total_steps)
    if kind == "epoch_linear":
        return pmm_jax.epoch_linear_alpha_schedule(
            pmm_config.alpha_init,
            pmm_config.alpha_end,
            steps_per_epoch=steps_per_epoch,
            num_epochs=max(1, total_steps // steps_per_epoch),
        )
    raise ValueError(f"Unknown alpha_schedule {kind!r}; known: {', '.join(ALPHA_SCHEDULES)}.")


def base_loss(pmm_config):
    name = pmm_config.get("base_loss", "cross_entropy")
    if name not in BASE_LOSSES:
        raise ValueError(f"Unknown base_loss {name!r}: {sorted(BASE_LOSSES)}.")
    return BASE_LOSSES[name]
