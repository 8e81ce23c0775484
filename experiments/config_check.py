"""Checks a training config before anything trains: every field, every method, one error.

``validate(config)`` raises one :class:`ConfigError` listing every problem of
``config``: of its base fields and of every method's effective config (the base
with the method's overrides merged in, as ``experiments.trainer`` trains it),
each naming the field, its value and what is allowed. The names say where a
value comes from: ``pmm.alpha_end`` is the base config's field (the message
says which methods use it), ``methods.pmm.pmm.alpha_end`` the value that method
``pmm`` sets itself.

``experiments.trainer.train_and_evaluate`` calls it before reading any data, and
again with the dataset's size and splits (epoch-based intervals, split names)
before training. The command-line tools pass the ``--config.*`` overrides too:
an override of a field that a method sets itself to another value would be
shadowed by that method, so it is refused with the spelling that reaches the
method (:func:`shadowed_overrides`); :func:`check_argv` turns an unknown
``--config.*`` field into one line with the closest known fields.

The rules are one table, :data:`FIELDS` (what each field allows), plus the
checks that involve several fields (:func:`_cross_checks`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

import pmm_jax
from experiments import optim, runs
from experiments.data.registry import DATASET_NAMES, is_dataset_name
from experiments.evaluators import EVALUATOR_NAMES
from experiments.models import MODEL_NAMES

_MISSING = object()


class ConfigError(ValueError):
    """A config that must not be trained; ``problems`` lists what is wrong, one per field."""

    def __init__(self, problems: list[Problem], what: str = "the config"):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{what} has {n} problem{'s' * (n != 1)} (nothing was trained):"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


@dataclasses.dataclass(frozen=True)
class Problem:
    """One field's problem: its full name, its value and what is allowed instead."""

    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        value = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.field} = {value}: {self.allowed}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one field allows: ``allowed`` in words, ``ok(value)`` the test."""

    allowed: str
    ok: Callable[[Any], bool]
    required: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(choices: Iterable[str], *, required: bool = False) -> Rule:
    choices = tuple(choices)
    return Rule(
        "must be one of " + ", ".join(map(repr, choices)),
        lambda v: isinstance(v, str) and v in choices,
        required,
    )


def integer(lo: int, *, required: bool = False) -> Rule:
    return Rule(f"must be an integer >= {lo}", lambda v: _is_int(v) and v >= lo, required)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    required: bool = False,
) -> Rule:
    """A finite number within the bounds (closed unless ``*_open``)."""
    if lo is not None and hi is not None:
        words = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        words = f"{'<' if hi_open else '<='} {hi:g}"

    def ok(v):
        if not _is_number(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    return Rule(f"must be a finite number {words}", ok, required)


def tuple_of(item: Rule, what: str, *, nonempty: bool = False) -> Rule:
    """A tuple (or list) whose every item passes ``item``."""
    return Rule(
        f"must be a {'non-empty ' * nonempty}tuple of {what}",
        lambda v: isinstance(v, (tuple, list)) and (v or not nonempty) and all(map(item.ok, v)),
    )


# Seeds key the parameters, the dropout streams and the data order (numpy and JAX
# integers alike), held as int32: each in [0, 2**31).
SEED_LIMIT = 2**31


def _seeds_ok(v) -> bool:
    return (
        isinstance(v, (tuple, list))
        and bool(v)
        and all(_is_int(s) and 0 <= s < SEED_LIMIT for s in v)
        and len(set(v)) == len(v)
    )


def _pairs_ok(v) -> bool:
    return isinstance(v, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(n, str) for n in p)
        for p in v
    )


BOOL = Rule("must be True or False", lambda v: isinstance(v, bool))
TEXT = Rule("must be a string", lambda v: isinstance(v, str))
NAME = Rule("must be a non-empty string", lambda v: isinstance(v, str) and bool(v))
DICT = Rule("must be a dict", lambda v: isinstance(v, Mapping))
_POSITIVE = number(0, lo_open=True)
_NONNEGATIVE = number(0)
_RATE = number(0, 1, hi_open=True)

# The schedules experiments.sweep runs each of sweep.alphas with (its default: both).
SWEEP_ALPHA_SCHEDULES = ("linear", "constant")

# Every field a config may have, and what it allows. Fields only some configs have
# (save_best, pretrained, *_every_epochs, sweep, ...) are optional: checked where present.
FIELDS: dict[str, Rule] = {
    # What to train on, and what.
    "name": NAME,
    "dataset": Rule(
        "must be one of " + ", ".join(map(repr, DATASET_NAMES)), is_dataset_name, required=True
    ),
    "dataset_kwargs": DICT,  # the dataset's own arguments (experiments/data)
    "model": one_of(MODEL_NAMES, required=True),
    "model_kwargs": DICT,  # the model's own arguments (checked against its signature)
    "model_kwargs.dropout_rate": _RATE,
    "pretrained": DICT,
    "pretrained.kind": one_of(("hf_bert",)),
    "pretrained.path": TEXT,
    "pretrained.how_to_get": TEXT,
    "allow_random_init": BOOL,
    # Seeds, batches, length.
    "seeds": Rule(
        "must be a non-empty tuple of distinct integers in [0, 2**31), e.g. (0, 1, 2)",
        _seeds_ok,
        required=True,
    ),
    "batch_size": integer(1, required=True),
    "eval_batch_size": integer(1, required=True),
    "num_train_steps": integer(0),
    "num_epochs": _NONNEGATIVE,
    "num_devices": integer(0),
    # Optimizer and learning rate.
    "optimizer": one_of(optim.OPTIMIZERS, required=True),
    "learning_rate": number(0, lo_open=True, required=True),
    "lr_schedule": one_of(optim.LR_SCHEDULES),
    "lr_boundaries": tuple_of(_NONNEGATIVE, "epochs >= 0"),
    "lr_decay": _POSITIVE,
    "warmup_epochs": _NONNEGATIVE,
    "warmup_steps": integer(0),
    "momentum": number(0, 1, hi_open=True),
    "nesterov": BOOL,
    "weight_decay": _NONNEGATIVE,
    "weight_decay_mask": one_of(optim.WEIGHT_DECAY_MASKS),
    # PMM.
    "pmm": DICT,
    "pmm.alpha_schedule": one_of(optim.ALPHA_SCHEDULES),
    "pmm.alpha_init": number(0, required=True),
    "pmm.alpha_end": number(0, required=True),
    "pmm.base_loss": one_of(optim.BASE_LOSSES),
    "pmm.penalty_reduction": one_of(pmm_jax.PENALTY_REDUCTIONS, required=True),
    "pmm.stop_radius_gradient": Rule(BOOL.allowed, BOOL.ok, required=True),
    # Steps, logs, evaluation, checkpoints (experiments.trainer.intervals).
    "steps_per_call": integer(1, required=True),
    "epochs_per_call": _NONNEGATIVE,  # > 0: this many epochs per call instead
    # How the runs (methods x seeds) share a program (experiments/runs.py).
    "runs_mode": one_of(runs.RUNS_MODES),
    "log_every_steps": integer(1),
    "eval_every_steps": integer(1),
    "checkpoint_every_steps": integer(1),
    "log_every_epochs": _NONNEGATIVE,  # 0: use *_every_steps
    "eval_every_epochs": _NONNEGATIVE,
    "checkpoint_every_epochs": _NONNEGATIVE,
    "eval_split": Rule(NAME.allowed, NAME.ok, required=True),
    "final_split": NAME,
    "evaluate_all_splits": BOOL,
    "evaluators": tuple_of(one_of(EVALUATOR_NAMES), "names among " + ", ".join(EVALUATOR_NAMES)),
    "save_best": BOOL,
    "keep_checkpoints": integer(1, required=True),
    # A seed that skips more than this fraction of its steps (non-finite) fails the run.
    "max_nonfinite_fraction": number(0, 1),
    # The report.
    "tsne": BOOL,
    "tsne_points": integer(1),
    "paired_comparisons": Rule("must be a tuple of (method, method) pairs", _pairs_ok),
    # Methods: name -> overrides of the fields above.
    "methods": DICT,
    "method_order": tuple_of(NAME, "method names"),
    # experiments/sweep.py's grid (sweep_mnist1d.py, tweets_minilm.py:sweep); each optional.
    "sweep": DICT,
    "sweep.alphas": tuple_of(_POSITIVE, "alphas > 0"),
    "sweep.alpha_schedules": tuple_of(
        one_of(SWEEP_ALPHA_SCHEDULES), " or ".join(map(repr, SWEEP_ALPHA_SCHEDULES))
    ),
    "sweep.stop_radius_alphas": tuple_of(_POSITIVE, "alphas > 0"),
    "sweep.hinge_alphas": tuple_of(_POSITIVE, "alphas > 0"),
    "sweep.weight_decay_pmm_alphas": tuple_of(_POSITIVE, "alphas > 0"),
    "sweep.pmm_weight_decay": _NONNEGATIVE,
    "sweep.paper_schedule": BOOL,
    "sweep.weight_decays": tuple_of(_NONNEGATIVE, "weight decays >= 0"),
    "sweep.dropout_rates": tuple_of(_RATE, "rates in [0, 1)"),
}
# Dicts whose keys belong to a model or a dataset: anything goes below them
# (model_kwargs is checked against the model's signature instead).
OPEN = ("dataset_kwargs", "model_kwargs")
# Fields the run reads from the base config only: a method setting one would be ignored.
BASE_ONLY = (
    "name",
    "dataset",
    "dataset_kwargs",
    "pretrained",
    "allow_random_init",
    "tsne",
    "tsne_points",
    "paired_comparisons",
    "methods",
    "method_order",
    "sweep",
)
_CONTAINERS = {p.rsplit(".", 1)[0] for p in FIELDS if "." in p} - set(OPEN)


@dataclasses.dataclass(frozen=True)
class _Found:
    """A problem in one (effective) config, with the fields it depends on."""

    field: str
    value: Any
    allowed: str
    involves: tuple[str, ...]


def _get(d: Mapping, path: str, default=_MISSING):
    for key in path.split("."):
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def _leaves(d: Mapping, prefix: str = "", *, stop: Iterable[str] = ()) -> Iterable[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf; dicts at paths in ``stop`` count as leaves."""
    stop = set(stop)
    for key, value in d.items():
        path = prefix + str(key)
        if isinstance(value, Mapping) and value and path not in stop:
            yield from _leaves(value, path + ".", stop=stop)
        else:
            yield path, value


