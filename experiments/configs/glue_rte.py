"""Table II: BERT-base fine-tuned on GLUE RTE (accuracy); paper: baseline / PMM = 68.23 / 69.67.

    python -m experiments.train --workdir runs/glue_rte --config experiments/configs/glue_rte.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_rte_baseline --config experiments/configs/glue_rte.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/rte prepared once (`python -m experiments.data.glue --tasks rte`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("rte", num_classes=2, eval_split="validation")
    return apply_variant(c, variant)
