"""Checks a training config before anything trains: every field, every method, one error.

:func:`validate` raises one :class:`~experiments.config.problems.ConfigError`
listing every problem of a config: of its base fields and of every method's
effective config (the base with the method's overrides merged in), each naming
the field, its value and what is allowed. The names say where a value comes
from: ``pmm.alpha_end`` is the base config's field (the message says which
methods use it), ``methods.pmm.pmm.alpha_end`` the value that method ``pmm``
sets itself.

``experiments.run.job.train_and_evaluate`` calls it before reading any data,
and again with the dataset's size and splits (epoch-based intervals, split
names) before training. The command-line tools pass the ``--config.*``
overrides too: one that a method would shadow is refused
(:func:`~experiments.config.methods.shadowed_overrides`).

The rules of single fields are :data:`~experiments.config.fields.FIELDS`; the
checks here involve several fields (:func:`cross_checks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from experiments import models, objectives
from experiments.config import plan
from experiments.config.fields import BASE_ONLY, CONTAINERS, FIELDS, OPEN
from experiments.config.methods import merge, set_paths, shadowed_overrides, touches
from experiments.config.problems import (
    MISSING,
    ConfigError,
    Problem,
    did_you_mean,
    get,
    leaves,
)


@dataclasses.dataclass(frozen=True)
class _Found:
    """A problem in one (effective) config, with the fields it depends on."""

    field: str
    value: Any
    allowed: str
    involves: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Context:
    """What the checks may know beyond the config (None: not known yet)."""

    device_count: int | None
    num_train: int | None
    eval_splits: tuple[str, ...] | None


def _to_dict(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def check_fields(c: Mapping) -> list[_Found]:
    """Each field against :data:`FIELDS`, and fields that no rule knows."""
    found = []
    for path, field in FIELDS.items():
        value = get(c, path)
        if value is MISSING:
            if field.required:
                found.append(_Found(path, MISSING, "is required", (path,)))
        elif not field.rule.ok(value):
            found.append(_Found(path, value, field.rule.allowed, (path,)))
    for path, value in leaves(c, stop=set(OPEN) | set(FIELDS) - set(CONTAINERS)):
        if path in FIELDS or path in CONTAINERS:
            continue
        hint = did_you_mean(path, FIELDS, lead="") or "see FIELDS in experiments.config.fields"
        found.append(_Found(path, value, f"unknown field; {hint}", (path,)))
    return found


def cross_checks(c: Mapping, ctx: Context) -> list[_Found]:
    """Checks that involve several fields (each field passed its own rule)."""
    ok = {path: field.rule.ok(get(c, path)) for path, field in FIELDS.items()}
    found = _device_checks(c, ctx, ok)
    spe = None
    if ctx.num_train is not None and ok["batch_size"]:
        spe = plan.steps_per_epoch(ctx.num_train, get(c, "batch_size"))
    for p in plan.problems(c, spe, ok=lambda field: ok.get(field, True)):
        found.append(_Found(p.field, get(c, p.field), p.allowed, (p.field, *p.involves)))
    found += _value_checks(c, ok)
    found += _model_argument_checks(c, ok)
    found += _objective_checks(c, ok)
    found += _layer_checks(c, ok)
    if ctx.eval_splits is not None:  # split names, once the dataset says which it has
        for field in ("eval_split", "final_split"):
            if get(c, field, "test") not in ctx.eval_splits:
                allowed = ", ".join(map(repr, ctx.eval_splits))
                found.append(
                    _Found(
                        field,
                        get(c, field, "test"),
                        f"must be a split of the dataset: one of {allowed}",
                        (field, "dataset_kwargs"),
                    )
                )
    return found


def _device_checks(c: Mapping, ctx: Context, ok: dict) -> list[_Found]:
    """The batches split evenly over the devices of the run."""
    if not (ok["num_devices"] or get(c, "num_devices") is MISSING):
        return []
    found = []
    requested, count = get(c, "num_devices", 0), ctx.device_count
    if requested and count is not None and requested > count:
        found.append(
            _Found(
                "num_devices",
                requested,
                f"must be <= the {count} devices there are (0 = all of them)",
                ("num_devices",),
            )
        )
    devices = None if count is not None and requested > count else requested or count
    for field in ("batch_size", "eval_batch_size"):
        v = get(c, field)
        if devices and ok[field] and v % devices:
            found.append(
                _Found(
                    field,
                    v,
                    f"must be a multiple of the {devices} devices the run uses "
                    f"(num_devices={requested}{': all of them' if not requested else ''}), "
                    f"e.g. {(v // devices + 1) * devices}",
                    (field, "num_devices"),
                )
            )
    return found


def _value_checks(c: Mapping, ok: dict) -> list[_Found]:
    """Values that would silently mean something else."""
    found = []

    def add(field, allowed, *involves):
        found.append(_Found(field, get(c, field), allowed, (field, *involves)))

    # PMM on with a zero alpha would silently be PMM off.
    schedule = get(c, "pmm.alpha_schedule", "none")
    if ok["pmm.alpha_schedule"] and schedule != "none" and get(c, "pmm.alpha_end") == 0:
        add(
            "pmm.alpha_end",
            f"must be > 0 with pmm.alpha_schedule={schedule!r} (PMM would be off; "
            "set pmm.alpha_schedule='none' for that)",
            "pmm.alpha_schedule",
        )
    # A step schedule without boundaries would silently be a constant one.
    if get(c, "lr_schedule", "constant") == "step" and not get(c, "lr_boundaries", ()):
        add("lr_boundaries", "must name at least one epoch with lr_schedule='step'", "lr_schedule")
    if get(c, "warmup_steps", 0) and get(c, "warmup_epochs", 0):
        add("warmup_epochs", "must be 0 when warmup_steps > 0 (warmup_steps wins)", "warmup_steps")
    return found


def _model_argument_checks(c: Mapping, ok: dict) -> list[_Found]:
    """The model's own arguments (``model_kwargs``) against its signature."""
    kwargs = get(c, "model_kwargs", {})
    known = models.model_arguments(get(c, "model")) if ok["model"] else None
    if known is None or not isinstance(kwargs, Mapping):
        return []
    return [
        _Found(
            f"model_kwargs.{key}",
            kwargs[key],
            f"is not an argument of model {get(c, 'model')!r} "
            f"(it takes {', '.join(sorted(known))}){did_you_mean(key, known)}",
            (f"model_kwargs.{key}", "model"),
        )
        for key in sorted(set(kwargs) - known)
    ]


