"""The self-calibrating alpha (``pmm.alpha_schedule="auto"``): its scale, measured.

Alpha is not scale-free: the penalty ``r^2 ||w_y - w_m||^2`` grows with the square of
the network's feature scale. ``"auto"`` measures that scale where training starts:
the ratio ``rho = sum base risk / sum penalty`` over the first
``pmm.calibration_steps`` training batches, evaluated at the initial parameters of
every seed (nothing is trained for it; the batches are the ones training begins
with), and alpha follows the paper's ramp ``alpha_end / 100 -> alpha_end`` in units of
``rho`` (``experiments/optim.make_alpha``). Both sums are global (every seed, every
device), so the ratio is one deterministic number per method; it is printed, recorded
in ``meta.json`` (a resumed run reads it back rather than measuring again) and in
``result.json`` (``extra["alpha_calibration"]``).
"""

from __future__ import annotations

import jax
import numpy as np

from experiments.config.plan import Plan
from experiments.data import feed
from experiments.data.base import Dataset
from experiments.run.build import initial_state_fn, step_options
from pmm_jax import training


def measure(config, dataset: Dataset, mesh, plan: Plan) -> dict:
    """``{"ratio", "steps", "base_risk", "penalty"}`` at ``config``'s initial parameters."""
    steps = int(config.pmm.get("calibration_steps", 100))
    seeds = [int(s) for s in config.seeds]
    step = training.make_train_step(alpha=0.0, **step_options(config, dataset))
    state = initial_state_fn(config, dataset, mesh, plan)()
    block = next(feed.train_blocks(dataset, seeds, config.batch_size, steps, mesh))

    def metrics_at_start(state, block):
        def one(batch):
            return jax.vmap(step)(state, batch)[1]

        return jax.lax.map(one, block)

    program = training.jit_sharded(metrics_at_start, mesh, batch_axis=2, donate=False)
    metrics = program(state, block)
    base = float(np.sum(training.gather_to_host(metrics["base_risk"])))
    penalty = float(np.sum(training.gather_to_host(metrics["penalty"])))
    if not (penalty > 0 and np.isfinite(base) and np.isfinite(penalty)):
        raise ValueError(
            f"alpha_schedule='auto' measured a base risk of {base} and a penalty of {penalty} "
            f"over the first {steps} steps: no finite, positive ratio to scale alpha by."
        )
    return {"ratio": base / penalty, "steps": steps, "base_risk": base, "penalty": penalty}
