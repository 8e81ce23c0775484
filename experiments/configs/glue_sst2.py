"""Table II: BERT-base fine-tuned on GLUE SST-2 (accuracy); paper: baseline / PMM = 92.08 / 92.43.

    python -m experiments.train --workdir runs/glue_sst2 --config experiments/configs/glue_sst2.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_sst2_baseline --config experiments/configs/glue_sst2.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/sst2 prepared once (`python -m experiments.data.glue --tasks sst2`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("sst2", num_classes=2, eval_split="validation")
    return apply_variant(c, variant)
