"""Pure train and eval steps: model -> (logits, features) -> PMM loss -> optax.

One step function serves every parallel form:

* single device, or ``jax.jit`` over a ``Mesh`` with the batch sharded
  ``P("data")`` and the state replicated: leave ``axis_name=None``; the batch is
  global, so the radius, the means and the BatchNorm statistics are global too;
* ``jax.pmap`` / ``shard_map`` with ``axis_name``: the radius is the collective
  max, the loss is each device's share (see ``pmm_jax.pmm_loss``), gradients,
  metrics and BatchNorm statistics are ``pmean``-ed; build BatchNorm models with
  ``bn_axis_name=axis_name`` so that the forward pass normalizes with global
  statistics too.

With the same global batch, all of them give the same new parameters (to float
rounding); ``tests/test_training_parallel.py`` checks it on 8 fake CPU devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

import pmm_jax
from pmm_jax._src.numerics import masked_min, mean_share
from pmm_jax.training.layer_points import POINTS, batch_statistics, rest_of_network
from pmm_jax.training.state import TrainState

Batch = dict[str, Any]
Preprocess = Callable[[jax.Array, Batch, bool], Batch]


def _identity_preprocess(rng, batch, train):
    del rng, train
    return batch


def step_rng(state: TrainState, axis_name=None) -> jax.Array:
    """The step's PRNG key: the state's key, folded with the step (and device index)."""
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    return rng


def _apply(state, params, batch_stats, x, *, train, rng=None, points=False):
    """Runs the model; returns ``(logits, pre_logits, new_batch_stats, layer features)``
    (the features sown by :func:`layer_point` calls when ``points``, else ``{}``)."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    kwargs = {}
    if rng is not None:
        kwargs["rngs"] = {"dropout": rng}
    new_stats, sown = batch_stats, {}
    mutable = (["batch_stats"] if train and batch_stats else []) + ([POINTS] if points else [])
    if mutable:
        out, updates = state.apply_fn(variables, x, train=train, mutable=mutable, **kwargs)
        new_stats = updates.get("batch_stats", batch_stats)
        sown = updates.get(POINTS, {})
    else:
        out = state.apply_fn(variables, x, train=train, **kwargs)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)) or (
        "pre_logits" not in out[1]
    ):
        raise TypeError(
            "The model must return (logits, aux) with aux['pre_logits'] = the head's input; "
            "wrap models that return plain logits with pmm_jax.training.with_pre_logits."
        )
    logits, aux = out
    return logits, aux["pre_logits"], new_stats, sown


HEAD = "head"  # in ``pmm_layers``: the classifier head's input, ``aux["pre_logits"]``


def _layer_weights(pmm_layers) -> tuple[tuple[str, float], ...] | None:
    """``pmm_layers`` as ``((name, weight), ...)``; None for the head alone (pmm_loss)."""
    if pmm_layers is None:
        return None
    out = []
    for item in pmm_layers:
        name, weight = (item, 1.0) if isinstance(item, str) else item
        if not isinstance(name, str) or not (float(weight) >= 0.0):
            raise ValueError(
                "`pmm_layers` must hold layer names or (name, weight >= 0) pairs, e.g. "
                f"('stage2', ('head', 1.0)); got {pmm_layers!r}."
            )
        out.append((name, float(weight)))
    if not out:
        raise ValueError("`pmm_layers` names no layer; pass None for the head alone.")
    if out == [(HEAD, 1.0)]:
        return None  # exactly pmm_loss
    return tuple(out)


def _with_head(base_loss, uses_head: bool, params, head, feats):
    """``base_loss`` as ``(logits, labels) -> [B]`` (given the head when it takes it)."""
    if not uses_head:
        return base_loss
    kernel, bias = pmm_jax.find_head(params, head)
    return functools.partial(base_loss, features=feats, kernel=kernel, bias=bias)


