"""Table I row 3: WRN-28-10 + AutoAugment + Cutout on CIFAR-100 (paper: 82.51% / 83.52%).

    python -m experiments.train --workdir runs/cifar100_wrn28_10 --config experiments/configs/cifar100_wrn28_10.py
    python -m experiments.train --workdir runs/cifar100_wrn28_10_baseline --config experiments/configs/cifar100_wrn28_10.py:baseline

Recipe (Zagoruyko & Komodakis, at the paper's batch 64): 200 epochs, SGD
Nesterov momentum 0.9, lr 0.1 multiplied by 0.2 at epochs 60, 120, 160, weight
decay 5e-4, crop + flip, AutoAugment (CIFAR-10 policy) and 8x8 Cutout; PMM alpha
ramps 1e-5 -> 1e-3 per epoch (``penalty_reduction="official"``, the authors'
arithmetic).
"""

from experiments.configs._vision import apply_variant, vision_config


def get_config(variant: str = ""):
    c = vision_config(
        name="cifar100_wrn28_10",
        dataset="cifar100",
        model="wrn",
        model_kwargs={"depth": 28, "widen_factor": 10, "dropout_rate": 0.0},
    )
    c.dataset_kwargs.autoaugment = True
    c.dataset_kwargs.cutout_size = 8
    c.nesterov = True
    c.lr_boundaries = (60, 120, 160)
    c.lr_decay = 0.2
    c.weight_decay = 5e-4
    c = apply_variant(c, variant)
    if variant == "local":
        c.model_kwargs.depth = 10
        c.model_kwargs.widen_factor = 1
    return c
