"""What a field may hold: :class:`Rule` and the constructors the field list uses.

A rule is a test of one value (``ok``) with the words an error gives for it
(``allowed``): ``Problem("batch_size", 0, "must be an integer >= 1")``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one field allows: ``allowed`` in words, ``ok(value)`` the test."""

    allowed: str
    ok: Callable[[Any], bool]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(choices: Iterable[str]) -> Rule:
    choices = tuple(choices)
    return Rule(
        "must be one of " + ", ".join(map(repr, choices)),
        lambda v: isinstance(v, str) and v in choices,
    )


def integer(lo: int) -> Rule:
    return Rule(f"must be an integer >= {lo}", lambda v: is_int(v) and v >= lo)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Rule:
    """A finite number within the bounds (closed unless ``*_open``)."""
    if lo is not None and hi is not None:
        words = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        words = f"{'<' if hi_open else '<='} {hi:g}"

    def ok(v):
        if not is_number(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    return Rule(f"must be a finite number {words}", ok)


def tuple_of(item: Rule, what: str, *, nonempty: bool = False) -> Rule:
    """A tuple (or list) whose every item passes ``item``."""
    return Rule(
        f"must be a {'non-empty ' * nonempty}tuple of {what}",
        lambda v: isinstance(v, (tuple, list)) and (v or not nonempty) and all(map(item.ok, v)),
    )


def pairs_ok(v) -> bool:
    """A tuple of ``(name, name)`` pairs."""
    return isinstance(v, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(n, str) for n in p)
        for p in v
    )


# Seeds key the parameters, the dropout streams and the data order (numpy and JAX
# integers alike), held as int32: each in [0, 2**31).
SEED_LIMIT = 2**31


def seeds_ok(v) -> bool:
    return (
        isinstance(v, (tuple, list))
        and bool(v)
        and all(is_int(s) and 0 <= s < SEED_LIMIT for s in v)
        and len(set(v)) == len(v)
    )


BOOL = Rule("must be True or False", lambda v: isinstance(v, bool))
TEXT = Rule("must be a string", lambda v: isinstance(v, str))
NAME = Rule("must be a non-empty string", lambda v: isinstance(v, str) and bool(v))
DICT = Rule("must be a dict", lambda v: isinstance(v, Mapping))
POSITIVE = number(0, lo_open=True)
NONNEGATIVE = number(0)
RATE = number(0, 1, hi_open=True)
SEEDS = Rule(
    "must be a non-empty tuple of distinct integers in [0, 2**31), e.g. (0, 1, 2)", seeds_ok
)
PAIRS = Rule("must be a tuple of (method, method) pairs", pairs_ok)
