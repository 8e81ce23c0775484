"""The MNIST-1D sweep that picks the default config's regularization strengths.

    python -m experiments.sweep --workdir runs/sweep_mnist1d

Variant ``layers``: PMM at every conv layer and the head (``pmm.layers``), its own
grid, run apart (``--workdir runs/sweep_mnist1d_layers``).

Selection is on a validation split: the last 500 of the 4000 training examples
(training uses the other 3500); the test set is never looked at. The grid is
``config.sweep`` (what each field runs: ``experiments/sweep.py``).
"""

import ml_collections

from experiments.config.fields import base_config
from experiments.configs.common import apply_variant
from experiments.configs.default import WEIGHT_DECAY, smoke_run


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = base_config()
    c.name = "sweep_mnist1d"
    c.dataset_kwargs.validation_size = 500
    c.seeds = (0, 1, 2)
    c.eval_split = "validation"
    c.final_split = "validation"
    c.tsne = False
    # PMM alphas in the library's default convention, penalty_reduction="mean"
    # (mean CE + alpha * mean_i R_i): a wide log grid around the ratio
    # base risk / penalty early in training (about 1e-3 here; README "Choosing alpha").
    grid = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    c.sweep = ml_collections.ConfigDict(
        {
            "alphas": grid,  # each as a linear ramp and as a constant (sweep.alpha_schedules)
            "hinge_alphas": grid,
            # PMM on top of weight decay (the paper's setting), at the weight decay
            # the main job uses (selected by this sweep's weight_decay family).
            "weight_decay_pmm_alphas": grid,
            "pmm_weight_decay": WEIGHT_DECAY,
            "paper_schedule": True,  # the paper's own ramp and reduction, one point
            "weight_decays": (1e-5, 1e-4, 1e-3, 1e-2),
            "dropout_rates": (0.1, 0.2, 0.3, 0.5, 0.7),
        }
    )
    return apply_variant(c, variant, shared=(), own={"local": _local, "layers": _layers})


def _layers(c) -> None:
    """PMM at every conv layer of the CNN and the head (issue #20), alone: the same grid,
    seeds and validation split as the sweep above (whose points it does not repeat)."""
    c.name += "_layers"
    grid = c.sweep.alphas
    c.sweep = ml_collections.ConfigDict(
        {"layer_alphas": grid, "pmm_layers": ("block1", "block2", "block3", "head")}
    )


def _local(c) -> None:
    """Two seeds, 20 steps of a narrow model, a few points of each family (the tests)."""
    smoke_run(c, seeds=(0, 1), steps=20, eval_every=10)
    c.sweep.alphas = (1e-4, 1e-1)
    c.sweep.hinge_alphas = (1e-4,)
    c.sweep.weight_decay_pmm_alphas = (1e-4,)
    c.sweep.weight_decays = (1e-4,)
    c.sweep.dropout_rates = (0.2,)
