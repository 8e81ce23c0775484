"""The variants every paper-row config offers; not a config itself.

``""`` (PMM, the paper's row), ``"baseline"`` (the twin with PMM off, everything
else equal) and ``"local"`` (two steps of a tiny run, for the tests).
"""

from collections.abc import Callable

import ml_collections


def apply_variant(
    c: ml_collections.ConfigDict,
    variant: str,
    local: Callable[[ml_collections.ConfigDict], None] | None = None,
) -> ml_collections.ConfigDict:
    """Applies ``variant`` to ``c``; ``local`` adds a family's own tiny-run settings."""
    if variant in ("", "pmm"):
        return c
    if variant == "baseline":
        c.name += "_baseline"
        c.pmm.alpha_schedule = "none"
        return c
    if variant == "local":
        c.name += "_local"
        c.num_epochs = 0
        c.num_train_steps = 2
        c.batch_size = 8
        c.eval_batch_size = 8
        c.eval_every_epochs = 0
        c.checkpoint_every_epochs = 0
        c.log_every_steps = 1
        c.eval_every_steps = 2
        c.checkpoint_every_steps = 2
        if local is not None:
            local(c)
        return c
    raise ValueError(f"Unknown variant {variant!r}: '', 'baseline' or 'local'.")
