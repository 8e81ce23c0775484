"""Metric logs that survive a restart: JSONL + TensorBoard event files + progress bars."""

from __future__ import annotations

import json
import os
import sys

import jax


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


class MetricsLog:
    """``metrics.jsonl`` (one line per logged step), TensorBoard events, ``meta.json``.

    On a restart at ``start_step``, lines after that step are dropped (they
    belong to the lost part of the run) and TensorBoard events after it are
    purged, so the logs read as one uninterrupted run.
    """

    def __init__(self, workdir: str, start_step: int = 0):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.meta_path = os.path.join(workdir, "meta.json")
        self.meta = {}
        self._tb = None
        if not self.enabled:
            return
        if os.path.exists(self.meta_path) and start_step > 0:
            with open(self.meta_path) as f:
                self.meta = json.load(f)
        lines = []
        if os.path.exists(self.path) and start_step > 0:
            with open(self.path) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= start_step]
        with open(self.path, "w") as f:
            f.writelines(lines)
        if start_step == 0:
            self.meta = {}
        curves = self.meta.get("curves", {})
        if curves.get("step"):
            keep = sum(s <= start_step for s in curves["step"])
            self.meta["curves"] = {k: v[:keep] for k, v in curves.items()}
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step or None)
        except ImportError:  # JSONL alone is an equivalent log
            self._tb = None

    def curves(self) -> dict:
        return self.meta.get("curves", {})

    def write(self, step: int, scalars: dict[str, float], curves: dict | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if curves is not None:
            self.set_meta(curves=curves)

    def set_meta(self, **entries) -> None:
        if not self.enabled:
            return
        self.meta.update(entries)
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.meta, f)
        os.replace(tmp, self.meta_path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
