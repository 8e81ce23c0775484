"""The command line's ``--config`` flags, checked before ml_collections reads them.

ml_collections fails on an unknown ``--config.FIELD`` with a bare
``AttributeError`` after several chained tracebacks; :func:`check_argv` turns
each into one line naming the closest known fields (or the spelling that reaches
a method), and a missing config file or unknown variant into one line too.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping

import ml_collections

from experiments.config.files import load_config
from experiments.config.problems import MISSING, closest, get, leaves


def _to_dict(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


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
            if get(c, field) is not MISSING:
                return (
                    f"--config.{path}: method {name!r} does not set {field}, so it uses the base "
                    f"value: use --config.{field}=... (it reaches every method that does not set "
                    f"it; add --methods={name} to run only this one), or set it in the method "
                    f"in the config file"
                )
        candidates = [p for p, _ in leaves(c)] + [p for p, v in _walk_dicts(c)]
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
    try:
        config = load_config(file, variant)
    except ValueError as e:  # the configs' "Unknown variant ..."
        return [f"--config={config_arg}: {e}"]
    lines = (unknown_override(config, path, config_arg) for path in paths)
    return [line for line in lines if line]
