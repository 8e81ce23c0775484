"""Table II: BERT-base fine-tuned on GLUE QQP (F1); paper: baseline / PMM = 87.9 / 88.04.

    python -m experiments.train --workdir runs/glue_qqp --config experiments/configs/glue_qqp.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_qqp_baseline --config experiments/configs/glue_qqp.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/qqp prepared once (`python -m experiments.data.glue --tasks qqp`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("qqp", num_classes=2, eval_split="validation")
    return apply_variant(c, variant)
