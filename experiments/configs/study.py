"""How PMM compares: its rivals, noisy labels and adversarial inputs, one task per variant.

    python -m experiments.study --workdir runs/study/mnist1d --config experiments/configs/study.py:mnist1d
    python -m experiments.study --workdir runs/study/mnist1d_noise20 --config experiments/configs/study.py:mnist1d_noise20
    python -m experiments.study --workdir runs/study/mnist1d_noise40 --config experiments/configs/study.py:mnist1d_noise40
    python -m experiments.study --workdir runs/study/digits --config experiments/configs/study.py:digits
    python -m experiments.study --report runs/study --out docs      # docs/compare.md, .json, plots

Variants: ``TASK`` or ``TASK:local`` (a tiny run of the same protocol, for the tests),
``TASK`` one of :data:`TASKS`; ``cifar10`` (ResNet-20) is for anyone with the data and
an accelerator, tested on ``tfds.testing.mock_data``.

The protocol (``experiments/study.py``), the same for every method: each method's
strength is chosen on the validation split from a grid of six values (eight on the
noisy-label tasks, :data:`NOISY_EXTRA`), the same number for every method of a task,
``study.tune_seeds`` seeds per value; then the chosen value trains
``seeds`` (10) on the same data order, evaluated on the clean test split, and attacked
(``attack``, ``experiments/run/robustness.py``). Methods without a knob (the baseline,
the multiclass hinge, the self-calibrating alpha) are not tuned.
"""

import ml_collections

from experiments.config.fields import base_config
from experiments.configs import _vision
from experiments.configs.common import apply_variant, auto_alpha, ramp, split_task
from experiments.objectives import DEFAULT_GRIDS

TASKS = ("mnist1d", "mnist1d_noise20", "mnist1d_noise40", "digits", "cifar10")
LIST_VARIANTS = TASKS

# PMM's alpha: the end of the paper's ramp shape (alpha / 100 -> alpha), "mean" reduction.
PMM_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
WEIGHT_DECAY_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
DROPOUT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _objective(name: str, **kwargs) -> dict:
    return {"objective": {"name": name, "kwargs": kwargs}}


def _grid(field, values, *, scales=(1.0,), fields=None, inherit=()) -> dict:
    return {
        "fields": tuple(fields or (field,)),
        "scales": tuple(scales),
        "values": tuple(values),
        "inherit": tuple(inherit),
    }


def _objective_grid(name: str, key: str) -> dict:
    return _grid(f"objective.kwargs.{key}", tuple(p[key] for p in DEFAULT_GRIDS[name]))


def methods(points: tuple[str, ...], *, dropout: bool = True) -> tuple[dict, dict]:
    """``(methods, grids)``: every method's overrides (tuned values at a placeholder) and
    its grid. ``points``: the model's marked layers (PMM at every one of them + head)."""

    def ramp_grid(**extra):
        fields = ("pmm.alpha_end", "pmm.alpha_init")
        return _grid(None, PMM_GRID, fields=fields, scales=(1.0, 0.01), **extra)

    m = {
        "baseline": ({}, None),
        "weight_decay": ({"weight_decay": 1e-4}, _grid("weight_decay", WEIGHT_DECAY_GRID)),
        "dropout": (
            {"model_kwargs": {"dropout_rate": 0.3}},
            _grid("model_kwargs.dropout_rate", DROPOUT_GRID),
        ),
        "pmm": ({"pmm": ramp(1e-3)}, ramp_grid()),
        # The paper's setting: PMM on the weight decay chosen above.
        "weight_decay_pmm": (
            {"weight_decay": 1e-4, "pmm": ramp(1e-3)},
            ramp_grid(inherit=("weight_decay",)),
        ),
        "label_smoothing": (
            _objective("label_smoothing", epsilon=0.1),
            _objective_grid("label_smoothing", "epsilon"),
        ),
        "confidence_penalty": (
            _objective("confidence_penalty", beta=0.1),
            _objective_grid("confidence_penalty", "beta"),
        ),
        "logit_penalty": (
            _objective("logit_penalty", beta=1e-3),
            _objective_grid("logit_penalty", "beta"),
        ),
        "logit_norm": (_objective("logit_norm", tau=0.04), _objective_grid("logit_norm", "tau")),
        "am_softmax": (
            _objective("am_softmax", scale=30.0, margin=0.2),
            _objective_grid("am_softmax", "margin"),
        ),
        "large_margin": (
            _objective("large_margin", gamma=1.0),
            _objective_grid("large_margin", "gamma"),
        ),
        "multiclass_hinge": (_objective("multiclass_hinge"), None),
        # Issue #20: PMM at every marked layer and the head, and the alpha without a sweep.
        "pmm_layers": ({"pmm": ramp(1e-3, layers=(*points, "head"))}, ramp_grid()),
        "pmm_auto": ({"pmm": auto_alpha()}, None),
    }
    if not dropout:
        del m["dropout"]
    return {k: v[0] for k, v in m.items()}, {k: v[1] for k, v in m.items() if v[1]}