def _objective_checks(c: Mapping, ok: dict) -> list[_Found]:
    """A rival objective's hyperparameters, and no second base loss beside it."""
    name = get(c, "objective.name", "base_loss")
    if not ok["objective.name"] or name == "base_loss":
        return []
    found = []
    known = objectives.OBJECTIVES[name][1]
    kwargs = get(c, "objective.kwargs", {})
    for key in sorted(set(kwargs) - set(known)) if isinstance(kwargs, Mapping) else ():
        found.append(
            _Found(
                f"objective.kwargs.{key}",
                kwargs[key],
                f"is not a hyperparameter of objective {name!r} (it takes "
                f"{', '.join(known) or 'none'}){did_you_mean(key, known)}",
                (f"objective.kwargs.{key}", "objective.name"),
            )
        )
    if not found and isinstance(kwargs, Mapping):
        try:
            objectives.get_objective(name, **kwargs)
        except ValueError as e:
            found.append(_Found("objective.kwargs", dict(kwargs), str(e), ("objective",)))
    if get(c, "pmm.base_loss", "cross_entropy") != "cross_entropy":
        found.append(
            _Found(
                "pmm.base_loss",
                get(c, "pmm.base_loss"),
                f"must be 'cross_entropy' with objective.name={name!r} (the objective is "
                "the base risk; for the hinge use objective.name='multiclass_hinge')",
                ("pmm.base_loss", "objective.name"),
            )
        )
    return found


def _layer_checks(c: Mapping, ok: dict) -> list[_Found]:
    """``pmm.layers`` names the head or layers the model marks; weights match them."""
    layers = get(c, "pmm.layers", ("head",))
    if not (ok["pmm.layers"] and ok["model"]):
        return []
    offered = ("head", *models.layer_points(get(c, "model")))
    unknown = [name for name in layers if name not in offered]
    found = [
        _Found(
            "pmm.layers",
            tuple(layers),
            f"{name!r} is not a layer of model {get(c, 'model')!r}: it offers "
            f"{', '.join(map(repr, offered))}{did_you_mean(name, offered)}",
            ("pmm.layers", "model"),
        )
        for name in unknown
    ]
    if len(set(layers)) != len(layers):
        found.append(_Found("pmm.layers", tuple(layers), "names a layer twice", ("pmm.layers",)))
    weights = get(c, "pmm.layer_weights", ())
    if ok["pmm.layer_weights"] and weights and len(weights) != len(layers):
        found.append(
            _Found(
                "pmm.layer_weights",
                tuple(weights),
                f"must give one weight per layer of pmm.layers ({len(layers)}), or none (all 1)",
                ("pmm.layer_weights", "pmm.layers"),
            )
        )
    return found


def _check_one(c: Mapping, ctx: Context) -> list[_Found]:
    return check_fields(c) + cross_checks(c, ctx)


