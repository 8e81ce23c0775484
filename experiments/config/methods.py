"""A config's methods: each a set of overrides of the base fields.

``config.methods`` maps a method's name to the fields it sets; its *effective*
config is the base with those merged in (:func:`merge`, :func:`expand_methods`),
the methods run in :func:`method_order`, ``--methods`` keeps some
(:func:`select_methods`), and a command-line override that a method would
silently shadow is refused (:func:`shadowed_overrides`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from experiments.config.problems import ConfigError, Problem, did_you_mean, leaves


def merge(base: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """``base`` with ``overrides`` (a nested dict) merged in, recursively."""
    out = copy.deepcopy(base)
    with out.unlocked():
        for key, value in dict(overrides).items():
            if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
                out.get(key), ml_collections.ConfigDict
            ):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def method_order(config: Mapping) -> list[str]:
    """The names of ``config``'s methods in the order they run: ``method_order``, then sorted."""
    methods = config.get("methods") or {}
    order = list(config.get("method_order") or ())
    return [n for n in order if n in methods] + sorted(n for n in methods if n not in order)


def expand_methods(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """``{method name: effective config}`` in run order; a config without methods is one run."""
    methods = config.get("methods") or {}
    base = copy.deepcopy(config)
    with base.unlocked():
        base.methods = ml_collections.ConfigDict()
        base.method_order = ()
    if not methods:
        return {config.get("name", "run"): base}
    return {name: merge(base, methods[name]) for name in method_order(config)}


def select_methods(config: ml_collections.ConfigDict, names) -> ml_collections.ConfigDict:
    """``config`` with only the methods ``names`` (``--methods=baseline,pmm``), in its order.

    Raises:
      ConfigError: a name that is not a method of ``config`` (or it has none).
    """
    methods = config.get("methods") or {}
    names = list(dict.fromkeys(names))
    order = method_order(config)
    problems = []
    if not methods:
        problems.append(
            Problem(
                "--methods",
                ",".join(names),
                f"config {config.get('name', '')!r} has no methods (it is one run); drop --methods",
            )
        )
    elif not names:
        problems.append(
            Problem("--methods", "", "names no method; its methods: " + ", ".join(order))
        )
    for name in names if methods else ():
        if name not in methods:
            hint = did_you_mean(name, methods, lead="")
            problems.append(
                Problem(
                    "--methods",
                    name,
                    f"not a method of this config; {hint + ' ' if hint else ''}its methods: "
                    + ", ".join(order),
                )
            )
    if problems:
        raise ConfigError(problems, what="--methods")
    out = copy.deepcopy(config)
    with out.unlocked():
        out.methods = ml_collections.ConfigDict({n: methods[n] for n in names})
        out.method_order = tuple(n for n in order if n in names)
        if out.get("paired_comparisons"):
            out.paired_comparisons = tuple(
                tuple(p) for p in out.paired_comparisons if set(p) <= set(names)
            )
    return out


def set_paths(overrides: Mapping) -> list[tuple[str, Any]]:
    """``(path, value)`` of every field a method's overrides set (an empty dict sets none)."""
    return [(p, v) for p, v in leaves(overrides) if not (isinstance(v, Mapping) and not v)]


def touches(a: str, b: str) -> bool:
    """Whether fields ``a`` and ``b`` are the same, or one contains the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


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
        pairs = list(leaves(value, path + ".")) if isinstance(value, Mapping) else [(path, value)]
        for name, m in methods.items():
            if isinstance(m, Mapping):
                problems += _shadowed_in(name, m, pairs, sweep=sweep)
    return problems


def _shadowed_in(name: str, method: Mapping, pairs: Iterable, *, sweep: bool) -> list[Problem]:
    """The overrides ``pairs`` (``(path, value)``) that method ``name`` sets otherwise."""
    found = []
    for leaf, wanted in pairs:
        for set_path, have in set_paths(method):
            if not touches(set_path, leaf) or (set_path == leaf and have == wanted):
                continue
            flag = f"--config.{leaf}={flag_value(wanted)}"
            if sweep:
                fix = "change the grid (config.sweep) instead"
            else:
                fix = (
                    f"use --config.methods.{name}.{set_path}={flag_value(wanted)} "
                    f"to change it there (or --methods to leave {name!r} out)"
                )
            found.append(
                Problem(
                    f"methods.{name}.{set_path}",
                    have,
                    f"{'sweep point' if sweep else 'method'} {name!r} sets this "
                    f"itself, so {flag} would not reach it: {fix}",
                )
            )
    return found
