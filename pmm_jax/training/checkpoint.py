"""Orbax checkpoints of a :class:`TrainState`: periodic, bounded, resumable, verified.

* ``save(state)`` writes a checkpoint every ``save_every`` steps (orbax's
  atomic write: a temporary directory renamed when complete) and keeps the last
  ``keep`` of them. With each checkpoint goes an *integrity record*: the path,
  shape, dtype and SHA-256 of the bytes of every saved array. It is computed
  from the state being saved and stored in the checkpoint's own
  ``_CHECKPOINT_METADATA`` (orbax's ``custom_metadata``), which orbax writes
  inside the temporary directory before the rename -- so a checkpoint has its
  record exactly when it is complete, with ``async_save=True`` too, and on many
  processes (orbax writes it from the primary process). A state holding NaN/Inf
  is not saved (:class:`CheckpointNotSavedWarning`): it could never be resumed
  from, and it would push good checkpoints out of the last ``keep``.
* ``restore_latest(state)`` restores the newest checkpoint that is *trusted*,
  trying step by step from the newest:

  1. The saved structure (orbax's metadata: every array's path, shape and dtype)
     is read *before* restoring and compared with ``state``'s. If they differ
     the checkpoint is fine but belongs to another model / optimizer / seed
     count: :class:`CheckpointMismatchError` names the differing arrays and
     nothing is moved.
  2. The arrays are restored and each one's SHA-256 is checked against the
     record (this catches a flipped bit anywhere in the data files, which orbax
     itself reads back without complaint), and every floating-point array must
     be finite (a NaN/Inf state is never resumed from).
  3. A checkpoint that fails to read, fails a checksum, disagrees with its own
     record or holds non-finite values is reported with a
     :class:`CheckpointCorruptWarning` and *moved aside* to
     ``<directory>.corrupt/`` -- never deleted -- and the next older one is tried.

  A checkpoint without a record is *damaged* (its ``_CHECKPOINT_METADATA`` was
  lost or rewritten) when the directory says records are written there: its
  ledger (``pmm_jax_checkpoints.json``, written with the first recorded save)
  names an earlier or equal first recorded step, or an older checkpoint of the
  directory has a record. It is moved aside like any untrusted checkpoint. Only
  where nothing says so -- a directory written before records existed -- is a
  checkpoint without a record restored after the structure and finiteness
  checks, with one :class:`CheckpointNotVerifiedWarning`. Failures of the machine
  rather than the files (out of memory, permission denied) are raised, not taken
  as corruption.

  Orbax has no check of its own for this: the zstd frames it writes carry no
  checksum, and zarr3's crc32c covers only the shard index, so most flipped bits
  come back as silently different numbers.
* Step directories that orbax lists but that hold no checkpoint (an empty or
  partial ``<directory>/<step>/`` without its ``default/`` item) are never
  restored from and never a reason to distrust the others: they are moved aside
  to ``<directory>.corrupt/<step>-incomplete-<time>`` with a warning, so that
  they neither take one of the ``keep`` slots nor block a later save at that
  step. A *file* (or link) named like a step is moved aside the same way
  (``<step>-not-a-checkpoint-<time>``) before anything is saved at its step:
  orbax would otherwise delete it to save there. Orbax's temporary directories
  and other names are left alone: nothing in the directory that is not one of
  our checkpoints is ever deleted or overwritten.
* Restoring is sharding-agnostic: the arrays are read into the shardings of the
  ``state`` you pass (e.g. replicated on a 1-device or an 8-device mesh), so a
  checkpoint saved from 8 devices restores onto 1 and the other way round.
  Save the un-replicated state (``unreplicate`` a pmap state first).
* With several processes, only process 0 moves directories, between barriers
  that all processes pass (they all make the same decisions from the same files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pmm_jax.training.state import TrainState

log = logging.getLogger(__name__)

# The key of the integrity record in a step's `custom_metadata`.
RECORD_KEY = "pmm_jax_integrity"
RECORD_VERSION = 1
# The directory's ledger: from which step on its checkpoints carry a record.
LEDGER = "pmm_jax_checkpoints.json"
# The item directory of orbax's single-item ("default") mode inside a step directory.
_ITEM = "default"
_MAX_LISTED = 12  # differing arrays named in an error message


class CheckpointCorruptWarning(UserWarning):
    """A checkpoint could not be trusted (unreadable, checksum mismatch, non-finite
    values) or a step directory held no checkpoint, and it was moved aside."""


class CheckpointNotVerifiedWarning(UserWarning):
    """A checkpoint has no integrity record and nothing in its directory says it
    should have one (written by an older version); it was restored after the
    structure and finiteness checks only."""


class CheckpointNotSavedWarning(UserWarning):
    """A state with non-finite values was not saved (the previous checkpoints are kept)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint is readable but was saved from a different structure (model,
    optimizer, seed count): its arrays' paths, shapes or dtypes differ from the
    state it is restored into. Nothing is moved.

    Attributes:
      step: the checkpoint's step.
      differences: ``[(path, saved, expected)]``, ``saved``/``expected`` as
        ``"float32[6,16]"`` or ``"absent"``.
    """

    def __init__(self, message: str, *, step: int, differences: list[tuple[str, str, str]]):
        super().__init__(message)
        self.step = step
        self.differences = differences


class _Untrusted(Exception):
    """Internal: why a checkpoint is not trusted (becomes a quarantine message)."""


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager`` for a TrainState.

    Args:
      directory: where the step directories go (created if missing).
      save_every: save when ``step % save_every == 0`` (and on ``force=True``).
      keep: how many recent checkpoints to keep.
      async_save: let orbax write in a background thread (call :meth:`wait`
        or :meth:`close` before reading the files or exiting). The integrity
        record is computed before :meth:`save` returns and written by orbax
        with the checkpoint.
    """

    def __init__(
        self, directory, *, save_every: int = 1000, keep: int = 3, async_save: bool = False
    ):
        if save_every < 1 or keep < 1:
            raise ValueError(f"`save_every` and `keep` must be >= 1; got {save_every}, {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        # One unnamed item, fixed here: left to orbax, the mode is guessed from the
        # first step directory it reads, and an empty one made it expect several
        # named items ("Must provide `args` of type `Composite`") for every
        # checkpoint, good ones included, and for every later save.
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=1,  # we decide when to save
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
        )
        self._swept = False
        self._warned_unverified = False

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state: TrainState, *, force: bool = False) -> bool:
        """Saves ``state`` if its step is due (or ``force``); returns whether it did."""
        step = _step_of(state)
        if not force and step % self.save_every:
            return False
        if not self._swept:
            self._set_aside_incomplete()
        self._set_aside_non_directory(step)  # orbax would delete it to save here
        if step in self._manager.all_steps():
            self._manager.wait_until_finished()  # it may be our own save, still in flight
            if self._is_complete(step):
                return False
            self._set_aside_incomplete()  # appeared since: it would block this save
        items = state.checkpoint_items()
        record, nonfinite = _scan(items)
        if nonfinite:
            _warn(
                f"Not saving the checkpoint at step {step} in {self.directory}: the state holds "
                f"non-finite values in {_list(nonfinite)}. It could never be resumed from, and "
                f"saving it would push good checkpoints out of the last `keep`; the previous "
                "ones are kept.",
                CheckpointNotSavedWarning,
            )
            return False
        self._write_ledger(step)
        self._manager.save(
            step,
            args=ocp.args.StandardSave(items),
            custom_metadata={RECORD_KEY: record},
            force=True,
        )
        return True

    def restore_latest(
        self, state: TrainState, *, max_step: int | None = None
    ) -> TrainState | None:
        """Restores the newest trusted checkpoint into ``state``'s structure/shardings.

        ``max_step``: consider only checkpoints at this step or before (to bring
        runs saved one save apart back to a common step); newer ones are left as
        they are.

        Returns ``None`` if there is no checkpoint at all (at most ``max_step``).

        Raises:
          CheckpointMismatchError: the newest readable checkpoint was saved from a
            different structure (model width, optimizer, seed count, dtype).
        """
        self._manager.wait_until_finished()
        self._manager.reload()
        self._set_aside_incomplete()
        target = jax.tree.map(_abstract, state.checkpoint_items())
        expected = _specs_of(target)
        for step in sorted(self._manager.all_steps(), reverse=True):
            if max_step is not None and step > max_step:
                continue
            try:
                record = self._check_structure(step, expected)
                if record is None and (why := self._record_expected(step)):
                    raise _Untrusted(
                        f"it has no integrity record, but {why}: its _CHECKPOINT_METADATA was "
                        "lost or damaged, so its arrays cannot be verified"
                    )
                items = self._manager.restore(step, args=ocp.args.StandardRestore(target))
                _verify(items, record)
            except CheckpointMismatchError:
                raise
            except Exception as err:  # unreadable, checksum, non-finite: all untrusted
                if _not_about_the_checkpoint(err):
                    raise
                self._quarantine(step, err)
                continue
            if record is None and not self._warned_unverified:
                self._warned_unverified = True
                _warn(
                    f"Checkpoint at step {step} in {self.directory} has no integrity record, "
                    "and neither the directory's ledger nor an older checkpoint says it should "
                    "(it was written by an older version of pmm_jax): restored after checking "
                    "its structure and that its values are finite, without checksums. "
                    "Checkpoints saved from now on are verified.",
                    CheckpointNotVerifiedWarning,
                )
            log.info("Restored checkpoint at step %d from %s", step, self.directory)
            return state.replace_items(items)
        return None

    # -- checks ---------------------------------------------------------------

    def _check_structure(self, step: int, expected: dict) -> dict | None:
        """The step's integrity record (None if it has none), after checking that the
        saved structure matches ``expected``. Raises CheckpointMismatchError if not,
        ``_Untrusted`` (or whatever orbax raises) if the metadata does not read back."""
        metadata = self._manager.metadata(step)
        saved = _specs_of(metadata.item_metadata, from_metadata=True)
        if not saved:
            raise _Untrusted("its metadata lists no arrays")
        record = (metadata.custom_metadata or {}).get(RECORD_KEY)
        if record is not None:
            recorded = _record_specs(record)
            if recorded != saved:
                raise _Untrusted(
                    "orbax's metadata disagrees with the checkpoint's integrity record ("
                    + _describe(_diff(recorded, saved), "recorded", "in orbax's metadata")
                    + ")"
                )
        differences = _diff(saved, expected)
        if differences:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} was saved from a "
                "different model, optimizer or seed count than the state it is being "
                f"restored into; {len(differences)} array(s) differ"
                + _leading_axis_hint(saved, expected)
                + ": "
                + _describe(differences, "saved", "expected")
                + ". Nothing was moved. Restore with the configuration the checkpoint was "
                "written with, or start fresh in a new directory (or move "
                f"{self.directory} away).",
                step=step,
                differences=differences,
            )
        return record

    def _record_expected(self, step: int) -> str:
        """Why the checkpoint at ``step`` must have an integrity record ("" if nothing
        says so): the ledger's first recorded step is at or before it, or an older
        checkpoint of this directory has a record."""
        since = self._ledger_since()
        if since is not None and step >= since:
            return (
                f"this directory's ledger ({LEDGER}) says every checkpoint from step {since} on is "
                "saved with one"
            )
        for other in sorted(self._manager.all_steps()):
            if other >= step:
                break
            try:
                custom = self._manager.metadata(other).custom_metadata or {}
            except Exception:  # unreadable: it says nothing either way
                continue
            if RECORD_KEY in custom:
                return f"the older checkpoint at step {other} in this directory has one"
        return ""

    def _ledger_path(self) -> str:
        return os.path.join(self.directory, LEDGER)

    def _ledger_since(self) -> int | None:
        """The first step saved with records here, from the ledger (None: no ledger)."""
        try:
            with open(self._ledger_path()) as f:
                since = json.load(f).get("records_since_step")
        except (OSError, ValueError, AttributeError):
            return None
        return since if isinstance(since, int) and not isinstance(since, bool) else None

    def _write_ledger(self, step: int) -> None:
        """Notes in the directory, once, that checkpoints from ``step`` on carry records."""
        since = self._ledger_since()
        if (since is not None and since <= step) or jax.process_index() != 0:
            return
        path = self._ledger_path()
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"records_since_step": step, "record_version": RECORD_VERSION}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _is_complete(self, step: int) -> bool:
        item = os.path.join(self.directory, str(step), _ITEM)
        return os.path.isdir(item) and bool(os.listdir(item))

    # -- moving things aside ---------------------------------------------------

    def _set_aside_incomplete(self) -> None:
        """Moves step directories that hold no checkpoint out of orbax's way."""
        self._swept = True
        self._manager.wait_until_finished()  # an async save is complete only once renamed
        for name in sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else ():
            if name.isdigit():
                self._set_aside_non_directory(int(name))
        incomplete = [s for s in self._manager.all_steps() if not self._is_complete(s)]
        for step in sorted(incomplete):
            src = os.path.join(self.directory, str(step))
            dst = self._corrupt_path(f"{step}-incomplete")
            contents = sorted(os.listdir(src)) if os.path.isdir(src) else []
            what = "is empty" if not contents else f"holds only {contents[:5]}"
            _warn(
                f"Step directory {src} {what}: it is not a checkpoint (no {_ITEM}/ item), so "
                f"it is ignored and moved to {dst} to keep it out of the way of saves. "
                "No checkpoint was touched.",
                CheckpointCorruptWarning,
            )
            self._move(src, dst)
        _sync("pmm_jax_checkpoint_set_aside")
        if incomplete:
            self._manager.reload()

    def _set_aside_non_directory(self, step: int) -> None:
        """Moves a file or link named like ``step`` out of the way of a save there."""
        src = os.path.join(self.directory, str(step))
        if not os.path.lexists(src) or (os.path.isdir(src) and not os.path.islink(src)):
            return  # (every process sees the same directory, so all return here together)
        dst = self._corrupt_path(f"{step}-not-a-checkpoint")
        _warn(
            f"{src} is a {'link' if os.path.islink(src) else 'file'}, not a checkpoint, where "
            f"the checkpoint of step {step} is to be saved: moved it to {dst} (orbax would "
            "have deleted it). Nothing else was touched.",
            CheckpointCorruptWarning,
        )
        _sync(f"pmm_jax_checkpoint_not_a_dir_{step}_seen")
        self._move(src, dst)
        _sync(f"pmm_jax_checkpoint_not_a_dir_{step}_moved")

    def _quarantine(self, step: int, err: Exception) -> None:
        src = os.path.join(self.directory, str(step))
        dst = self._corrupt_path(str(step))
        reason = str(err) if isinstance(err, _Untrusted) else f"{type(err).__name__}: {err}"
        if len(reason) > 600:
            reason = reason[:600] + " ..."
        _warn(
            f"Checkpoint at step {step} in {self.directory} is not trusted ({reason}); "
            f"moved it to {dst} and trying the previous one.",
            CheckpointCorruptWarning,
        )
        _sync(f"pmm_jax_checkpoint_quarantine_{step}_read")  # everyone is done reading it
        self._move(src, dst)
        _sync(f"pmm_jax_checkpoint_quarantine_{step}_moved")
        self._manager.reload()

    def _corrupt_path(self, name: str) -> str:
        root = self.directory + ".corrupt"
        dst = os.path.join(root, f"{name}-{int(time.time())}")
        n = 1
        while os.path.exists(dst):  # never overwrite an earlier one
            dst = os.path.join(root, f"{name}-{int(time.time())}-{n}")
            n += 1
        return dst

    @staticmethod
    def _move(src: str, dst: str) -> None:
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# -- integrity records ---------------------------------------------------------


