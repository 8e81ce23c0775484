"""Table II: BERT-base fine-tuned on a GLUE task, the task named by the variant.

    python -m experiments.train --workdir runs/glue_mrpc --config experiments/configs/glue.py:mrpc --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_mrpc_baseline --config experiments/configs/glue.py:mrpc:baseline --config.pretrained.path=/path/to/bert-base-uncased

The variant is ``TASK`` or ``TASK:VARIANT``: ``TASK`` one of ``TASKS`` (the
paper's, below), ``VARIANT`` one of ``""`` (PMM, the paper's row), ``"baseline"``
(PMM off), ``"local"`` (a few steps, for tests; give it a tiny checkpoint) and,
for MNLI, ``"mismatched"`` (evaluated on mismatched with alpha 1e-6, as the paper).

The paper (baseline / PMM): MNLI 84.5 / 84.70 (accuracy, the average of matched
and mismatched; mismatched with alpha 1e-6), QNLI 91.06 / 91.48, RTE 68.23 /
69.67, QQP F1 87.9 / 88.04, MRPC F1 90.68 / 91.43, SST-2 92.08 / 92.43.

Recipe, the paper's: Adam (as in pre-training: decoupled weight decay 0.01,
linear warm-up over the first 10% of the steps, then linear decay to 0),
learning rate 2e-5, 3 epochs, dropout 0.1, batch 32, sequences of 128 tokens;
PMM with a constant alpha = 1e-5 on the pooled [CLS] features (the head's
input), with ``penalty_reduction="official"`` (the authors' arithmetic, the
scale the paper's alpha belongs to).

Needs the task prepared once (``python -m experiments.data.glue --tasks mrpc``)
and a BERT checkpoint directory on disk (no hub access):
``--config.pretrained.path=/path/to/bert-base-uncased`` with ``config.json``,
``model.safetensors`` (or ``pytorch_model.bin``) and ``tokenizer.json``.
"""

import ml_collections

from experiments.config.fields import base_config
from experiments.configs.common import apply_variant, split_task
from experiments.data.glue import GLUE_TASKS

TASKS = tuple(GLUE_TASKS)  # mnli, qnli, rte, qqp, mrpc, sst2: the paper's Table II
LIST_VARIANTS = TASKS  # --list-configs: one line per task


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The config of ``variant`` = ``TASK[:VARIANT]``, e.g. ``"mrpc"``, ``"mnli:baseline"``."""
    task, rest = split_task(variant, TASKS, "glue.py")
    own = {"mismatched": _mismatched} if task == "mnli" else {}
    return apply_variant(glue_config(task), rest, local=_local, own=own)


def glue_config(task: str) -> ml_collections.ConfigDict:
    """The paper's recipe on GLUE task ``task``, evaluated on its first evaluation split."""
    c = base_config()
    c.name = f"glue_{task}"
    c.dataset = f"glue/{task}"
    c.dataset_kwargs = ml_collections.ConfigDict({"tokenizer": "", "max_len": 128, "data_dir": ""})
    c.model = "bert"
    c.model_kwargs = ml_collections.ConfigDict({"hf_config": "", "dtype": "float32"})
    c.pretrained = ml_collections.ConfigDict({"kind": "hf_bert", "path": ""})
    c.seeds = (0,)
    c.batch_size = 32
    c.num_epochs = 3
    c.optimizer = "adamw"
    c.learning_rate = 2e-5
    c.weight_decay = 0.01
    c.weight_decay_mask = "kernels"  # no decay on biases and LayerNorm scales
    c.lr_schedule = "linear_decay"
    c.warmup_epochs = 0.3  # 10% of 3 epochs
    # The paper's alpha in the convention it was tuned in (the authors' code):
    # mean CE + alpha * r^2 (mean_i ||w_y - w_m||)^2 (pmm_jax.pmm_loss "official").
    c.pmm.penalty_reduction = "official"
    c.pmm.alpha_schedule = "constant"
    c.pmm.alpha_end = 1e-5
    c.steps_per_call = 1
    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 1
    c.eval_split = GLUE_TASKS[task].eval_splits[0]  # MNLI: validation_matched
    c.final_split = c.eval_split
    c.evaluate_all_splits = True  # MNLI: matched and mismatched
    c.eval_batch_size = 128
    c.tsne = False
    return c


def _mismatched(c) -> None:
    """MNLI as the paper evaluates mismatched: alpha = 1e-6."""
    c.name += "_mismatched"
    c.pmm.alpha_end = 1e-6
    c.eval_split = c.final_split = "validation_mismatched"


def _local(c) -> None:
    """The tiny run's settings of this family, on top of the shared ones."""
    c.dataset_kwargs.max_len = 32
    c.dataset_kwargs.num_threads = 1
    c.warmup_epochs = 0
