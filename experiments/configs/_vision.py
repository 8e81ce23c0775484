"""Shared recipe of the paper's image experiments (Table I); not a config itself.

Each row config imports ``vision_config`` and overrides a few fields. Variants of
every row config: ``""`` (PMM, the paper's row), ``"baseline"`` (the twin with
PMM off, everything else equal) and ``"local"`` (tiny model, few steps, for the
tests and a first try on a laptop).

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

from experiments.configs import common

CIFAR_TRAIN = 45_000  # 50k training images minus the last 5k (validation)


def vision_config(
    *,
    name: str,
    dataset: str,
    model: str,
    model_kwargs: dict,
) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.name = name
    c.dataset = dataset
    c.dataset_kwargs = ml_collections.ConfigDict(
        {"data_dir": None, "validation_size": 5000, "crop_flip": True, "on_device": "auto"}
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


def _local(c) -> None:
    """The tiny run's settings of this family, on top of the shared ones."""
    c.dataset_kwargs.validation_size = 8
    c.tsne = False


def apply_variant(c, variant: str):
    """``""`` = PMM as in the paper, ``baseline`` = PMM off, ``local`` = tiny smoke run."""
    return common.apply_variant(c, variant, local=_local)
