"""Shared recipe of the paper's image experiments (Table I); not a config itself.

Each row config imports ``vision_config`` and overrides a few fields.

A CIFAR row config trains, by default, the paired row: methods ``baseline``
(PMM off) and ``pmm`` (the paper's PMM), 5 seeds each, every run in one program
(``runs_mode="auto"``, ``experiments/run/forms.py``) on one stream of batches, so the
twins of a seed see the same batches in the same order; one call is one epoch.
Its variants: ``""`` (the paired row), ``"baseline"`` and ``"pmm"`` (one twin
alone, the same 5 seeds) and ``"local"`` (both methods, tiny model, few steps,
for the tests and a first try on a laptop). ImageNet (one run, as the paper)
offers ``""`` (PMM), ``"baseline"`` and ``"local"``.

Data: CIFAR is held whole on the device (``dataset_kwargs.on_device="auto"``,
~180 MB as uint8): each step's batch is gathered there by step number, and the
crop + flip, Cutout, AutoAugment and normalization run on the device inside the
step; ``--config.dataset_kwargs.on_device=False`` feeds the same batches, in the
same order, from the tfds + grain host pipeline (``experiments/data/feed.py``).

Precision: float32 compute (``model_kwargs.dtype="float32"``, the paper's; on
GPUs XLA's default matmul precision may use TF32) is the default.
``--config.model_kwargs.dtype=bfloat16`` opts into bf16 compute of the model's
body; the parameters, the gradients, the optimizer state and BatchNorm
statistics stay float32, and the head, the loss and the PMM penalty are computed
in float32 (``experiments/models/common.py``). ``tests/test_bf16.py`` bounds
what it changes in a short run.
"""

import ml_collections

from experiments.config.fields import base_config
from experiments.configs import common

CIFAR_TRAIN = 45_000  # 50k training images minus the last 5k (validation)


def vision_config(
    *,
    name: str,
    dataset: str,
    model: str,
    model_kwargs: dict,
) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = name
    c.dataset = dataset
    c.dataset_kwargs = ml_collections.ConfigDict(
        {"data_dir": "", "validation_size": 5000, "crop_flip": True, "on_device": "auto"}
    )
    c.model = model
    c.model_kwargs = ml_collections.ConfigDict(dict(model_kwargs, dtype="float32"))
    c.seeds = (0,)
    # CIFAR recipe of the paper (He et al. 2016 regime at batch 64, 200 epochs).
    c.batch_size = 64
    c.num_epochs = 200
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = False
    c.learning_rate = 0.1
    c.lr_schedule = "step"
    c.lr_boundaries = (100, 150)
    c.lr_decay = 0.1
    c.weight_decay = 1e-4
    # PMM: the official code's per-epoch linear ramp 1e-5 -> 1e-3 (0 in epoch 0),
    # in the convention those alphas were tuned in: the authors' arithmetic,
    # mean CE + alpha * r^2 (mean_i ||w_y - w_m||)^2 (pmm_jax.pmm_loss "official").
    c.pmm.update(common.PAPER_SCHEDULE)
    c.steps_per_call = 1  # epoch-based intervals below need not divide anything
    c.log_every_epochs = 0.25
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 2
    c.save_best = True  # best by validation accuracy, evaluated on test at the end
    c.eval_split = "validation"
    c.final_split = "test"
    c.eval_batch_size = 1000
    c.tsne = True
    return c


PAIRED_SEEDS = (0, 1, 2, 3, 4)
# The twins of the paired row: the row's config with PMM off, and as it is.
TWINS = {"baseline": {"pmm": {"alpha_schedule": "none"}}, "pmm": {}}


def paired_row(c) -> None:
    """Makes ``c`` (a CIFAR row) the paired row: baseline and PMM x 5 seeds in one program."""
    c.seeds = PAIRED_SEEDS
    c.methods = ml_collections.ConfigDict(TWINS)
    c.method_order = tuple(TWINS)
    c.runs_mode = "auto"
    c.epochs_per_call = 1.0  # whole epochs per call: the data is on the device
    c.log_every_epochs = 1


def _alone(twin: str):
    def edit(c) -> None:
        c.name += f"_{twin}"
        c.methods = ml_collections.ConfigDict()
        c.method_order = ()
        c.update(TWINS[twin])  # nested dicts update in place

    return edit


def _local(c) -> None:
    """The tiny run's settings of this family, on top of the shared ones."""
    c.dataset_kwargs.validation_size = 8
    c.tsne = False
    c.seeds = (0,)


def apply_variant(c, variant: str):
    """CIFAR: ``""`` = the paired row, ``baseline`` / ``pmm`` = one twin alone,
    ``local`` = tiny smoke run of both; ImageNet: ``""`` = PMM as in the paper,
    ``baseline`` = PMM off, ``local``."""
    if not c.dataset.startswith("cifar"):
        return common.apply_variant(c, variant, local=_local)
    paired_row(c)
    own = {"baseline": _alone("baseline"), "pmm": _alone("pmm")}
    return common.apply_variant(c, variant, shared=("local",), local=_local, own=own)
