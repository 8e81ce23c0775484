"""What every config starts from, and the variants every family offers; not a config itself.

``base_config()`` holds the fields every config has, with the MNIST-1D job's
values; each family (MNIST-1D, ``_vision.py``, ``glue.py``, ``tweets_minilm.py``)
overrides some and adds its own. ``apply_variant`` turns ``FILE.py:VARIANT`` into a config:
the shared ``"baseline"`` (PMM off) and ``"local"`` (a tiny run, for the tests),
plus a family's own variants.
"""

from collections.abc import Callable, Mapping

import ml_collections

Edit = Callable[[ml_collections.ConfigDict], None]


def base_config() -> ml_collections.ConfigDict:
    """The fields every config has, with the MNIST-1D job's values."""
    c = ml_collections.ConfigDict()
    c.name = "mnist1d"
    c.dataset = "mnist1d"
    c.dataset_kwargs = ml_collections.ConfigDict({"validation_size": 0})
    c.model = "cnn1d"  # experiments.models registry name
    c.model_kwargs = ml_collections.ConfigDict({"channels": 25, "dropout_rate": 0.0})
    c.seeds = tuple(range(10))  # trained together (vmap); >= 5 for a paired comparison
    c.batch_size = 100  # global batch
    c.num_train_steps = 6000  # MNIST-1D's reference schedule (150 epochs)
    c.num_epochs = 0  # used instead of num_train_steps when > 0
    c.optimizer = "adam"
    c.learning_rate = 1e-2
    c.lr_schedule = "constant"  # constant | step | cosine | linear_decay (to 0)
    c.lr_boundaries = ()  # epochs, for lr_schedule="step"
    c.lr_decay = 0.1
    c.warmup_epochs = 0.0
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 0.0  # coupled L2 for sgd/adam
    c.weight_decay_mask = "all"  # or "kernels"
    c.pmm = ml_collections.ConfigDict(
        {
            "alpha_schedule": "none",  # none | constant | linear | epoch_linear
            "alpha_init": 0.0,
            # A constant schedule's value is alpha_end too (a ramp with init = end), so
            # that one field (--config.pmm.alpha_end, a sweep) sets alpha for every schedule.
            "alpha_end": 0.0,
            "base_loss": "cross_entropy",  # or hinge
            # mean CE + alpha * mean_i R_i (batch-size free); "official" = the authors'
            # code, r^2 (mean_i ||w_y - w_m||)^2; "sum" = B x "mean".
            "penalty_reduction": "mean",
            "stop_radius_gradient": False,
        }
    )
    c.steps_per_call = 100  # train steps fused into one jitted lax.scan
    c.epochs_per_call = 0.0  # > 0: that many epochs per call instead (whole epochs on the device)
    # How the runs (methods x seeds) share a program (experiments/runs.py): "per_method"
    # (each method alone, its seeds vmapped: how this job's published numbers were made),
    # "auto" (methods sharing a loop in one program, the fastest form measured), "vmap",
    # "unroll", "sequential".
    c.runs_mode = "per_method"
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.eval_split = "test"  # for the accuracy curves (nothing is selected on them)
    c.final_split = "test"  # the final per-seed numbers
    c.eval_batch_size = 500
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    # Steps whose gradients hold NaN/Inf are skipped (optax.apply_if_finite) and
    # counted per seed; a seed that skipped more than this fraction of its steps
    # fails the run (NonFiniteStepsError) once results and checkpoints are written.
    # Not part of the config hash: raising it reads finished methods back.
    c.max_nonfinite_fraction = 0.01
    c.tsne = True  # t-SNE of penultimate test features, baseline vs PMM
    c.tsne_points = 2000  # at most this many test points per t-SNE panel
    c.num_devices = 0  # data-parallel devices (0 = all)
    c.methods = ml_collections.ConfigDict()  # name -> overrides; empty = one run as is
    c.method_order = ()  # the order to run and report methods (others follow, sorted)
    return c


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
