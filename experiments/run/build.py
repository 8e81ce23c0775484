"""Building a method's run: its model, optimizer, seed-stacked state and programs.

:func:`build` is the public entry point that the loop, the sweep and the
benchmarks use: ``trainee = build(config, dataset, mesh, plan)`` gives one
method's :class:`Trainee` (its seeds as one program), and
``trainee.initial_state()`` their stacked state at step 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from jax import lax
from jax.sharding import Mesh

from experiments import evaluators, models, optim
from experiments.config.plan import Plan
from experiments.data.base import Dataset, sample_input
from experiments.models import get_model
from experiments.run.forms import TRAIN_BATCH_AXIS
from pmm_jax import training


@dataclasses.dataclass(frozen=True)
class Trainee:
    """One method's seeds, trained together: their jitted programs.

    Attributes:
      train_steps: ``(state, batches [steps, seeds, batch, ...]) -> (state, metrics)``:
        ``steps`` seed-vmapped steps in one ``lax.scan`` (the state donated).
      eval_step: ``(state, batch [batch, ...]) -> per-example outputs [seeds, batch]``.
      train_step: the unjitted step of one run, ``(state, batch) -> (state, metrics)``
        (what ``experiments/run/forms.py`` combines with other methods' steps).
      mesh: the data-parallel mesh (``pmm_jax.training.make_mesh``).
      seeds: the seeds, in the order of the state's leading axis.
      evaluators: the evaluator names (``experiments/evaluators.py``).
      initial_state: ``() -> state``: the train state at step 0, every leaf stacked
        over seeds, replicated on ``mesh`` (pretrained weights loaded, if any).
    """

    train_steps: Callable
    eval_step: Callable
    train_step: Callable
    mesh: Mesh
    seeds: list[int]
    evaluators: tuple[str, ...]
    initial_state: Callable[[], training.TrainState]


def build(config, dataset: Dataset, mesh: Mesh, plan: Plan) -> Trainee:
    """The model, optimizer and programs of ``config``'s seeds on ``dataset``.

    Pretrained weights (``config.pretrained.path``) are loaded by the model's family
    (``experiments.models.load_pretrained``) into every seed's params.
    """
    seeds = [int(s) for s in config.seeds]
    model = get_model(config.model, num_classes=dataset.num_classes, **config.model_kwargs)
    tx = optim.make_optimizer(config, plan.steps_per_epoch, plan.total)

    def initial_state() -> training.TrainState:
        state = training.create_train_state(model, tx, sample_input(dataset.input_spec), seed=seeds)
        pretrained = config.get("pretrained")
        if pretrained and pretrained.get("path"):
            # The optimizer state does not depend on the initial values (Adam's
            # moments start at zero), so the weights can be swapped in after init.
            params = models.load_pretrained(
                config.model,
                state.params,
                pretrained.path,
                model=model,
                stacked=True,
                kind=pretrained.get("kind"),
            )
            state = state.replace(params=params)
        return training.replicate_on_mesh(state, mesh)

    train_step = training.make_train_step(
        alpha=optim.make_alpha(config.pmm, plan.steps_per_epoch, plan.total),
        base_loss=optim.base_loss(config.pmm),
        penalty_reduction=config.pmm.penalty_reduction,
        stop_radius_gradient=config.pmm.stop_radius_gradient,
        preprocess=dataset.preprocess,
    )
    eval_step = training.make_eval_step(
        base_loss=optim.base_loss(config.pmm), preprocess=dataset.preprocess
    )

    def train_steps(state, batches):
        return lax.scan(jax.vmap(train_step), state, batches)

    return Trainee(
        train_steps=training.jit_sharded(train_steps, mesh, batch_axis=TRAIN_BATCH_AXIS),
        eval_step=training.jit_sharded(
            jax.vmap(eval_step, in_axes=(0, None)), mesh, donate=False, out_batch_axis=1
        ),
        train_step=train_step,
        mesh=mesh,
        seeds=seeds,
        evaluators=evaluators.select(config, dataset.extra.get("metrics", ())),
        initial_state=initial_state,
    )
