"""Shared recipe of the paper's BERT experiments (Table II); not a config itself.

BERT-base fine-tuned on a GLUE task, the paper's recipe: Adam (as in
pre-training: decoupled weight decay 0.01, linear warm-up over the first 10% of
the steps, then linear decay to 0), learning rate 2e-5, 3 epochs, dropout 0.1,
batch 32, sequences of 128 tokens; PMM with a constant alpha = 1e-5 on the pooled
[CLS] features (the head's input), with ``penalty_reduction="official"`` (the
authors' arithmetic, the scale the paper's alpha belongs to).

Every task config has the variants ``""`` (PMM, the paper's row), ``"baseline"``
(PMM off) and ``"local"`` (a few steps, for tests; give it a tiny checkpoint).
The checkpoint is a directory on disk (no hub access):
``--config.pretrained.path=/path/to/bert-base-uncased`` with ``config.json``,
``model.safetensors`` (or ``pytorch_model.bin``) and ``tokenizer.json``.
"""

import ml_collections

from experiments.configs import _variants as variants
from experiments.configs.default import base_config


def glue_config(task: str, *, num_classes: int, eval_split: str = "validation"):
    c = base_config()
    c.name = f"glue_{task}"
    c.dataset = f"glue/{task}"
    c.num_classes = num_classes  # for --list-configs (BERT-base, no checkpoint needed)
    c.input_spec = {
        "x": {k: ((128,), "int32") for k in ("input_ids", "token_type_ids", "attention_mask")}
    }
    c.dataset_kwargs = ml_collections.ConfigDict(
        {"tokenizer": "", "max_len": 128, "data_dir": None}
    )
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
    c.eval_split = eval_split
    c.final_split = eval_split
    c.evaluate_all_splits = True  # MNLI: matched and mismatched
    c.eval_batch_size = 128
    c.tsne = False
    return c


def _local(c) -> None:
    """The tiny run's settings of this family, on top of the shared ones."""
    c.dataset_kwargs.max_len = 32
    c.dataset_kwargs.num_threads = 1
    c.input_spec = {
        "x": {k: ((32,), "int32") for k in ("input_ids", "token_type_ids", "attention_mask")}
    }
    c.warmup_epochs = 0


def apply_variant(c, variant: str):
    """``""`` = PMM as in the paper, ``baseline`` = PMM off, ``local`` = tiny smoke run."""
    return variants.apply_variant(c, variant, local=_local)