def _set_paths(overrides: Mapping) -> list[tuple[str, Any]]:
    """``(path, value)`` of every field a method's overrides set (an empty dict sets none)."""
    return [(p, v) for p, v in _leaves(overrides) if not (isinstance(v, Mapping) and not v)]


def _touches(a: str, b: str) -> bool:
    """Whether fields ``a`` and ``b`` are the same, or one contains the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def closest(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three of ``candidates`` that look like ``name`` (a typo of it)."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    tail = name.rsplit(".", 1)[-1]
    close += [c for c in candidates if c.rsplit(".", 1)[-1] == tail and c not in close]
    return close[:3]


def _to_dict(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def _check_fields(c: Mapping) -> list[_Found]:
    """Each field against :data:`FIELDS`, and fields that no rule knows."""
    found = []
    for path, rule in FIELDS.items():
        value = _get(c, path)
        if value is _MISSING:
            if rule.required:
                found.append(_Found(path, _MISSING, "is required", (path,)))
        elif not rule.ok(value):
            found.append(_Found(path, value, rule.allowed, (path,)))
    for path, value in _leaves(c, stop=set(OPEN) | set(FIELDS) - _CONTAINERS):
        if path in FIELDS or path in _CONTAINERS:
            continue
        close = closest(path, FIELDS)
        hint = f"did you mean {' or '.join(close)}?" if close else "see FIELDS in " + __name__
        found.append(_Found(path, value, f"unknown field; {hint}", (path,)))
    return found


def _model_arguments(model: str) -> set[str] | None:
    """The keyword arguments model ``model`` takes (None: any, or unknown model)."""
    from experiments import models

    if model not in models.MODEL_NAMES:
        return None
    module, name = models._REGISTRY[model]
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) - {"num_classes", "parent", "name"}


@dataclasses.dataclass(frozen=True)
class _Context:
    """What the checks may know beyond the config (None: not known yet)."""

    device_count: int | None
    num_train: int | None
    eval_splits: tuple[str, ...] | None


def _cross_checks(c: Mapping, ctx: _Context) -> list[_Found]:
    """Checks that involve several fields (each field passed its own rule)."""
    found = []
    ok = {path: rule.ok(_get(c, path)) for path, rule in FIELDS.items()}

    def add(field, allowed, *involves):
        found.append(_Found(field, _get(c, field), allowed, (field, *involves)))

    # Devices: the batches split evenly over the devices of the run.
    if ok["num_devices"] or _get(c, "num_devices") is _MISSING:
        requested = _get(c, "num_devices", 0)
        count = ctx.device_count
        if requested and count is not None and requested > count:
            add("num_devices", f"must be <= the {count} devices there are (0 = all of them)")
        devices = None if count is not None and requested > count else requested or count
        for field in ("batch_size", "eval_batch_size"):
            if devices and ok[field] and _get(c, field) % devices:
                v = _get(c, field)
                add(
                    field,
                    f"must be a multiple of the {devices} devices the run uses "
                    f"(num_devices={requested}{': all of them' if not requested else ''}), "
                    f"e.g. {(v // devices + 1) * devices}",
                    "num_devices",
                )

    # Steps: every interval and the run's length are multiples of steps_per_call.
    k = _get(c, "steps_per_call")
    per_call_epochs = _get(c, "epochs_per_call", 0)
    if ok["steps_per_call"] and ok["epochs_per_call"]:
        steps_per_epoch = None
        if ctx.num_train is not None and ok["batch_size"]:
            steps_per_epoch = max(1, ctx.num_train // _get(c, "batch_size"))
        if per_call_epochs:
            if steps_per_epoch is None:
                k = None  # known once the dataset's size is
            else:
                k = max(1, round(per_call_epochs * steps_per_epoch))
    if k is not None and ok["steps_per_call"] and ok["epochs_per_call"]:
        for what in ("log", "eval", "checkpoint"):
            epochs_field, steps_field = f"{what}_every_epochs", f"{what}_every_steps"
            epochs = _get(c, epochs_field, 0)
            if epochs and ok.get(epochs_field, True):
                if steps_per_epoch is not None:
                    every = round(epochs * steps_per_epoch)
                    if every < 1 or every % k:
                        add(
                            epochs_field,
                            f"is {every} steps ({steps_per_epoch} steps per epoch), which must "
                            f"be a positive multiple of steps_per_call={k} (set "
                            "steps_per_call=1 for epoch-based intervals)",
                            "steps_per_call",
                            "batch_size",
                        )
            elif _get(c, steps_field) is _MISSING:
                add(steps_field, f"is required (or a {epochs_field} > 0)", epochs_field)
            elif ok[steps_field] and _get(c, steps_field) % k:
                add(steps_field, f"must be a multiple of steps_per_call={k}", "steps_per_call")
        epochs = _get(c, "num_epochs", 0)
        if not epochs:
            steps = _get(c, "num_train_steps")
            if steps is _MISSING or (ok["num_train_steps"] and (steps < 1 or steps % k)):
                add(
                    "num_train_steps",
                    f"must be a positive multiple of steps_per_call={k} (or set num_epochs > 0)",
                    "steps_per_call",
                    "num_epochs",
                )
        elif ok["num_epochs"] and steps_per_epoch is not None:
            total = int(epochs * steps_per_epoch)
            if total < 1 or total % k:
                add(
                    "num_epochs",
                    f"gives {total} steps ({steps_per_epoch} steps per epoch), which must be a "
                    f"positive multiple of steps_per_call={k}",
                    "steps_per_call",
                    "batch_size",
                )

    # PMM on with a zero alpha would silently be PMM off.
    schedule = _get(c, "pmm.alpha_schedule", "none")
    if ok["pmm.alpha_schedule"] and schedule != "none" and _get(c, "pmm.alpha_end") == 0:
        add(
            "pmm.alpha_end",
            f"must be > 0 with pmm.alpha_schedule={schedule!r} (PMM would be off; "
            "set pmm.alpha_schedule='none' for that)",
            "pmm.alpha_schedule",
        )
    # A step schedule without boundaries would silently be a constant one.
    if _get(c, "lr_schedule", "constant") == "step" and not _get(c, "lr_boundaries", ()):
        add("lr_boundaries", "must name at least one epoch with lr_schedule='step'", "lr_schedule")
    if _get(c, "warmup_steps", 0) and _get(c, "warmup_epochs", 0):
        add("warmup_epochs", "must be 0 when warmup_steps > 0 (warmup_steps wins)", "warmup_steps")

    # The model's own arguments.
    kwargs = _get(c, "model_kwargs", {})
    known = _model_arguments(_get(c, "model")) if ok["model"] else None
    if known is not None and isinstance(kwargs, Mapping):
        for key in sorted(set(kwargs) - known):
            close = closest(key, known)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            add(
                f"model_kwargs.{key}",
                f"is not an argument of model {_get(c, 'model')!r} "
                f"(it takes {', '.join(sorted(known))}){hint}",
                "model",
            )

    # Split names, once the dataset says which it has.
    if ctx.eval_splits is not None:
        for field in ("eval_split", "final_split"):
            split = _get(c, field, "test")
            if split not in ctx.eval_splits:
                allowed = ", ".join(map(repr, ctx.eval_splits))
                add(field, f"must be a split of the dataset: one of {allowed}", "dataset_kwargs")
    return found


def _check_one(c: Mapping, ctx: _Context) -> list[_Found]:
    return _check_fields(c) + _cross_checks(c, ctx)


def _merge(base, overrides):
    from experiments.trainer import merge  # trainer imports this module

    return merge(base, overrides)


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
    ctx = _Context(device_count, num_train, None if eval_splits is None else tuple(eval_splits))
    full = _to_dict(config)
    if methods is None:
        methods = full.get("methods") or {}
    methods = {
        name: _to_dict(m) if isinstance(m, (Mapping, ml_collections.ConfigDict)) else m
        for name, m in _to_dict(methods).items()
    }
    order = full.get("method_order") or ()
    if FIELDS["method_order"].ok(order):  # the order they run in (trainer.expand_order)
        rest = sorted(n for n in methods if n not in order)
        methods = {name: methods[name] for name in [n for n in order if n in methods] + rest}
    problems: list[Problem] = []

    # The methods themselves.
    bad = {name for name, m in methods.items() if not isinstance(m, Mapping)}
    for name in sorted(bad):
        problems.append(
            Problem(f"methods.{name}", methods[name], "must be a dict of overrides, e.g. {}")
        )
    if FIELDS["method_order"].ok(order):
        for name in order:
            if name not in methods:
                close = closest(name, methods)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                problems.append(
                    Problem("method_order", tuple(order), f"{name!r} is not a method{hint}")
                )
    pairs = full.get("paired_comparisons") or ()
    missing = sorted({n for p in pairs for n in p if n not in methods}) if _pairs_ok(pairs) else []
    if methods and missing:
        verb = "is not a method" if len(missing) == 1 else "are not methods"
        problems.append(
            Problem(
                "paired_comparisons",
                pairs,
                f"{', '.join(map(repr, missing))} {verb} (drop those pairs, as --methods does)",
            )
        )
    set_by = {
        name: [path for path, _ in _set_paths(m)] for name, m in methods.items() if name not in bad
    }
    for name, paths in set_by.items():
        for path in paths:
            if path.split(".")[0] in BASE_ONLY:
                problems.append(
                    Problem(
                        f"methods.{name}.{path}",
                        _get(methods[name], path),
                        "a method cannot set this field (the run reads it from the base "
                        "config only); set it at the top level",
                    )
                )

    # The base config: its problems, with the methods that inherit them.
    base = dict(full, methods={}, method_order=())
    for f in _check_one(base, ctx):
        users = [
            name
            for name, paths in set_by.items()
            if not any(_touches(p, i) for p in paths for i in f.involves)
        ]
        note = ""
        if set_by:
            note = (
                f" (used by method{'s' * (len(users) > 1)} {', '.join(users)})"
                if users
                else " (no method uses this value: each sets its own)"
            )
        problems.append(Problem(f.field, f.value, f.allowed + note))

    # Each method: the problems that its own values cause.
    base_config = ml_collections.ConfigDict(base)
    for name, paths in set_by.items():
        try:
            effective = _to_dict(_merge(base_config, methods[name]))
        except (TypeError, ValueError) as e:  # ConfigDict refuses e.g. a str in a float field
            problems.append(Problem(f"methods.{name}", methods[name], f"cannot be merged: {e}"))
            continue
        for f in _check_one(effective, ctx):
            if any(_touches(p, i) for p in paths for i in f.involves):
                problems.append(Problem(f"methods.{name}.{f.field}", f.value, f.allowed))

    if overrides:
        problems += shadowed_overrides(methods, overrides, sweep=sweep)
    return _unique(problems)


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


def flag_value(value) -> str:
    """``value`` as it would be written after ``--config.FIELD=`` on a command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return repr(repr(tuple(value)))
    return str(value)


