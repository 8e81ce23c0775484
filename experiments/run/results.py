"""What a method's run produced (:class:`MethodResult`, ``result.json``), and the
policy on steps skipped for non-finite gradients.

A method's result is written once it has trained and been evaluated, and read
back instead of training again when its config hash matches
(:func:`read_result`). Result files written by earlier versions are migrated on
reading (:meth:`MethodResult.from_json`).

Steps skipped for non-finite gradients are counted per seed
(``extra["nonfinite_steps"]``); a seed that skipped more than its config's
``max_nonfinite_fraction`` of the steps fails the run with a
:class:`NonFiniteStepsError` (:func:`check_nonfinite`), raised once everything is
written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

from experiments.config.fields import FIELDS
from experiments.run.workdir import RESULT

DEFAULT_MAX_NONFINITE_FRACTION = FIELDS["max_nonfinite_fraction"].default


@dataclasses.dataclass
class MethodResult:
    """What one method's run produced (per seed where it says so).

    ``final_accuracy``, ``final_loss`` and the margins are measured on
    ``final_split`` (``config.final_split``: the test split in the main job, the
    validation split in sweeps).
    """

    name: str
    seeds: list[int]
    final_split: str
    final_accuracy: list[float]
    final_loss: list[float]
    margin_mean: list[float]  # normalized pairwise margin on final_split, per seed
    margin_p10: list[float]
    curves: dict[str, list]  # {"step": [...], "<split>_accuracy": [[per seed] per eval]}
    wall_time_s: float
    steps: int
    config_hash: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # Names in result.json files written before the fields said what they hold.
    RENAMED: ClassVar[dict[str, str]] = {
        "test_accuracy": "final_accuracy",
        "test_loss": "final_loss",
    }

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MethodResult:
        """A result read back from ``result.json``, also one with the old field names
        (``test_accuracy``, ``test_loss``; ``final_split`` then from its config)."""
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old in data:
                data.setdefault(new, data.pop(old))
        if "final_split" not in data:
            config = (data.get("extra") or {}).get("config") or {}
            data["final_split"] = config.get("final_split", "test")
        return cls(**data)


class NonFiniteStepsError(RuntimeError):
    """Too many training steps were skipped for non-finite gradients (see
    ``max_nonfinite_fraction``). Raised after the results and checkpoints are written.

    Attributes:
      offenders: ``[(method, seed, skipped steps, total steps)]``.
    """

    def __init__(self, message: str, offenders: list[tuple[str, int, int, int]]):
        super().__init__(message)
        self.offenders = offenders


def nonfinite_offenders(result: MethodResult, limit: float) -> list[tuple[str, int, int, int]]:
    """``[(method, seed, skipped, steps)]`` for the seeds that skipped more than
    ``limit`` of their steps (none for results written before the count existed)."""
    counts = result.extra.get("nonfinite_steps") or []
    return [
        (result.name, int(seed), int(count), int(result.steps))
        for seed, count in zip(result.seeds, counts, strict=True)
        if count > limit * max(result.steps, 1)
    ]


def check_nonfinite(checks: list[tuple[MethodResult, float]], workdir: str) -> None:
    """Raises :class:`NonFiniteStepsError` naming every (method, seed) whose skipped
    steps exceed its ``max_nonfinite_fraction`` (``checks``: ``[(result, limit)]``)."""
    lines, offenders = [], []
    for result, limit in checks:
        for name, seed, count, steps in nonfinite_offenders(result, limit):
            offenders.append((name, seed, count, steps))
            lines.append(
                f"method {name!r}, seed {seed}: {count} of {steps} training steps "
                f"({100 * count / max(steps, 1):.1f}%) were skipped for non-finite gradients, "
                f"above `max_nonfinite_fraction`={limit:g}"
            )
    if not offenders:
        return
    raise NonFiniteStepsError(
        "Too many skipped training steps:\n  "
        + "\n  ".join(lines)
        + f"\nThe results, metrics and checkpoints are written under {workdir}. The run "
        "diverged or its data holds NaN/Inf: look at the loss, learning rate and alpha "
        "(`train/nonfinite_steps` in metrics.jsonl shows when it started), or accept it with "
        "--config.max_nonfinite_fraction=<fraction> (not part of the config hash: finished "
        "methods are read back, not retrained).",
        offenders,
    )


def max_nonfinite_fraction(config) -> float:
    """``config.max_nonfinite_fraction`` (default 0.01), checked to be in [0, 1]."""
    value = config.get("max_nonfinite_fraction", DEFAULT_MAX_NONFINITE_FRACTION)
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`max_nonfinite_fraction` must be a fraction in [0, 1] of the training steps "
            f"that may be skipped for non-finite gradients; got {value!r}."
        )
    return float(value)


def read_result(workdir: str, digest: str) -> MethodResult | None:
    """The method's finished result, if ``workdir`` holds one of the config ``digest``."""
    path = os.path.join(workdir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("config_hash") != digest:
        return None
    return MethodResult.from_json(saved)
