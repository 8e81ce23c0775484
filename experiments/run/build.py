"""Building a method's run: its model, optimizer, seed-stacked state and programs.

:func:`build` is the public entry point that the loop, the sweep and the
benchmarks use: ``trainee = build(config, dataset, mesh, plan)`` gives one
method's :class:`Trainee` (its seeds as one program), and
``trainee.initial_state()`` their stacked state at step 0. What a config trains --
its objective (``pmm.base_loss``, or a rival of ``experiments/objectives.py``), PMM's
alpha and the layers it applies at -- is :func:`step_options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from jax import lax
from jax.sharding import Mesh

from experiments import evaluators, models, objectives, optim
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
      scores: the objective's prediction scores (``objectives.prediction_scores``),
        None when the model predicts with its logits.
    """

    train_steps: Callable
    eval_step: Callable
    train_step: Callable
    mesh: Mesh
    seeds: list[int]
    evaluators: tuple[str, ...]
    initial_state: Callable[[], training.TrainState]
    scores: Callable | None = None


def initial_state_fn(config, dataset: Dataset, mesh: Mesh, plan: Plan):
    """``() -> state``: ``config``'s seed-stacked train state at step 0 on ``mesh``."""
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

    return initial_state


def step_options(config, dataset: Dataset) -> dict:
    """The train-step options of ``config`` but alpha (``make_train_step``'s keywords):
    its objective, PMM's reduction and layers, the dataset's preprocessing."""
    objective = config.get("objective") or {"name": "base_loss"}
    name = objective.get("name", "base_loss")
    kwargs = dict(objective.get("kwargs") or {})
    layers = tuple(config.pmm.get("layers", ("head",)))
    weights = tuple(config.pmm.get("layer_weights", ())) or (1.0,) * len(layers)
    pmm_layers = (
        None
        if layers == ("head",) and weights == (1.0,)
        else tuple(zip(layers, weights, strict=True))
    )
    return dict(
        base_loss=optim.base_loss(config.pmm)
        if name == "base_loss"
        else objectives.get_objective(name, **kwargs),
        base_loss_uses_head=name != "base_loss",
        penalty_reduction=config.pmm.penalty_reduction,
        stop_radius_gradient=config.pmm.stop_radius_gradient,
        pmm_layers=pmm_layers,
        bn_momentum=config.model_kwargs.get("bn_momentum", 0.9),
        preprocess=dataset.preprocess,
    )


def build(
    config, dataset: Dataset, mesh: Mesh, plan: Plan, *, alpha_ratio: float | None = None
) -> Trainee:
    """The model, optimizer and programs of ``config``'s seeds on ``dataset``.

    Pretrained weights (``config.pretrained.path``) are loaded by the model's family
    (``experiments.models.load_pretrained``) into every seed's params.
    ``alpha_ratio``: the measured base risk / penalty ratio, for
    ``pmm.alpha_schedule="auto"`` (``experiments/run/calibrate.py``).
    """
    options = step_options(config, dataset)
    objective = config.get("objective") or {}
    scores = None
    if objective.get("name", "base_loss") != "base_loss":
        scores = objectives.prediction_scores(objective.name, **dict(objective.kwargs))
    train_step = training.make_train_step(
        alpha=optim.make_alpha(config.pmm, plan.steps_per_epoch, plan.total, ratio=alpha_ratio),
        **options,
    )
    eval_step = training.make_eval_step(
        base_loss=options["base_loss"],
        base_loss_uses_head=options["base_loss_uses_head"],
        scores=scores,
        preprocess=dataset.preprocess,
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
        seeds=[int(s) for s in config.seeds],
        evaluators=evaluators.select(config, dataset.extra.get("metrics", ())),
        initial_state=initial_state_fn(config, dataset, mesh, plan),
        scores=scores,
    )
