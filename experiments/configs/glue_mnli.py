"""Table II: BERT-base fine-tuned on GLUE MNLI (matched / mismatched accuracy); paper: baseline / PMM = 84.5 / 84.70 (average of matched and mismatched; mismatched with alpha 1e-6).

    python -m experiments.train --workdir runs/glue_mnli --config experiments/configs/glue_mnli.py --config.pretrained.path=/path/to/bert-base-uncased
    python -m experiments.train --workdir runs/glue_mnli_baseline --config experiments/configs/glue_mnli.py:baseline --config.pretrained.path=/path/to/bert-base-uncased

Needs glue/mnli prepared once (`python -m experiments.data.glue --tasks mnli`) and a
BERT checkpoint directory on disk; recipe in experiments/configs/_glue.py.
"""

from experiments.configs._glue import apply_variant, glue_config


def get_config(variant: str = ""):
    c = glue_config("mnli", num_classes=3, eval_split="validation_matched")
    if variant == "mismatched":  # the paper evaluates mismatched with alpha = 1e-6
        c.name += "_mismatched"
        c.pmm.alpha_end = 1e-6
        c.eval_split = c.final_split = "validation_mismatched"
        return c
    return apply_variant(c, variant)
