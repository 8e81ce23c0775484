"""Named layers of a Flax model for PMM at hidden layers (:func:`pmm_jax.layer_pmm_loss`).

A model marks a layer's output in its top-level ``__call__`` with
``h = layer_point(self, "stage2", h)``. That line changes nothing in a normal
apply; the train step (``make_train_step(pmm_layers=...)``) uses it twice:

* the main forward pass runs with the ``pmm_points`` collection mutable, so the
  point *sows* ``h`` (the layer's features of this batch);
* the rest of the network as a function of the layer, ``fn(hh)``, is the model applied
  again with a ``pmm_shifts`` variable ``hh - stop_gradient(h)`` at that point, added
  to ``h`` there: ``fn(h) = logits``, and ``fn``'s VJP at ``h`` is the gradient of the
  logits with respect to the layer. That pass runs in inference mode (no dropout) with
  the main pass's batch statistics held as constants (recovered from the updated
  running averages), so that ``fn`` is per-example as
  :func:`pmm_jax.layer_pmm_penalty` requires.
"""

from __future__ import annotations

import jax
from jax import lax

POINTS = "pmm_points"  # the collection the points sow their features into
SHIFTS = "pmm_shifts"  # the collection of shifts the step adds at a point


def layer_point(module, name: str, h: jax.Array) -> jax.Array:
    """Marks ``h`` as layer ``name`` of ``module`` (call it in the top-level ``__call__``).

    Returns ``h``, plus ``variables[SHIFTS][name]`` when the caller passes one.
    """
    if not module.is_initializing():  # (init's variables stay params and statistics)
        module.sow(POINTS, name, h, init_fn=lambda: None, reduce_fn=lambda _, new: new)
    if module.has_variable(SHIFTS, name):
        h = h + module.get_variable(SHIFTS, name)
    return h


def batch_statistics(new_stats, old_stats, momentum: float):
    """The batch's mean and variance of each BatchNorm layer, from its running averages
    before (``old``) and after (``new = momentum old + (1 - momentum) batch``) a step."""
    return jax.tree.map(
        lambda new, old: (new - momentum * old) / (1.0 - momentum), new_stats, old_stats
    )


def rest_of_network(apply_fn, params, batch_stats, x, name: str, h: jax.Array):
    """``fn(hh) -> logits``: the model with layer ``name``'s output replaced by ``hh``,
    in inference mode with ``batch_stats`` held constant (``fn(h)`` is the logits)."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = lax.stop_gradient(batch_stats)
    anchor = lax.stop_gradient(h)

    def fn(hh):
        out = apply_fn({**variables, SHIFTS: {name: hh - anchor}}, x, train=False)
        return out[0]

    return fn
