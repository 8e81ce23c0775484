"""The one list of config fields: what each allows, its default, and its role.

Every field a config may have is in :data:`FIELDS`, once. Each :class:`Field`
says what the field allows (its :class:`~experiments.config.rules.Rule`), its
default (fields with one make :func:`base_config`, the MNIST-1D main job's
values that every config file starts from; fields without one are optional and
checked where present) and its role in the run:

* ``base_only``: read from the base config only; a method may not set it;
* ``loop``: methods share one program (``runs_mode``) only if these are equal:
  the data stream, the length and the steps at which the loop logs, evaluates
  and checkpoints;
* ``hashed=False``: left out of the config hash (``experiments.config.identity``):
  changing it reads a finished method back instead of training it again;
* ``legacy``: the value that computes what runs did before the field existed;
  at that value the field is left out of the hash, so old workdirs still resume.

Dotted names (``pmm.alpha_end``) are fields of a nested dict; ``OPEN`` dicts
belong to a model or a dataset (anything goes below them; ``model_kwargs`` is
checked against the model's signature instead).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

import pmm_jax
from experiments import optim
from experiments.config.rules import (
    BOOL,
    DICT,
    NAME,
    NONNEGATIVE,
    PAIRS,
    POSITIVE,
    RATE,
    SEEDS,
    TEXT,
    Rule,
    integer,
    number,
    one_of,
    tuple_of,
)
from experiments.data.registry import DATASET_NAMES, is_dataset_name
from experiments.evaluators import EVALUATOR_NAMES
from experiments.models import MODEL_NAMES
from experiments.objectives import OBJECTIVE_NAMES

NO_DEFAULT = object()
_BASE_OBJECTIVE = {"name": "base_loss", "kwargs": {}}

# How the runs (methods x seeds) of a group share a program (experiments/run/forms.py):
# a form, scanned over the call's steps, or with LOOP one program per step.
FORMS = ("vmap", "unroll", "sequential")
LOOP = "_loop"
CANDIDATES = (*FORMS, *(form + LOOP for form in FORMS))
# "per_method": each method alone; "auto": a form fixed per backend and model (the
# same on every rerun); "measure": the fastest candidate, timed on the first block.
RUNS_MODES = ("per_method", "auto", "measure", *CANDIDATES)
# The schedules experiments.sweep runs each of sweep.alphas with (its default: both).
SWEEP_ALPHA_SCHEDULES = ("linear", "constant")


@dataclasses.dataclass(frozen=True)
class Field:
    """One field: its rule, its default (``NO_DEFAULT``: optional) and its role."""

    rule: Rule
    default: Any = NO_DEFAULT
    required: bool = False
    base_only: bool = False
    loop: bool = False
    hashed: bool = True
    legacy: Any = NO_DEFAULT


def _f(rule, default=NO_DEFAULT, **role) -> Field:
    return Field(rule, default, **role)


def _req(rule, default=NO_DEFAULT, **role) -> Field:
    return Field(rule, default, required=True, **role)


FIELDS: dict[str, Field] = {
    # What to train on, and what.
    "name": _f(NAME, "mnist1d", base_only=True),
    "dataset": _req(
        Rule("must be one of " + ", ".join(map(repr, DATASET_NAMES)), is_dataset_name),
        "mnist1d",
        base_only=True,
        loop=True,
    ),
    # The dataset's own arguments (experiments/data).
    "dataset_kwargs": _f(DICT, {"validation_size": 0}, base_only=True, loop=True),
    "model": _req(one_of(MODEL_NAMES), "cnn1d"),  # experiments.models registry name
    # The model's own arguments (checked against its signature).
    "model_kwargs": _f(DICT, {"channels": 25, "dropout_rate": 0.0}),
    "model_kwargs.dropout_rate": _f(RATE),
    "pretrained": _f(DICT, base_only=True),
    "pretrained.kind": _f(one_of(("hf_bert",))),
    "pretrained.path": _f(TEXT),
    "pretrained.how_to_get": _f(TEXT),
    "allow_random_init": _f(BOOL, base_only=True),
    # Seeds, batches, length. The seeds are trained together (vmap); >= 5 for a
    # paired comparison.
    "seeds": _req(SEEDS, tuple(range(10)), loop=True),
    "batch_size": _req(integer(1), 100, loop=True),  # the global batch
    "num_train_steps": _f(integer(0), 6000, loop=True),  # MNIST-1D's schedule (150 epochs)
    "num_epochs": _f(NONNEGATIVE, 0, loop=True),  # used instead of num_train_steps when > 0
    # Optimizer and learning rate.
    "optimizer": _req(one_of(optim.OPTIMIZERS), "adam"),
    "learning_rate": _req(number(0, lo_open=True), 1e-2),
    "lr_schedule": _f(one_of(optim.LR_SCHEDULES), "constant"),
    "lr_boundaries": _f(tuple_of(NONNEGATIVE, "epochs >= 0"), ()),  # for lr_schedule="step"
    "lr_decay": _f(POSITIVE, 0.1),
    "warmup_epochs": _f(NONNEGATIVE, 0.0),
    "warmup_steps": _f(integer(0)),
    "momentum": _f(number(0, 1, hi_open=True), 0.9),
    "nesterov": _f(BOOL, False),
    "weight_decay": _f(NONNEGATIVE, 0.0),  # coupled L2 for sgd/adam
    "weight_decay_mask": _f(one_of(optim.WEIGHT_DECAY_MASKS), "all"),  # or "kernels"
    # PMM.
    "pmm": _f(DICT),
    "pmm.alpha_schedule": _f(one_of(optim.ALPHA_SCHEDULES), "none"),
    "pmm.alpha_init": _req(number(0), 0.0),
    # A constant schedule's value is alpha_end too (a ramp with init = end), so
    # that one field (--config.pmm.alpha_end, a sweep) sets alpha for every schedule.
    "pmm.alpha_end": _req(number(0), 0.0),
    "pmm.base_loss": _f(one_of(optim.BASE_LOSSES), "cross_entropy"),  # or hinge
    # mean CE + alpha * mean_i R_i (batch-size free); "official" = the authors' code,
    # r^2 (mean_i ||w_y - w_m||)^2; "sum" = B x "mean".
    "pmm.penalty_reduction": _req(one_of(pmm_jax.PENALTY_REDUCTIONS), "mean"),
    "pmm.stop_radius_gradient": _req(BOOL, False),
    # Where PMM applies: "head" (the classifier head) and/or layers the model marks
    # (experiments.models.layer_points), weighted by layer_weights (empty: all 1).
    "pmm.layers": _f(tuple_of(NAME, "layer names", nonempty=True), ("head",), legacy=("head",)),
    "pmm.layer_weights": _f(tuple_of(NONNEGATIVE, "weights >= 0"), (), legacy=()),
    # alpha_schedule="auto": steps whose base risk / penalty ratio scales alpha.
    "pmm.calibration_steps": _f(integer(1), 100, legacy=100),
    # The training objective: "base_loss" (pmm.base_loss: cross-entropy or hinge) or a
    # rival of experiments/objectives.py with its hyperparameters in kwargs.
    "objective": _f(DICT, {"name": "base_loss", "kwargs": {}}, legacy=_BASE_OBJECTIVE),
    "objective.name": _f(one_of(("base_loss", *OBJECTIVE_NAMES))),
    "objective.kwargs": _f(DICT),
    # Steps, logs, evaluation, checkpoints (experiments.config.plan).
    "steps_per_call": _req(integer(1), 100, loop=True),  # steps fused into one jitted call
    # > 0: that many epochs per call instead (whole epochs on the device).
    "epochs_per_call": _f(NONNEGATIVE, 0.0, loop=True, legacy=0.0),
    # How the runs (methods x seeds) share a program (experiments/run/forms.py). It
    # changes the float rounding, not the training: switching it resumes a run.
    "runs_mode": _f(one_of(RUNS_MODES), "per_method", loop=True, hashed=False),
    # Groups of methods trained at the same time, each in its own thread (2 uses the
    # second core of a 2-core CPU: one program alone keeps about 1.5 cores busy).
    # Not hashed: every program is the same, only the schedule of the groups changes.
    "parallel_groups": _f(integer(1), 1, base_only=True, hashed=False),
    "log_every_steps": _f(integer(1), 100, loop=True),
    "eval_every_steps": _f(integer(1), 500, loop=True),
    "log_every_epochs": _f(NONNEGATIVE, loop=True),  # > 0: instead of *_every_steps
    "eval_every_epochs": _f(NONNEGATIVE, loop=True),
    "checkpoint_every_epochs": _f(NONNEGATIVE, loop=True),
    # The split of the accuracy curves (nothing is selected on them) and of the final
    # per-seed numbers.
    "eval_split": _req(NAME, "test", loop=True),
    "final_split": _f(NAME, "test", loop=True),
    "evaluate_all_splits": _f(BOOL),
    "evaluators": _f(
        tuple_of(one_of(EVALUATOR_NAMES), "names among " + ", ".join(EVALUATOR_NAMES))
    ),
    "eval_batch_size": _req(integer(1), 500, loop=True),
    "checkpoint_every_steps": _f(integer(1), 1000, loop=True),
    "save_best": _f(BOOL, loop=True),
    "keep_checkpoints": _req(integer(1), 2, loop=True),
    # Steps whose gradients hold NaN/Inf are skipped (optax.apply_if_finite) and
    # counted per seed; a seed that skipped more than this fraction of its steps
    # fails the run (NonFiniteStepsError) once results and checkpoints are written.
    # Not hashed: raising it reads finished methods back.
    "max_nonfinite_fraction": _f(number(0, 1), 0.01, hashed=False),
    # The report: t-SNE of penultimate test features, baseline vs PMM.
    "tsne": _f(BOOL, True, base_only=True),
    "tsne_points": _f(integer(1), 2000, base_only=True),  # per panel, at most
    "num_devices": _f(integer(0), 0, loop=True),  # data-parallel devices (0 = all)
    "paired_comparisons": _f(PAIRS, base_only=True),
    # Methods: name -> overrides of the fields above; empty = one run as is.
    "methods": _f(DICT, {}, base_only=True),
    # The order to run and report methods (others follow, sorted).
    "method_order": _f(tuple_of(NAME, "method names"), (), base_only=True),
    # Adversarial evaluation (experiments/run/robustness.py: the study's); optional.
    "attack": _f(DICT, base_only=True),
    "attack.split": _f(NAME),
    "attack.max_examples": _f(integer(1)),
    "attack.norms": _f(tuple_of(one_of(("l2", "linf")), "norms 'l2' or 'linf'", nonempty=True)),
    "attack.eps_fractions": _f(tuple_of(NONNEGATIVE, "fractions of the data's scale >= 0")),
    "attack.steps": _f(integer(1)),
    "attack.bisection_steps": _f(integer(0)),
    "attack.transfer_from": _f(NAME),
    "attack.seed": _f(integer(0)),
    # experiments/study.py's protocol (configs/study.py); optional.
    "study": _f(DICT, base_only=True),
    "study.tune_seeds": _f(SEEDS),
    "study.grids": _f(DICT),  # method -> {fields, scales, values, inherit}: checked by study
    # experiments/sweep.py's grid (sweep_mnist1d.py, tweets_minilm.py:sweep); optional.
    "sweep": _f(DICT, base_only=True),
    "sweep.alphas": _f(tuple_of(POSITIVE, "alphas > 0")),
    "sweep.alpha_schedules": _f(
        tuple_of(one_of(SWEEP_ALPHA_SCHEDULES), " or ".join(map(repr, SWEEP_ALPHA_SCHEDULES)))
    ),
    "sweep.stop_radius_alphas": _f(tuple_of(POSITIVE, "alphas > 0")),
    "sweep.hinge_alphas": _f(tuple_of(POSITIVE, "alphas > 0")),
    "sweep.weight_decay_pmm_alphas": _f(tuple_of(POSITIVE, "alphas > 0")),
    "sweep.pmm_weight_decay": _f(NONNEGATIVE),
    "sweep.paper_schedule": _f(BOOL),
    "sweep.weight_decays": _f(tuple_of(NONNEGATIVE, "weight decays >= 0")),
    "sweep.dropout_rates": _f(tuple_of(RATE, "rates in [0, 1)")),
    "sweep.layer_alphas": _f(tuple_of(POSITIVE, "alphas > 0")),  # PMM at sweep.pmm_layers
    "sweep.pmm_layers": _f(tuple_of(NAME, "layer names", nonempty=True)),
}
# Dicts whose keys belong to a model or a dataset: anything goes below them.
OPEN = ("dataset_kwargs", "model_kwargs", "objective.kwargs", "study.grids")
# Dicts of fields (their keys are checked against FIELDS).
CONTAINERS = tuple(sorted({p.rsplit(".", 1)[0] for p in FIELDS if "." in p} - set(OPEN)))
BASE_ONLY = tuple(p for p, f in FIELDS.items() if f.base_only)
LOOP_FIELDS = tuple(p for p, f in FIELDS.items() if f.loop)
UNHASHED = tuple(p for p, f in FIELDS.items() if not f.hashed)
LEGACY = {p: f.legacy for p, f in FIELDS.items() if f.legacy is not NO_DEFAULT}


def base_config() -> ml_collections.ConfigDict:
    """The fields every config has, with their defaults (the MNIST-1D job's values)."""
    c = ml_collections.ConfigDict()
    for path, field in FIELDS.items():
        if field.default is NO_DEFAULT:
            continue
        *parents, leaf = path.split(".")
        node = c
        for key in parents:
            if key not in node:
                node[key] = ml_collections.ConfigDict()
            node = node[key]
        default = field.default
        node[leaf] = ml_collections.ConfigDict(default) if isinstance(default, dict) else default
    return c
