"""What identifies a method's work: its config hash, and which methods share a loop.

A method's workdir records the config its checkpoints and result were made with
(``experiments.run.workdir``). :func:`config_hash` hashes
the fields that decide what a run computes -- all but those marked
``hashed=False`` in :data:`~experiments.config.fields.FIELDS`, and fields added
later while they hold their ``legacy`` value -- so that changing, say,
``max_nonfinite_fraction`` reads a finished method back, while another weight
decay is refused (:func:`check_same_config`). Methods share one program when
their :data:`~experiments.config.fields.LOOP_FIELDS` are equal (:func:`group_methods`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import ml_collections

from experiments.config.fields import LEGACY, LOOP_FIELDS, UNHASHED
from experiments.config.problems import MISSING, get


class ConfigChangedError(ValueError):
    """A method's workdir holds checkpoints or a result of a different config."""


def _plain(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def _drop(d: dict, path: str) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        d = d.get(key)
        if not isinstance(d, dict):
            return
    d.pop(leaf, None)


def hashed_fields(config: ml_collections.ConfigDict | Mapping) -> dict:
    """The fields that decide what a run computes, JSON-normalized (tuples -> lists)."""
    fields = _normalized(_plain(config))
    for path in UNHASHED:
        _drop(fields, path)
    for path, legacy in LEGACY.items():
        if get(fields, path) == _normalized(legacy):
            _drop(fields, path)
    return fields


def _normalized(value):
    """``value`` as JSON gives it back (tuples -> lists, keys sorted): a config and its
    ``config.json`` compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def config_hash(config: ml_collections.ConfigDict | Mapping) -> str:
    text = json.dumps(hashed_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_same_config(config, recorded: Mapping, *, name: str, where: str) -> None:
    """Refuses to resume a method's work that was done with another config.

    A method's workdir records the config its checkpoints and result were trained
    with (``recorded``). Resuming them under a changed config (say another weight
    decay, with the same parameter shapes) would continue -- or just re-evaluate --
    the old run and record it as the new one.

    Args:
      config: the method's config now.
      recorded: the config its work was done with.
      name: the method's name; where: its workdir (for the message).

    Raises:
      ConfigChangedError: naming the fields that differ.
    """
    old, new = _flatten(hashed_fields(recorded)), _flatten(hashed_fields(config))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k, MISSING) != new.get(k, MISSING))
    if not diff:
        return
    shown = "; ".join(
        f"{k}: {old.get(k, '<unset>')!r} then, {new.get(k, '<unset>')!r} now" for k in diff[:10]
    )
    more = f" (and {len(diff) - 10} more)" if len(diff) > 10 else ""
    raise ConfigChangedError(
        f"[{name}] {where} holds checkpoints or a result of another config ({shown}{more}); "
        "resuming them would record the old run as this one. Use another --workdir, or "
        f"delete {where} to train this method again from scratch."
    )


def loop_key(config) -> str:
    """Equal for methods that may share one program: their loop fields are equal."""
    loop = {f: get(_plain(config), f, None) for f in LOOP_FIELDS}
    return json.dumps(loop, sort_keys=True, default=str)


def group_methods(configs: Mapping[str, Mapping]) -> list[list[str]]:
    """The methods of ``configs`` (``{name: effective config}``, in run order) in groups
    that share a program: equal loop fields, ``runs_mode`` not ``"per_method"``. The
    groups keep the order of their first method; a method alone is a group."""
    groups: dict[str, list[str]] = {}
    for name, config in configs.items():
        per_method = config.get("runs_mode", "per_method") == "per_method"
        groups.setdefault("\0" + name if per_method else loop_key(config), []).append(name)
    return list(groups.values())
