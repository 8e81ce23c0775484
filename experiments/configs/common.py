"""What every config starts from, and the variants every family offers; not a config itself.

``base_config()`` (``experiments.config.fields``: the one list of fields) holds
the fields every config has, with the MNIST-1D job's values; each family (MNIST-1D, ``_vision.py``, ``glue.py``, ``tweets_minilm.py``)
overrides some and adds its own. ``apply_variant`` turns ``FILE.py:VARIANT`` into a config:
the shared ``"baseline"`` (PMM off) and ``"local"`` (a tiny run, for the tests),
plus a family's own variants.
"""

from collections.abc import Callable, Mapping

import ml_collections

Edit = Callable[[ml_collections.ConfigDict], None]


# The paper's CIFAR schedule as the authors ran it: the official per-epoch ramp
# 1e-5 -> 1e-3 (0 in epoch 0) with their reduction, r^2 (mean_i ||w_y - w_m||)^2.
PAPER_RAMP = (1e-5, 1e-3)
PAPER_SCHEDULE = {
    "alpha_schedule": "epoch_linear",
    "alpha_init": PAPER_RAMP[0],
    "alpha_end": PAPER_RAMP[1],
    "penalty_reduction": "official",
}


def ramp(alpha_end: float, **extra) -> dict:
    """The paper's ramp shape per step: ``alpha_end / 100 -> alpha_end`` over the run."""
    return {
        "alpha_schedule": "linear",
        "alpha_init": alpha_end / 100,
        "alpha_end": alpha_end,
        **extra,
    }


# The self-calibrating alpha's one setting (pmm.alpha_schedule="auto"), the same on every
# task and not tuned: alpha ends at AUTO_SCALE times the base risk / penalty ratio at the
# start (experiments/run/calibrate.py; docs/choosing_alpha.md).
AUTO_SCALE = 1e-2


def auto_alpha(**extra) -> dict:
    """A ``pmm`` block with the self-calibrating alpha at :data:`AUTO_SCALE`."""
    return {"alpha_schedule": "auto", "alpha_end": AUTO_SCALE, **extra}


def _baseline(c: ml_collections.ConfigDict) -> None:
    """The twin with PMM off, everything else equal."""
    c.name += "_baseline"
    c.pmm.alpha_schedule = "none"


def _local(c: ml_collections.ConfigDict) -> None:
    """Two steps of a tiny run, evaluated and checkpointed (for the tests)."""
    c.name += "_local"
    c.num_epochs = 0
    c.num_train_steps = 2
    c.epochs_per_call = 0.0
    c.batch_size = 8  # divisible by the tests' 8 fake devices
    c.eval_batch_size = 8
    for what in ("log", "eval", "checkpoint"):  # the config's epoch intervals give way to steps
        if f"{what}_every_epochs" in c:
            c[f"{what}_every_epochs"] = 0
    c.log_every_steps = 1
    c.eval_every_steps = 2
    c.checkpoint_every_steps = 2


# The variants several families offer (apply_variant's `shared`).
SHARED = {"baseline": _baseline, "local": _local}


def split_task(variant: str, tasks: tuple[str, ...], file: str, rest: str = "VARIANT") -> tuple:
    """``(task, rest)`` of ``variant = TASK[:rest]`` for a config file of several tasks.

    Raises:
      ValueError: ``TASK`` is not one of ``tasks``; the message names them.
    """
    task, _, tail = variant.partition(":")
    if task not in tasks:
        raise ValueError(
            f"Unknown variant {variant!r}: {file} needs the task, {file}:TASK[:{rest}] "
            f"with TASK one of {', '.join(tasks)} (e.g. {file}:{tasks[0]})."
        )
    return task, tail


def apply_variant(
    c: ml_collections.ConfigDict,
    variant: str,
    *,
    shared: tuple[str, ...] = ("baseline", "local"),
    local: Edit | None = None,
    own: Mapping[str, Edit] | None = None,
) -> ml_collections.ConfigDict:
    """Applies ``variant`` to ``c`` (in place) and returns ``c``.

    Args:
      c: a family's config, as its ``get_config("")`` returns it.
      variant: ``""`` (the config as it is; ``"pmm"`` too, where ``"baseline"`` is
        offered), one of ``shared`` or one of ``own``.
      shared: the shared variants this family offers: ``"baseline"`` (the twin with
        PMM off, for a config of one run) and ``"local"`` (a tiny run).
      local: the family's own tiny-run settings, applied after the shared ``"local"``.
      own: the family's own variants: name -> function that edits the config (its
        ``name`` included).

    Raises:
      ValueError: for a variant this family does not offer, naming those it does.
    """
    own = dict(own or {})
    if variant == "" or (variant == "pmm" and "baseline" in shared):
        return c
    if variant in own:
        own[variant](c)
        return c
    if variant in shared:
        SHARED[variant](c)
        if variant == "local" and local is not None:
            local(c)
        return c
    offered = ", ".join(map(repr, ["", *shared, *own]))
    raise ValueError(f"Unknown variant {variant!r}: {offered}.")