def shadowed_overrides(
    methods: Mapping[str, Any], overrides: Mapping[str, Any], *, sweep: bool = False
) -> list[Problem]:
    """Command-line overrides that a method would silently shadow (or that reach no method).

    An override of a base field (``--config.pmm.alpha_end=1e-3``) reaches every
    method that does not set that field; a method that sets it to another value
    would win, so that is refused, naming the spelling that reaches the method
    (``--config.methods.pmm.pmm.alpha_end=1e-3``). An override of a method's own
    field (``--config.methods.NAME....``) must name a method that will run.

    Args:
      methods: ``{name: overrides}`` of the methods that will run.
      overrides: ``{dotted path: value}`` from the command line.
      sweep: ``methods`` are the points of ``experiments/sweep.py``'s grid (set by
        ``config.sweep``, not by ``config.methods``).
    """
    problems = []
    for path, value in overrides.items():
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        if path.startswith("methods.") and not sweep:
            name = path.split(".")[1]
            if name not in methods:
                problems.append(
                    Problem(
                        f"--config.{path}",
                        value,
                        f"method {name!r} is not run (the methods that run: "
                        f"{', '.join(methods) or 'none'}; see --methods)",
                    )
                )
            continue
        leaves = list(_leaves(value, path + ".")) if isinstance(value, Mapping) else [(path, value)]
        for name, m in methods.items():
            if not isinstance(m, Mapping):
                continue
            for leaf, wanted in leaves:
                for set_path, have in _set_paths(m):
                    if _touches(set_path, leaf) and not (set_path == leaf and have == wanted):
                        flag = f"--config.{leaf}={flag_value(wanted)}"
                        if sweep:
                            fix = "change the grid (config.sweep) instead"
                        else:
                            fix = (
                                f"use --config.methods.{name}.{set_path}={flag_value(wanted)} "
                                f"to change it there (or --methods to leave {name!r} out)"
                            )
                        problems.append(
                            Problem(
                                f"methods.{name}.{set_path}",
                                have,
                                f"{'sweep point' if sweep else 'method'} {name!r} sets this "
                                f"itself, so {flag} would not reach it: {fix}",
                            )
                        )
    return problems


