"""Table I row 4: VGG-16 (BatchNorm) + AutoAugment + Cutout on CIFAR-100 (paper: 73.93% / 74.19%).

    python -m experiments.train --workdir runs/cifar100_vgg16 --config experiments/configs/cifar100_vgg16.py
    python -m experiments.train --workdir runs/cifar100_vgg16_baseline --config experiments/configs/cifar100_vgg16.py:baseline

Same recipe as the WRN-28-10 row (the paper: "as above").
"""

from experiments.configs import cifar100_wrn28_10
from experiments.configs._vision import apply_variant


def get_config(variant: str = ""):
    c = cifar100_wrn28_10.get_config()
    c.name = "cifar100_vgg16"
    c.model = "vgg16_bn"
    c.model_kwargs = {"dtype": "float32"}
    c = apply_variant(c, variant)
    if variant == "local":
        c.model_kwargs.width_multiplier = 0.0625
    return c