def _scan(items) -> tuple[dict, list[str]]:
    """The integrity record of ``items`` and its arrays holding NaN/Inf."""
    leaves, nonfinite = {}, []
    for path, leaf in _flatten(items):
        host = _host_array(leaf)
        leaves[path] = {
            "shape": list(host.shape),
            "dtype": _dtype_name(host.dtype),
            "sha256": _sha256(host),
        }
        count = _count_nonfinite(host)
        if count:
            nonfinite.append(f"{path} ({count} of {host.size})")
    return {"version": RECORD_VERSION, "algorithm": "sha256", "leaves": leaves}, nonfinite


def _verify(items, record: dict | None) -> None:
    """Raises ``_Untrusted`` if a restored array's checksum differs from the record
    or a floating-point array holds NaN/Inf."""
    restored, nonfinite = _scan(items)
    problems = []
    if record is not None:
        bad = [
            p
            for p, leaf in restored["leaves"].items()
            if leaf["sha256"] != record["leaves"].get(p, {}).get("sha256")
        ]
        if bad:
            problems.append(f"SHA-256 mismatch in {_list(bad)}")
    if nonfinite:
        problems.append(
            f"non-finite values in {_list(nonfinite)}"
            + (
                " (the checksums match: the state was already non-finite when saved)"
                if record is not None and not problems
                else ""
            )
        )
    if problems:
        raise _Untrusted("; ".join(problems))


