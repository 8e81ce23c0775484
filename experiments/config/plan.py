"""How long a method trains and how often it logs, evaluates and saves: the only step
arithmetic.

A run is a number of *calls*, each ``per_call`` steps fused into one program
(``steps_per_call``, or ``epochs_per_call`` whole epochs). The run's length and
its log / evaluation / checkpoint intervals are counted in steps, from
``num_train_steps`` or ``num_epochs`` and ``*_every_steps`` or
``*_every_epochs`` (epochs win when > 0); each must be a positive multiple of
``per_call``, since the loop only stops between calls. Epoch-based values need
the training split's size (``steps_per_epoch = num_train // batch_size``): before
the dataset is read they are not known, and :func:`problems` checks what it can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

INTERVALS = ("log", "eval", "checkpoint")
MISSING = object()


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long one method trains, and how often it logs, evaluates and saves (in steps)."""

    total: int
    steps_per_epoch: int
    every: dict[str, int]  # "log", "eval", "checkpoint"
    per_call: int = 1  # steps fused into one call


@dataclasses.dataclass(frozen=True)
class PlanProblem:
    """A field whose value gives an impossible plan, and the fields it depends on."""

    field: str
    allowed: str
    involves: tuple[str, ...]


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return max(1, num_train // batch_size)


def per_call(config: Mapping, spe: int | None) -> int | None:
    """Steps per call: ``epochs_per_call`` epochs if > 0, else ``steps_per_call``
    (None: epoch-based and the epoch's length not known yet)."""
    epochs = config.get("epochs_per_call", 0) or 0
    if epochs > 0:
        return None if spe is None else max(1, round(epochs * spe))
    return int(config["steps_per_call"])


def total_steps(config: Mapping, spe: int | None) -> int | None:
    """The run's steps: ``num_epochs`` epochs if > 0, else ``num_train_steps``."""
    epochs = config.get("num_epochs", 0) or 0
    if epochs > 0:
        return None if spe is None else int(epochs * spe)
    return int(config["num_train_steps"])


def interval(config: Mapping, what: str, spe: int | None) -> int | None:
    """``what``'s interval in steps (``*_every_epochs`` wins if > 0)."""
    epochs = config.get(f"{what}_every_epochs", 0) or 0
    if epochs:
        return None if spe is None else round(epochs * spe)
    return int(config[f"{what}_every_steps"])


def plan_of(config: Mapping, num_train: int) -> Plan:
    """The plan of ``config`` on a training split of ``num_train`` examples.

    Raises:
      ValueError: an interval or the run's length is not a positive multiple of
        the steps per call (``experiments.config.check`` reports these per field
        before anything trains).
    """
    spe = steps_per_epoch(num_train, config["batch_size"])
    found = problems(config, spe)
    if found:
        raise ValueError("; ".join(f"{p.field} {p.allowed}" for p in found))
    every = {what: interval(config, what, spe) for what in INTERVALS}
    return Plan(total_steps(config, spe), spe, every, per_call(config, spe))


def problems(
    c: Mapping, spe: int | None, ok: Callable[[str], bool] = lambda field: True
) -> list[PlanProblem]:
    """What makes ``c``'s plan impossible, one problem per field.

    Args:
      c: the config (a dict or ``ConfigDict``).
      spe: steps per epoch, or None before the dataset's size is known (epoch-based
        values are then not checked).
      ok: whether a field passed its own rule (fields that did not are not used).
    """
    if not (ok("steps_per_call") and ok("epochs_per_call")):
        return []
    k = per_call(c, spe)
    if k is None:
        return []  # known once the dataset's size is
    found = []
    for what in INTERVALS:
        epochs_field, steps_field = f"{what}_every_epochs", f"{what}_every_steps"
        if c.get(epochs_field, 0) and ok(epochs_field):
            every = interval(c, what, spe)
            if every is not None and (every < 1 or every % k):
                found.append(
                    PlanProblem(
                        epochs_field,
                        f"is {every} steps ({spe} steps per epoch), which must be a positive "
                        f"multiple of steps_per_call={k} (set steps_per_call=1 for "
                        "epoch-based intervals)",
                        ("steps_per_call", "batch_size"),
                    )
                )
        elif c.get(steps_field, MISSING) is MISSING:
            found.append(
                PlanProblem(steps_field, f"is required (or a {epochs_field} > 0)", (epochs_field,))
            )
        elif ok(steps_field) and c[steps_field] % k:
            found.append(
                PlanProblem(
                    steps_field, f"must be a multiple of steps_per_call={k}", ("steps_per_call",)
                )
            )
    if not c.get("num_epochs", 0):
        steps = c.get("num_train_steps", MISSING)
        if steps is MISSING or (ok("num_train_steps") and (steps < 1 or steps % k)):
            found.append(
                PlanProblem(
                    "num_train_steps",
                    f"must be a positive multiple of steps_per_call={k} (or set num_epochs > 0)",
                    ("steps_per_call", "num_epochs"),
                )
            )
    elif ok("num_epochs") and spe is not None:
        total = total_steps(c, spe)
        if total < 1 or total % k:
            found.append(
                PlanProblem(
                    "num_epochs",
                    f"gives {total} steps ({spe} steps per epoch), which must be a positive "
                    f"multiple of steps_per_call={k}",
                    ("steps_per_call", "batch_size"),
                )
            )
    return found
