"""Orbax checkpoints of a :class:`TrainState`: periodic, bounded, resumable, safe.

* ``save(state)`` writes a checkpoint every ``save_every`` steps (orbax's
  atomic write: a temporary directory renamed when complete) and keeps the last
  ``keep`` of them.
* ``restore_latest(state)`` restores the newest checkpoint that reads back
  whole. A checkpoint that fails to restore (truncated, corrupt) is reported with
  a warning and *moved aside* to ``<directory>.corrupt/`` -- never deleted --
  and the next older one is tried.
* Restoring is sharding-agnostic: the arrays are read into the shardings of the
  ``state`` you pass (e.g. replicated on a 1-device or an 8-device mesh), so a
  checkpoint saved from 8 devices restores onto 1 and the other way round.
  Save the un-replicated state (``unreplicate`` a pmap state first).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from pmm_jax.training.state import TrainState

log = logging.getLogger(__name__)


class CheckpointCorruptWarning(UserWarning):
    """A checkpoint could not be restored and was moved aside."""


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager`` for a TrainState.

    Args:
      directory: where the step directories go (created if missing).
      save_every: save when ``step % save_every == 0`` (and on ``force=True``).
      keep: how many recent checkpoints to keep.
      async_save: let orbax write in a background thread (call :meth:`wait`
        or :meth:`close` before reading the files or exiting).
    """

    def __init__(
        self, directory, *, save_every: int = 1000, keep: int = 3, async_save: bool = False
    ):
        if save_every < 1 or keep < 1:
            raise ValueError(f"`save_every` and `keep` must be >= 1; got {save_every}, {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=1,  # we decide when to save
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state: TrainState, *, force: bool = False) -> bool:
        """Saves ``state`` if its step is due (or ``force``); returns whether it did."""
        step = _step_of(state)
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        self._manager.save(step, args=ocp.args.StandardSave(state.checkpoint_items()), force=True)
        return True

    def restore_latest(self, state: TrainState) -> TrainState | None:
        """Restores the newest readable checkpoint into ``state``'s structure/shardings.

        Returns ``None`` if there is no checkpoint at all.
        """
        self._manager.reload()
        target = jax.tree.map(_abstract, state.checkpoint_items())
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                items = self._manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as err:
                self._quarantine(step, err)
                continue
            log.info("Restored checkpoint at step %d from %s", step, self.directory)
            return state.replace_items(items)
        return None

    def _quarantine(self, step: int, err: Exception) -> None:
        src = os.path.join(self.directory, str(step))
        dst_root = self.directory + ".corrupt"
        dst = os.path.join(dst_root, f"{step}-{int(time.time())}")
        message = (
            f"Checkpoint at step {step} in {self.directory} could not be restored "
            f"({type(err).__name__}: {str(err)[:300]}); moved it to {dst} and trying the "
            "previous one."
        )
        warnings.warn(message, CheckpointCorruptWarning, stacklevel=3)
        log.warning(message)
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(dst_root, exist_ok=True)
            shutil.move(src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _step_of(state: TrainState) -> int:
    """The step; a state stacked over seeds or replicated for pmap has one per copy."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _abstract(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
