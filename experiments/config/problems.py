"""What a bad config gets: one :class:`ConfigError` listing a :class:`Problem` per field."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

MISSING = object()  # a field's value when the config does not have it


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
        value = "(missing)" if self.value is MISSING else repr(self.value)
        return f"{self.field} = {value}: {self.allowed}"


def closest(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three of ``candidates`` that look like ``name`` (a typo of it)."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    tail = name.rsplit(".", 1)[-1]
    close += [c for c in candidates if c.rsplit(".", 1)[-1] == tail and c not in close]
    return close[:3]


def did_you_mean(name: str, candidates: Iterable[str], *, lead: str = "; ") -> str:
    """``"; did you mean a or b?"`` for the close ``candidates`` ("" if none)."""
    close = closest(name, candidates)
    return f"{lead}did you mean {' or '.join(close)}?" if close else ""


def get(d: Mapping, path: str, default=MISSING):
    """The value at dotted ``path`` of nested mappings (``default`` if absent)."""
    for key in path.split("."):
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def leaves(d: Mapping, prefix: str = "", *, stop: Iterable[str] = ()) -> Iterable[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf; dicts at paths in ``stop`` count as leaves."""
    stop = set(stop)
    for key, value in d.items():
        path = prefix + str(key)
        if isinstance(value, Mapping) and value and path not in stop:
            yield from leaves(value, path + ".", stop=stop)
        else:
            yield path, value
