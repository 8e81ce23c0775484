"""Table II: BERT-base fine-tuned on GLUE QNLI (accuracy); paper: baseline / PMM = 91.06 / 91.48.

    python -m experiments.train --workdir runs/glue_qnli --config experiments/configs/glue_qnli.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_qnli_baseline --config experiments/configs/glue_qnli.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/qnli prepared once (`python -m experiments.data.glue --tasks qnli`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("qnli", num_classes=2, eval_split="validation")
    return apply_variant(c, variant)