# The noisy-label tasks' grids: two more values at the strong end of every grid (eight
# values for every tuned method). With the clean tasks' six values, 7 of the 11 tuned
# methods chose the strongest value at 20 % noise and 6 at 40 % (validation), and one
# value beyond still raised validation accuracy for four rivals at 40 % (label
# smoothing, the confidence and logit penalties, LogitNorm): a six-value grid would
# have understated them (README "How PMM compares").
NOISY_EXTRA = {
    "weight_decay": (1e-2, 3e-2),
    "dropout": (0.7, 0.8),
    "pmm": (1e-2, 3e-2),
    "weight_decay_pmm": (1e-2, 3e-2),
    "label_smoothing": (0.5, 0.7),
    "confidence_penalty": (10.0, 30.0),
    "logit_penalty": (0.1, 0.3),
    "logit_norm": (0.32, 0.64),
    "am_softmax": (0.6, 0.7),
    "large_margin": (30.0, 100.0),
    "pmm_layers": (1e-2, 3e-2),
}


def _mnist1d(noise: float) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = "study_mnist1d" + (f"_noise{round(100 * noise)}" if noise else "")
    c.dataset_kwargs = ml_collections.ConfigDict(
        {"validation_size": 500, "label_noise": noise, "label_noise_seed": 0}
    )
    c.num_train_steps = 3000  # half the main job's: the study trains ~150 runs per task
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.tsne = False
    return c


def _digits() -> ml_collections.ConfigDict:
    c = base_config()
    c.name = "study_digits"
    c.dataset = "digits"
    c.dataset_kwargs = ml_collections.ConfigDict({"validation_size": 288})
    c.model = "mlp"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (100, 100), "dropout_rate": 0.0})
    c.batch_size = 50
    c.learning_rate = 1e-3
    c.num_train_steps = 2000  # 87 epochs of the 1,150 training images
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 1000
    c.tsne = False
    return c


def _cifar10() -> ml_collections.ConfigDict:
    c = _vision.vision_config(
        name="study_cifar10", dataset="cifar10", model="resnet_cifar", model_kwargs={"depth": 20}
    )
    c.seeds = tuple(range(10))
    c.runs_mode = "per_method"
    return c


_POINTS = {
    "mnist1d": ("block1", "block2", "block3"),
    "digits": ("hidden1",),
    "cifar10": ("stage1", "stage2", "stage3"),
}


def get_config(variant: str = "mnist1d") -> ml_collections.ConfigDict:
    """The study of task ``TASK`` (``variant = TASK[:local]``)."""
    task, rest = split_task(variant, TASKS, "study.py", rest="local")
    if task.startswith("mnist1d"):
        c = _mnist1d({"mnist1d": 0.0, "mnist1d_noise20": 0.2, "mnist1d_noise40": 0.4}[task])
    else:
        c = _digits() if task == "digits" else _cifar10()
    family = task.split("_")[0]
    overrides, grids = methods(_POINTS[family], dropout=family != "cifar10")
    if "noise" in task:
        for name, extra in NOISY_EXTRA.items():
            grids[name]["values"] = (*grids[name]["values"], *extra)
    c.methods = ml_collections.ConfigDict(overrides)
    c.method_order = tuple(overrides)
    c.paired_comparisons = tuple((m, "pmm") for m in overrides if m not in ("pmm", "baseline"))
    c.final_split = "test"
    c.eval_split = "validation"
    c.parallel_groups = 2  # two trainings at a time (grid values, final methods)
    c.study = ml_collections.ConfigDict({"tune_seeds": (0, 1, 2), "grids": grids})
    c.attack = ml_collections.ConfigDict(
        {"split": "test", "max_examples": 500, "steps": 10, "bisection_steps": 8}
    )
    if family == "cifar10":
        return apply_variant(c, rest, shared=("local",), local=_cifar_local)
    return apply_variant(c, rest, shared=(), own={"local": _local})


def _local(c) -> None:
    """Two tuning values per grid, two seeds, 20 steps of a narrow model (the tests)."""
    c.name += "_local"
    c.seeds = (0, 1)
    c.study.tune_seeds = (0,)
    c.num_train_steps = 20
    c.steps_per_call = 10
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 10
    if c.model == "cnn1d":
        c.model_kwargs.channels = 4
    else:
        c.model_kwargs.hidden = (16, 16)
    for grid in c.study.grids.values():
        grid["values"] = tuple(grid["values"][::3])[:2]
    c.attack.max_examples = 16
    c.attack.steps = 2
    c.attack.bisection_steps = 2
    c.method_order = tuple(c.method_order)


def _cifar_local(c) -> None:
    c.model_kwargs.depth = 8
    c.model_kwargs.width = 4
    c.seeds = (0, 1)
    c.study.tune_seeds = (0,)
    c.dataset_kwargs.validation_size = 8
    for grid in c.study.grids.values():
        grid["values"] = tuple(grid["values"][::3])[:2]
    c.attack.max_examples = 8
    c.attack.steps = 2
    c.attack.bisection_steps = 2
