"""Table I row 1: ResNet-44 on CIFAR-10 (paper: baseline 93.22%, PMM 93.83%).

    python -m experiments.train --workdir runs/cifar10_resnet44 --config experiments/configs/cifar10_resnet44.py
    python -m experiments.train --workdir runs/cifar10_resnet44_baseline --config experiments/configs/cifar10_resnet44.py:baseline

Needs CIFAR-10 prepared once (see README "Preparing the datasets"). Recipe:
batch 64, 200 epochs, SGD momentum 0.9, lr 0.1 divided by 10 at epochs 100 and
150, weight decay 1e-4, crop + flip; the last 5k training images are the
validation set; PMM alpha ramps 1e-5 -> 1e-3 per epoch, with the authors'
arithmetic (``penalty_reduction="official"``): the paper's alphas unchanged.
"""

from experiments.configs._vision import apply_variant, vision_config


def get_config(variant: str = ""):
    c = vision_config(
        name="cifar10_resnet44",
        dataset="cifar10",
        model="resnet_cifar",
        model_kwargs={"depth": 44},
    )
    c = apply_variant(c, variant)
    if variant == "local":
        c.model_kwargs.depth = 8
        c.model_kwargs.width = 4
    return c