def make_train_step(
    *,
    alpha: float | Callable | None,
    base_loss: Callable = optax.losses.softmax_cross_entropy_with_integer_labels,
    penalty_reduction: str = "mean",
    stop_radius_gradient: bool = False,
    head: str | Sequence[str] = "head",
    axis_name: str | None = None,
    preprocess: Preprocess | None = None,
    margin_metrics: bool = True,
    base_loss_uses_head: bool = False,
    pmm_layers: Sequence[str | tuple[str, float]] | None = None,
    bn_momentum: float = 0.9,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds a pure ``(state, batch) -> (state, metrics)`` training step.

    The step: ``preprocess`` (on device, e.g. augmentation) -> model apply
    (train mode: dropout rng per step and per device, BatchNorm statistics
    updated) -> ``(logits, aux["pre_logits"])`` -> ``base_loss + alpha(step) *
    PMM`` (:func:`pmm_jax.pmm_loss`) -> gradients -> optax update. A step with
    non-finite gradients leaves params and BatchNorm statistics unchanged
    (``optax.apply_if_finite`` in the state's optimizer) and is counted.

    Jit it yourself (``jax.jit(step, donate_argnums=0)``), or use
    :func:`pmm_jax.training.jit_sharded` / :func:`pmm_jax.training.pmap_step`.

    Args:
      alpha: PMM weight: a float, an optax schedule of the step, or ``None`` for
        the base loss alone (no penalty is computed: a true baseline).
      base_loss: per-example ``(logits, labels) -> [B]`` (cross-entropy default;
        ``optax.losses.multiclass_hinge_loss`` for the hinge).
      penalty_reduction: ``"mean"`` (default), ``"official"`` (the authors' code,
        the scale of the paper's alphas) or ``"sum"``; see :func:`pmm_jax.pmm_loss`.
      stop_radius_gradient: treat the radius as a constant.
      head: path of the classifier head in ``params``.
      axis_name: the mapped axis under ``pmap``/``shard_map``; ``None`` otherwise.
      preprocess: ``(rng, batch, train) -> batch`` run inside the step.
      margin_metrics: also report radius and normalized pairwise margins (cheap;
        computed without gradient). Turn off for benchmarking the bare loss.
      base_loss_uses_head: ``base_loss`` is called as ``base_loss(logits, labels, *,
        features, kernel, bias)`` with the head's input and parameters (losses on
        normalized features and class vectors, e.g. AM-softmax).
      pmm_layers: where PMM applies, with weights: layer names or ``(name, weight)``
        pairs; ``"head"`` is the classifier head (the default, ``None``: the head alone,
        :func:`pmm_jax.pmm_loss`); other names are layers the model marks with
        :func:`pmm_jax.training.layer_point`. Then the objective is
        :func:`pmm_jax.layer_pmm_loss` over those layers, each layer's ``fn`` the rest of
        the network in inference mode with this batch's BatchNorm statistics held
        constant (no dropout in that pass).
      bn_momentum: the models' BatchNorm momentum, to recover the batch statistics
        from the running averages (only with hidden ``pmm_layers``).

    Returns:
      ``train_step(state, batch)`` where ``batch = {"x": ..., "y": int[B]}`` and
      optionally ``"mask": bool[B]``. Metrics (global over devices, float32):
      ``loss, base_risk, penalty, alpha, accuracy, radius, mean_margin,
      min_margin, nonfinite_steps``.
    """
    preprocess = preprocess or _identity_preprocess
    loss_fn = _make_loss_fn(
        alpha=alpha,
        base_loss=base_loss,
        base_loss_uses_head=base_loss_uses_head,
        layers=_layer_weights(pmm_layers) if alpha is not None else None,
        bn_momentum=bn_momentum,
        head=head,
        axis_name=axis_name,
        penalty_reduction=penalty_reduction,
        stop_radius_gradient=stop_radius_gradient,
    )

    def train_step(state: TrainState, batch: Batch):
        rng = step_rng(state, axis_name)
        pre_rng, dropout_rng = jax.random.split(rng)
        batch = preprocess(pre_rng, batch, True)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (parts, logits, feats, new_stats)), grads = grad_fn(
            state.params, state, batch, dropout_rng
        )
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
            new_stats = lax.pmean(new_stats, axis_name)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite
        new_stats = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_stats, state.batch_stats
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_stats,
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "base_risk": parts["base_risk"],
            "penalty": parts["penalty"],
            "alpha": parts["alpha"],
        }
        metrics.update(
            _classification_metrics(
                state,
                logits,
                feats,
                batch,
                parts,
                axis_name=axis_name,
                margins=margin_metrics,
                head=head,
            )
        )
        if axis_name is not None:  # shares -> global values (min_margin, radius: global)
            metrics = lax.pmean(metrics, axis_name)
        metrics["nonfinite_steps"] = opt_state.total_notfinite.astype(jnp.float32)
        return new_state, metrics

    # What the step was built for, so that pmap_step / jit_sharded can refuse a
    # mismatch (a pmap step without axis_name trains each replica on its own).
    train_step.axis_name = axis_name
    return train_step


def _make_loss_fn(*, alpha, base_loss, base_loss_uses_head, layers, bn_momentum, head, **options):
    """``(params, state, batch, rng) -> (loss, (parts, logits, features, new_stats))``:
    the base risk alone (``alpha=None``), plus PMM at the head (``pmm_loss``), or plus
    PMM at ``layers`` (``layer_pmm_loss``)."""
    use_pmm = alpha is not None
    hidden = bool(layers) and any(name != HEAD for name, _ in layers)
    axis_name = options["axis_name"]

    def loss_fn(params, state, batch, rng):
        logits, feats, new_stats, sown = _apply(
            state, params, state.batch_stats, batch["x"], train=True, rng=rng, points=hidden
        )
        labels = batch["y"]
        where = batch.get("mask")  # the batch's padding mask is the library's `where`
        base = _with_head(base_loss, base_loss_uses_head, params, head, feats)
        common = dict(alpha=alpha, step=state.step, base_loss=base, where=where, **options)
        if layers is not None:
            stats = new_stats
            if hidden and state.batch_stats:
                stats = batch_statistics(new_stats, state.batch_stats, bn_momentum)
            terms = [
                _layer_term(state, params, stats, batch["x"], name, weight, sown, feats, head)
                for name, weight in layers
            ]
            loss, parts = pmm_jax.layer_pmm_loss(logits, labels, terms, **common)
        elif use_pmm:
            kernel, _ = pmm_jax.find_head(params, head)
            loss, parts = pmm_jax.pmm_loss(logits, labels, feats, kernel, **common)
        else:
            valid = jnp.ones(labels.shape, bool) if where is None else where
            per_example = base(logits, labels).astype(jnp.float32)
            loss = mean_share(per_example, valid, axis_name)
            parts = {"base_risk": loss, "penalty": jnp.zeros(()), "alpha": jnp.zeros(())}
        return loss, (parts, logits, feats, new_stats)

    return loss_fn


def _layer_term(state, params, stats, x, name, weight, sown, feats, head):
    """``(fn, features, weight)`` of one layer of ``pmm_layers`` for layer_pmm_loss."""
    if name == HEAD:
        kernel, bias = pmm_jax.find_head(params, head)

        def head_fn(f):
            out = f.astype(jnp.float32) @ kernel.astype(jnp.float32)
            return out if bias is None else out + bias.astype(jnp.float32)

        return head_fn, feats, weight
    if name not in sown:
        raise ValueError(
            f"`pmm_layers` names layer {name!r}, which the model does not mark: it marks "
            f"{sorted(sown) or 'none'} (pmm_jax.training.layer_point(self, NAME, h) in its "
            "__call__), and 'head' is the classifier head."
        )
    h = sown[name]
    return rest_of_network(state.apply_fn, params, stats, x, name, h), h, weight


def _classification_metrics(state, logits, feats, batch, parts, *, axis_name, margins, head):
    """Accuracy and, if ``margins``, the radius and normalized pairwise margins.

    With PMM on, ``pmm_loss`` has computed the margin metrics already (``parts``);
    they are taken from there. The baseline (``alpha=None``) computes them here,
    without gradient.
    """
    labels = batch["y"]
    where = batch.get("mask")
    valid = jnp.ones(labels.shape, bool) if where is None else where
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    out = {"accuracy": mean_share(correct, valid, axis_name)}
    names = ("radius", "mean_margin", "min_margin")
    if not margins:
        out.update({name: jnp.zeros(()) for name in names})
    elif all(name in parts for name in names):
        out.update({name: parts[name] for name in names})
    else:
        logits, feats = lax.stop_gradient(logits), lax.stop_gradient(feats)
        kernel, _ = pmm_jax.find_head(state.params, head)
        radius = pmm_jax.feature_radius(feats, where=where, axis_name=axis_name)
        d = pmm_jax.pairwise_margins(logits, labels, kernel, radius=radius, where=where)
        out.update(
            radius=radius,
            mean_margin=mean_share(d, valid, axis_name),
            min_margin=masked_min(d, valid, axis_name),
        )
    return out


def make_eval_step(
    *,
    base_loss: Callable = optax.losses.softmax_cross_entropy_with_integer_labels,
    head: str | Sequence[str] = "head",
    axis_name: str | None = None,
    preprocess: Preprocess | None = None,
    base_loss_uses_head: bool = False,
    scores: Callable | None = None,
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """Builds ``(state, batch) -> per-example outputs`` for evaluation.

    Padded rows (``batch["mask"] == False``) are excluded from the radius and
    reported with ``mask=False`` so that the caller drops them. The radius used
    to normalize margins is the radius of this (global) eval batch.

    Args:
      base_loss, head, axis_name, preprocess, base_loss_uses_head: as
        :func:`make_train_step`.
      scores: optional ``(logits, *, features, kernel, bias) -> float[B, k]``, the
        scores the model predicts with when they are not the head's logits (e.g.
        AM-softmax's scaled cosines); ``pred`` and ``correct`` use them.

    Returns:
      ``eval_step(state, batch)`` returning a dict of per-example arrays:
      ``loss``, ``correct``, ``margin`` (pairwise margin normalized by this
      batch's radius), ``raw_margin`` and ``feature_norm`` (to normalize by the
      radius of a whole split instead), ``pred``, ``label``, ``mask``, and
      ``pre_logits`` (for embeddings / t-SNE); under ``pmap`` each device returns
      its rows.
    """
    preprocess = preprocess or _identity_preprocess

    def eval_step(state: TrainState, batch: Batch):
        batch = preprocess(jax.random.PRNGKey(0), batch, False)
        logits, feats, _, _ = _apply(
            state, state.params, state.batch_stats, batch["x"], train=False
        )
        labels = batch["y"]
        mask = batch.get("mask")
        if mask is None:
            mask = jnp.ones(labels.shape, bool)
        kernel, bias = pmm_jax.find_head(state.params, head)
        radius = pmm_jax.feature_radius(feats, where=mask, axis_name=axis_name)
        raw = pmm_jax.pairwise_margins(logits, labels, kernel, where=mask)
        base = _with_head(base_loss, base_loss_uses_head, state.params, head, feats)
        predicted = logits
        if scores is not None:
            predicted = scores(logits, features=feats, kernel=kernel, bias=bias)
        return {
            "loss": jnp.where(mask, base(logits, labels).astype(jnp.float32), 0.0),
            "correct": jnp.where(mask, jnp.argmax(predicted, -1) == labels, False),
            "margin": jnp.where(radius > 0, raw / jnp.where(radius > 0, radius, 1.0), 0.0),
            "raw_margin": raw,
            "feature_norm": jnp.where(
                mask, jnp.linalg.norm(feats.astype(jnp.float32), axis=-1), 0.0
            ),
            "pred": jnp.argmax(predicted, -1),
            "label": labels,
            "mask": mask,
            "pre_logits": feats.astype(jnp.float32),
        }

    eval_step.axis_name = axis_name
    return eval_step
