"""Metric logs that survive a restart, a crash and a torn write.

A run's workdir holds ``metrics.jsonl`` (one JSON object per logged step),
TensorBoard event files and ``meta.json`` (the evaluation curves, the wall time
and the best evaluation so far). What a crash, a full disk or a power cut can
leave behind, and what happens to it on the next run:

* a torn last line of ``metrics.jsonl`` (no newline at the end): dropped;
* a garbage line anywhere in ``metrics.jsonl`` (not a JSON object with an
  integer ``"step"``): dropped -- lines are independent single writes, so the
  lines around it are intact and kept;
* an unreadable ``meta.json``: set aside as ``meta.json.corrupt`` and rebuilt
  from ``metrics.jsonl``, like a missing one. Every evaluation line carries its
  curve point (``"curve"``: the per-seed accuracies) and every line the run's
  wall time (``"wall_time_s"``), so the curves come back complete and the wall
  time up to the last kept line. The best evaluation (``best_acc``,
  ``best_step``) is recovered from the curves by the trainer.

Each repair is reported with a :class:`LogRepairWarning` that names the file
(and the lines) concerned; nothing else needs fixing by hand.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import jax

from experiments.run.workdir import META, METRICS, TENSORBOARD, write_json, write_text


class LogRepairWarning(UserWarning):
    """A damaged metric log (torn or garbage lines, lost ``meta.json``) was repaired."""


def say(message: str) -> None:
    """Prints one line, whole, above the progress bars (groups training in parallel
    threads print at the same time; ``print`` could interleave their lines)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def progress(total: int, initial: int = 0, desc: str = ""):
    """A tqdm bar on the first process (a no-op elsewhere)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
        file=sys.stderr,
        mininterval=1.0,
    )


def read_jsonl(path: str) -> tuple[list[dict], list[tuple[int, str]]]:
    """The records of a JSONL metric log, and the damaged lines it had to skip.

    Args:
      path: a ``metrics.jsonl`` file.

    Returns:
      ``(records, dropped)``: the JSON objects with an integer ``"step"``, in
      file order, and ``(line number, why)`` for every line that was skipped: a
      last line without its newline (torn by a crash or a full disk while it
      was written) or a line that is not such an object (garbage).
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as it should
    records, dropped = [], []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            dropped.append((number, "not JSON"))
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            dropped.append((number, 'not a JSON object with an integer "step"'))
            continue
        records.append(record)
    if tail.strip():
        dropped.append((len(lines) + 1, "torn: no newline at the end of the file"))
    return records, dropped


def meta_from_records(records: list[dict]) -> dict:
    """What of ``meta.json`` can be rebuilt from ``metrics.jsonl`` records.

    The curves from the evaluation lines' ``"curve"`` points and the wall time
    of the last line that has one; lines written before the logs carried them
    give nothing.
    """
    curves: dict[str, list] = {}
    for record in records:
        point = record.get("curve")
        if isinstance(point, dict) and point:
            curves.setdefault("step", []).append(record["step"])
            for key, value in point.items():
                curves.setdefault(key, []).append(value)
    meta: dict = {"curves": curves} if curves else {}
    walls = [r["wall_time_s"] for r in records if isinstance(r.get("wall_time_s"), (int, float))]
    if walls:
        meta["wall_time_s"] = float(walls[-1])
    forms = []
    for record in records:  # each training line names its form and since when
        form = record.get("form")
        if isinstance(form, dict) and isinstance(form.get("mode"), str):
            entry = {"mode": form["mode"], "from_step": int(form.get("from_step", 0))}
            if not forms or forms[-1] != entry:
                forms.append(entry)
    if forms:
        meta["forms"] = forms
    return meta


def best_from_curves(curves: dict, key: str) -> tuple[float, int] | None:
    """``(best mean accuracy, its step)`` over the curve ``key`` (first on ties)."""
    points = curves.get(key) or []
    if not points:
        return None
    means = [sum(p) / len(p) for p in points]
    i = max(range(len(means)), key=lambda j: (means[j], -j))
    return float(means[i]), int(curves["step"][i])


def _valid_curves(curves) -> bool:
    if not isinstance(curves, dict):
        return False
    lengths = {len(v) if isinstance(v, list) else -1 for v in curves.values()}
    return len(lengths) <= 1 and -1 not in lengths


def _describe_dropped(dropped: list[tuple[int, str]], limit: int = 5) -> str:
    shown = "; ".join(f"line {n} ({why})" for n, why in dropped[:limit])
    more = f"; and {len(dropped) - limit} more" if len(dropped) > limit else ""
    return shown + more