def _count_nonfinite(host: np.ndarray) -> int:
    if not jnp.issubdtype(host.dtype, jnp.inexact):
        return 0
    return int(host.size - np.count_nonzero(np.isfinite(host)))


def _list(names: list[str]) -> str:
    more = len(names) - _MAX_LISTED
    return (
        f"{len(names)} array(s): "
        + ", ".join(names[:_MAX_LISTED])
        + (f", ... and {more} more" if more > 0 else "")
    )


def _record_specs(record: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    if record.get("version") != RECORD_VERSION or record.get("algorithm") != "sha256":
        raise _Untrusted(
            f"unknown integrity record version {record.get('version')!r} / algorithm "
            f"{record.get('algorithm')!r}"
        )
    return {p: (tuple(v["shape"]), v["dtype"]) for p, v in record["leaves"].items()}


# -- structure -----------------------------------------------------------------


def _specs_of(tree, *, from_metadata: bool = False) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype name)}`` of a pytree of arrays / array metadata."""
    out = {}
    for path, leaf in _flatten(tree):
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if from_metadata and (shape is None or dtype is None):
            raise _Untrusted(f"its metadata has no shape/dtype for {path}")
        out[path] = (tuple(int(d) for d in shape), _dtype_name(dtype))
    return out


def _diff(saved: dict, expected: dict) -> list[tuple[str, str, str]]:
    def fmt(spec):
        return "absent" if spec is None else f"{spec[1]}[{','.join(map(str, spec[0]))}]"

    first = ("params", "batch_stats", "step", "rng")  # the telling ones, before opt_state

    def order(path):
        top = path.split("/", 1)[0]
        return (first.index(top) if top in first else len(first), path)

    paths = sorted(set(saved) | set(expected), key=order)
    return [
        (p, fmt(saved.get(p)), fmt(expected.get(p)))
        for p in paths
        if saved.get(p) != expected.get(p)
    ]


def _leading_axis_hint(saved: dict, expected: dict) -> str:
    """Names the seed count when every array differs in its leading axis only."""
    if set(saved) != set(expected):
        return ""
    leading = set()
    for path, (shape, dtype) in saved.items():
        want_shape, want_dtype = expected[path]
        if dtype != want_dtype or len(shape) != len(want_shape) or not shape:
            return ""
        if shape[1:] != want_shape[1:] or shape[0] == want_shape[0]:
            return ""
        leading.add((shape[0], want_shape[0]))
    if len(leading) != 1:
        return ""
    ((have, want),) = leading
    return f" in their leading axis only ({have} saved vs {want} expected: a different seed count?)"


def _describe(differences, saved_word: str, expected_word: str) -> str:
    shown = [f"{p}: {saved_word} {s} vs {expected_word} {e}" for p, s, e in differences]
    more = len(shown) - _MAX_LISTED
    return "; ".join(shown[:_MAX_LISTED]) + (f"; ... and {more} more" if more > 0 else "")


def _flatten(tree) -> list[tuple[str, object]]:
    """Leaves with their paths as ``"params/body/kernel"`` (dict keys, attribute
    names and sequence indices alike, so a saved NamedTuple matches its metadata)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves]


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


# -- arrays ----------------------------------------------------------------------


def _host_array(x) -> np.ndarray:
    """A host copy of a (possibly multi-process) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()


def _step_of(state: TrainState) -> int:
    """The step; a state stacked over seeds or replicated for pmap has one per copy."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _abstract(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _not_about_the_checkpoint(err: Exception) -> bool:
    """Failures of this machine (out of memory, no permission), not of the files:
    raised as they are rather than moving good checkpoints aside."""
    text = str(err)
    return isinstance(err, (MemoryError, PermissionError)) or any(
        code in text for code in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED")
    )


def _warn(message: str, category) -> None:
    warnings.warn(message, category, stacklevel=3)
    log.warning(message)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