# --- The command line -----------------------------------------------------------------


def config_arguments(argv: list[str], default: str) -> tuple[str, list[str]]:
    """``(the --config value, the dotted paths of every --config.* override)`` in ``argv``."""
    config_arg, paths = default, []
    for i, arg in enumerate(argv[1:], 1):
        m = re.match(r"^--?config(?:=(.*))?$", arg)
        if m:
            config_arg = m.group(1) if m.group(1) is not None else (argv[i + 1 : i + 2] or [""])[0]
            continue
        m = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
        if m:
            paths.append(m.group(1))
    return config_arg, paths


def unknown_override(config, path: str, where: str) -> str | None:
    """One line saying why ``--config.PATH`` names no field of ``config``; None if it does."""
    c = _to_dict(config)
    keys = path.split(".")
    node = c
    for depth, key in enumerate(keys):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
            continue
        known = ".".join(keys[:depth])
        if known == "methods":
            close = closest(key, c.get("methods") or {})
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            names = ", ".join(c.get("methods") or {}) or "none (it is one run)"
            return f"--config.{path}: {where} has no method {key!r} (its methods: {names}){hint}"
        if depth >= 2 and keys[0] == "methods":
            name, field = keys[1], ".".join(keys[2:])
            if _get(c, field) is not _MISSING:
                return (
                    f"--config.{path}: method {name!r} does not set {field}, so it uses the base "
                    f"value: use --config.{field}=... (it reaches every method that does not set "
                    f"it; add --methods={name} to run only this one), or set it in the method "
                    f"in the config file"
                )
        candidates = [p for p, _ in _leaves(c)] + [p for p, v in _walk_dicts(c)]
        close = closest(path, candidates) or difflib.get_close_matches(
            path, sorted(set(candidates)), n=3, cutoff=0
        )
        return (
            f"--config.{path}: {where} has no field {path!r}; closest known fields: "
            + ", ".join(close)
        )
    return None


def _walk_dicts(d: Mapping, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, Mapping):
            yield prefix + key, value
            yield from _walk_dicts(value, prefix + key + ".")


def check_argv(argv: list[str], default_config: str) -> list[str]:
    """One line per ``--config.*`` flag in ``argv`` that names no field of the config.

    The config is loaded from the ``--config`` value (``FILE[:variant]``, or
    ``default_config``); ml_collections would otherwise fail with a bare
    ``AttributeError`` after several chained tracebacks. A missing file or an
    unknown variant is one line too.
    """
    config_arg, paths = config_arguments(argv, default_config)
    file, _, variant = config_arg.partition(":")
    if not os.path.isfile(file):
        return [f"--config={config_arg}: no such config file {file!r}"]
    from experiments.configs import load_config

    try:
        config = load_config(file, variant)
    except ValueError as e:  # the configs' "Unknown variant ..."
        return [f"--config={config_arg}: {e}"]
    lines = (unknown_override(config, path, config_arg) for path in paths)
    return [line for line in lines if line]