class MetricsLog:
    """``metrics.jsonl`` (one line per logged step), TensorBoard events, ``meta.json``.

    On a restart at ``start_step``, lines after that step are dropped (they
    belong to the lost part of the run) and TensorBoard events after it are
    purged, so the logs read as one uninterrupted run. Damaged logs are
    repaired as the module docstring says, with a :class:`LogRepairWarning`.

    Only process 0 writes files; every process keeps ``meta`` in memory.
    """

    def __init__(self, workdir: str, start_step: int = 0):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS)
        self.meta_path = os.path.join(workdir, META)
        self.meta: dict = {}
        self._tb = None
        if not self.enabled:
            return
        records = []
        if start_step > 0:
            records = self._read_records(start_step)
            self.meta = self._read_meta(records)
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        if start_step == 0:
            self.set_meta()  # no curves or times of an earlier run
        curves = self.meta.get("curves", {})
        if curves.get("step"):
            keep = sum(s <= start_step for s in curves["step"])
            self.meta["curves"] = {k: v[:keep] for k, v in curves.items()}
        forms = self.meta.get("forms")
        if isinstance(forms, list):  # the forms that trained the steps kept
            self.meta["forms"] = [
                f for f in forms if isinstance(f, dict) and f.get("from_step", 0) < start_step
            ]
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                os.path.join(workdir, TENSORBOARD), purge_step=start_step or None
            )
        except ImportError:  # JSONL alone is an equivalent log
            self._tb = None

    def _read_records(self, start_step: int) -> list[dict]:
        """The kept lines of ``metrics.jsonl`` (steps up to ``start_step``)."""
        if not os.path.exists(self.path):
            return []
        records, dropped = read_jsonl(self.path)
        if dropped:
            warnings.warn(
                f"{self.path}: dropped {len(dropped)} damaged line(s): "
                f"{_describe_dropped(dropped)}. A crash, a full disk or a power cut during a "
                "write leaves such lines; the other lines are kept and the file is rewritten "
                "without them.",
                LogRepairWarning,
                stacklevel=3,
            )
        return [r for r in records if r["step"] <= start_step]

    def _read_meta(self, records: list[dict]) -> dict:
        """``meta.json``, or what ``records`` rebuild of it when it is missing or unreadable."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
            if isinstance(meta, dict) and _valid_curves(meta.get("curves", {})):
                return meta
            problem = "is not a JSON object with aligned curves"
        except FileNotFoundError:
            problem = "is missing"
        except ValueError as e:  # torn or garbage bytes
            problem = f"is unreadable ({e})"
        if os.path.exists(self.meta_path):
            os.replace(self.meta_path, self.meta_path + ".corrupt")
            problem += f"; it is kept as {os.path.basename(self.meta_path)}.corrupt"
        meta = meta_from_records(records)
        steps = meta.get("curves", {}).get("step", [])
        if steps:
            got = f"{len(steps)} evaluation point(s) (steps {steps[0]}..{steps[-1]})"
        else:
            got = (
                "no evaluation points (lines written by an older version carry none): the "
                "curves restart empty"
            )
        wall = meta.get("wall_time_s")
        got += (
            f", wall time {wall:.1f} s up to the last kept line"
            if wall is not None
            else ", no wall time (it restarts from 0)"
        )
        warnings.warn(
            f"{self.meta_path} {problem}. Rebuilt it from {self.path}: {got}.",
            LogRepairWarning,
            stacklevel=3,
        )
        return meta

    def curves(self) -> dict:
        """``{"step": [...], "<split>_accuracy": [[per seed] per eval]}``, live (not a copy)."""
        return self.meta.setdefault("curves", {})

    def write(
        self,
        step: int,
        scalars: dict[str, float],
        *,
        curve_point: dict[str, list] | None = None,
        wall_time_s: float | None = None,
        form: dict | None = None,
    ) -> None:
        """Logs ``scalars`` at ``step``.

        Args:
          step: the train step.
          scalars: ``{name: value}``, to ``metrics.jsonl`` and TensorBoard.
          curve_point: ``{"<split>_accuracy": [per seed]}``, one evaluation's
            point of the curves: appended to ``meta["curves"]`` and kept in the
            JSONL line (as ``"curve"``) so that the curves can be rebuilt.
          wall_time_s: the run's wall time so far, kept in the JSONL line.
          form: ``{"mode", "from_step"}``, the program form training these steps
            (:meth:`begin_form`), kept in the JSONL line to rebuild ``meta["forms"]``.
        """
        record = {"step": step, **scalars}
        if wall_time_s is not None:
            record["wall_time_s"] = wall_time_s
        if form is not None:
            record["form"] = form
        if curve_point is not None:
            record["curve"] = curve_point
            curves = self.curves()
            curves.setdefault("step", []).append(step)
            for key, value in curve_point.items():
                curves.setdefault(key, []).append(value)
        if not self.enabled:
            return
        self._append(record)
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if curve_point is not None:
            self.set_meta()

    def _append(self, record: dict) -> None:
        """One line, appended by a single unbuffered write (no partial lines from buffering)."""
        line = memoryview((json.dumps(record) + "\n").encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while line:  # more than one call only after a short write (a full disk)
                line = line[os.write(fd, line) :]
        finally:
            os.close(fd)

    def forms(self) -> list[dict]:
        """``[{"mode", "from_step"}]``: the program forms that trained the steps so far."""
        return self.meta.setdefault("forms", [])

    def begin_form(self, mode: str, step: int) -> dict | None:
        """Records that the steps from ``step`` on train in form ``mode``.

        Returns:
          The form that trained the steps before ``step`` when it was another one
          (a resume in another form), else None. Steps trained before forms were
          recorded count as the form ``"unrecorded"``.
        """
        forms = self.forms()
        if step > 0 and not forms:
            forms.append({"mode": "unrecorded", "from_step": 0})
        previous = forms[-1] if forms else None
        if previous is None or previous["mode"] != mode:
            forms.append({"mode": mode, "from_step": step})
            self.set_meta()
        return previous if previous is not None and previous["mode"] != mode else None

    def set_meta(self, **entries) -> None:
        """Updates ``meta`` and rewrites ``meta.json`` atomically (tmp file + rename)."""
        self.meta.update(entries)
        if self.enabled:
            write_json(self.meta_path, self.meta, indent=None)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