def check(
    config,
    *,
    methods: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sweep: bool = False,
    device_count: int | None = None,
    num_train: int | None = None,
    eval_splits: Iterable[str] | None = None,
) -> list[Problem]:
    """Every problem of ``config`` and of each method's effective config.

    Args:
      config: the config (a ``ConfigDict``), with or without ``methods``.
      methods: ``{name: overrides}`` to check instead of ``config.methods`` (the sweep's grid).
      overrides: the command line's ``--config.*`` overrides, ``{dotted path: value}``.
      sweep: ``methods`` are the points of ``experiments/sweep.py``'s grid.
      device_count: the devices there are; None: ``jax.device_count()``.
      num_train: the training split's size, once known (epoch-based intervals).
      eval_splits: the dataset's split names, once known.

    Returns:
      The problems, each naming its field: ``pmm.alpha_end`` for the base config,
      ``methods.NAME.pmm.alpha_end`` for a value that method ``NAME`` sets.
    """
    if device_count is None:
        import jax

        device_count = jax.device_count()
    ctx = Context(device_count, num_train, None if eval_splits is None else tuple(eval_splits))
    full = _to_dict(config)
    methods = _ordered_methods(full, full.get("methods") or {} if methods is None else methods)
    problems = _method_problems(full, methods)
    bad = {name for name, m in methods.items() if not isinstance(m, Mapping)}
    set_by = {
        name: [path for path, _ in set_paths(m)] for name, m in methods.items() if name not in bad
    }
    base = dict(full, methods={}, method_order=())
    problems += _base_problems(base, set_by, ctx)
    problems += _own_problems(base, methods, set_by, ctx)
    if overrides:
        problems += shadowed_overrides(methods, overrides, sweep=sweep)
    return _unique(problems)


def _ordered_methods(full: dict, methods) -> dict:
    """``methods`` as plain dicts, in the order they run."""
    methods = {
        name: _to_dict(m) if isinstance(m, (Mapping, ml_collections.ConfigDict)) else m
        for name, m in _to_dict(methods).items()
    }
    order = full.get("method_order") or ()
    if FIELDS["method_order"].rule.ok(order):
        rest = sorted(n for n in methods if n not in order)
        methods = {name: methods[name] for name in [n for n in order if n in methods] + rest}
    return methods


def _method_problems(full: dict, methods: dict) -> list[Problem]:
    """The methods themselves: dicts, named by ``method_order`` and ``paired_comparisons``,
    setting no base-only field."""
    problems = [
        Problem(f"methods.{name}", m, "must be a dict of overrides, e.g. {}")
        for name, m in sorted(methods.items())
        if not isinstance(m, Mapping)
    ]
    order = full.get("method_order") or ()
    if FIELDS["method_order"].rule.ok(order):
        listed = tuple(order)
        problems += [
            Problem("method_order", listed, f"{n!r} is not a method" + did_you_mean(n, methods))
            for n in listed
            if n not in methods
        ]
    pairs = full.get("paired_comparisons") or ()
    ok_pairs = FIELDS["paired_comparisons"].rule.ok(pairs)
    missing = sorted({n for p in pairs for n in p if n not in methods}) if ok_pairs else []
    if methods and missing:
        verb = "is not a method" if len(missing) == 1 else "are not methods"
        problems.append(
            Problem(
                "paired_comparisons",
                pairs,
                f"{', '.join(map(repr, missing))} {verb} (drop those pairs, as --methods does)",
            )
        )
    for name, m in methods.items():
        for path, value in set_paths(m) if isinstance(m, Mapping) else ():
            if path.split(".")[0] in BASE_ONLY:
                problems.append(
                    Problem(
                        f"methods.{name}.{path}",
                        value,
                        "a method cannot set this field (the run reads it from the base "
                        "config only); set it at the top level",
                    )
                )
    return problems


def _base_problems(base: dict, set_by: dict, ctx: Context) -> list[Problem]:
    """The base config's problems, with the methods that inherit them."""
    problems = []
    for f in _check_one(base, ctx):
        users = [
            name
            for name, paths in set_by.items()
            if not any(touches(p, i) for p in paths for i in f.involves)
        ]
        note = ""
        if set_by:
            note = (
                f" (used by method{'s' * (len(users) > 1)} {', '.join(users)})"
                if users
                else " (no method uses this value: each sets its own)"
            )
        problems.append(Problem(f.field, f.value, f.allowed + note))
    return problems


def _own_problems(base: dict, methods: dict, set_by: dict, ctx: Context) -> list[Problem]:
    """Each method's problems that its own values cause."""
    problems = []
    base_config = ml_collections.ConfigDict(base)
    for name, paths in set_by.items():
        try:
            effective = _to_dict(merge(base_config, methods[name]))
        except (TypeError, ValueError) as e:  # ConfigDict refuses e.g. a str in a float field
            problems.append(Problem(f"methods.{name}", methods[name], f"cannot be merged: {e}"))
            continue
        for f in _check_one(effective, ctx):
            if any(touches(p, i) for p in paths for i in f.involves):
                problems.append(Problem(f"methods.{name}.{f.field}", f.value, f.allowed))
    return problems


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = str(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def validate(config, **kwargs) -> None:
    """Raises one :class:`ConfigError` with every problem :func:`check` finds."""
    problems = check(config, **kwargs)
    if problems:
        raise ConfigError(problems)
