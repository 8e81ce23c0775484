"""Table I row 5: MobileNet v1 on ImageNet (paper: baseline 71.17%, PMM 71.44%).

    python -m experiments.train --workdir runs/imagenet_mobilenet --config experiments/configs/imagenet_mobilenet.py
    python -m experiments.train --workdir runs/imagenet_mobilenet_baseline --config experiments/configs/imagenet_mobilenet.py:baseline

Needs ImageNet (ILSVRC 2012) prepared once with tfds from a manual download.
Recipe (Goyal et al. regime, as the paper): batch 256, 90 epochs, SGD momentum
0.9, lr 0.1 divided by 10 at epochs 30, 60, 80, L2 (4e-5) on the weight
kernels only, Inception-style random-resized crop + flip; PMM alpha constant 1e-5
(``penalty_reduction="official"``, the authors' arithmetic, inherited from _vision.py).
The validation split of ImageNet is the test set here (as usual); nothing is
selected on it (no best checkpoint).
"""

from experiments.configs._vision import apply_variant, vision_config


def get_config(variant: str = ""):
    c = vision_config(
        name="imagenet_mobilenet",
        dataset="imagenet2012",
        model="mobilenet_v1",
        model_kwargs={"width_multiplier": 1.0},
    )
    c.dataset_kwargs = {"data_dir": ""}
    c.batch_size = 256
    c.num_epochs = 90
    c.lr_boundaries = (30, 60, 80)
    c.weight_decay = 4e-5
    c.weight_decay_mask = "kernels"
    c.pmm.alpha_schedule = "constant"
    c.pmm.alpha_end = 1e-5
    c.eval_split = "validation"
    c.final_split = "validation"
    c.save_best = False
    c.eval_every_epochs = 5
    c.eval_batch_size = 500
    c.tsne = False  # 1000 classes; set True for Fig. 3-style plots of 5 classes
    c = apply_variant(c, variant)
    if variant == "local":
        c.model_kwargs.width_multiplier = 0.125
        c.dataset_kwargs = {
            "data_dir": "",
            "image_size": 32,
            "resize_size": 36,
            "raw_jpeg": False,
        }
    return c
