"""Table II: BERT-base fine-tuned on GLUE MRPC (F1); paper: baseline / PMM = 90.68 / 91.43.

    python -m experiments.train --workdir runs/glue_mrpc --config experiments/configs/glue_mrpc.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_mrpc_baseline --config experiments/configs/glue_mrpc.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/mrpc prepared once (`python -m experiments.data.glue --tasks mrpc`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("mrpc", num_classes=2, eval_split="validation")
    return apply_variant(c, variant)
