"""pmm_jax: Pairwise Margin Maximization (Weinstein, Fine, Hel-Or) in JAX.

The public API. Implementations live in ``pmm_jax._src``; import from here.
"""

from pmm_jax._src.checks import validate_batch
from pmm_jax._src.layers import layer_pmm_loss, layer_pmm_penalty
from pmm_jax._src.losses import PENALTY_REDUCTIONS, pmm_loss
from pmm_jax._src.params import HeadNotFoundError, find_head, pmm_penalty_from_params
from pmm_jax._src.penalty import (
    competitor_classes,
    feature_radius,
    pairwise_margins,
    pmm_penalty,
)
from pmm_jax._src.schedules import (
    PAPER_ALPHA_RANGE,
    constant_alpha_schedule,
    epoch_linear_alpha_schedule,
    linear_alpha_schedule,
)

__version__ = "0.2.0"

# PENALTY_REDUCTIONS is public so that configs and CLIs can validate a reduction
# name without hard-coding the list.
__all__ = [
    "PAPER_ALPHA_RANGE",
    "PENALTY_REDUCTIONS",
    "HeadNotFoundError",
    "competitor_classes",
    "constant_alpha_schedule",
    "epoch_linear_alpha_schedule",
    "feature_radius",
    "find_head",
    "layer_pmm_loss",
    "layer_pmm_penalty",
    "linear_alpha_schedule",
    "pairwise_margins",
    "pmm_loss",
    "pmm_penalty",
    "pmm_penalty_from_params",
    "validate_batch",
]
