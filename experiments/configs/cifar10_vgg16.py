"""Table I row 2: VGG-16 (BatchNorm) on CIFAR-10 (paper: baseline 93.19%, PMM 93.34%).

    python -m experiments.train --workdir runs/cifar10_vgg16 --config experiments/configs/cifar10_vgg16.py
    python -m experiments.train --workdir runs/cifar10_vgg16_baseline --config experiments/configs/cifar10_vgg16.py:baseline

Same recipe as the ResNet-44 row (the paper: "as above").
"""

from experiments.configs._vision import apply_variant, vision_config


def get_config(variant: str = ""):
    c = vision_config(
        name="cifar10_vgg16",
        dataset="cifar10",
        model="vgg16_bn",
        model_kwargs={},
    )
    c = apply_variant(c, variant)
    if variant == "local":
        c.model_kwargs.width_multiplier = 0.0625
    return c
