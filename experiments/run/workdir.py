"""The workdir: every path and file name a run writes, the atomic writes, and the
checks that it can be written at all.

A job's workdir (``--workdir``) holds ``summary.json``/``summary.txt`` and the
plots, ``runs_mode.json`` (how the methods of a group shared a program), the lock
``.lock`` (``experiments/run/lock.py``) and one directory per method. A method's
directory holds ``config.json`` (the config it trains with), ``result.json``
(its finished result), ``test_examples.npz`` (its final split's margins and
features, for the plots), ``metrics.jsonl``/``meta.json``/``tb/`` (its logs,
``experiments/run/logs.py``), ``checkpoints/`` and, when the best state is kept,
``best/``. Only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil

import jax

LOCK = ".lock"
SUMMARY_JSON = "summary.json"
SUMMARY_TXT = "summary.txt"
SWEEP = "sweep.json"  # experiments/sweep.py's result
RUNS_RECORD = "runs_mode.json"
CONFIG = "config.json"
RESULT = "result.json"
EXAMPLES = "test_examples.npz"
METRICS = "metrics.jsonl"
META = "meta.json"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
BEST = "best"

# A run writes checkpoints and logs; below this much free space it is refused up front.
MIN_FREE_BYTES = 64 * 2**20


class WorkdirError(OSError):
    """The workdir cannot be used: not a directory, not writable, no space."""


def _file(name: str) -> property:
    return property(lambda self: os.path.join(self.path, name), doc=f"Its ``{name}``.")


@dataclasses.dataclass(frozen=True)
class MethodDir:
    """One method's directory and the files in it."""

    path: str
    config = _file(CONFIG)
    result = _file(RESULT)
    examples = _file(EXAMPLES)
    checkpoints = _file(CHECKPOINTS)
    best = _file(BEST)

    def has_work(self) -> bool:
        """Whether it holds a result or a checkpoint step directory."""
        ckpt = self.checkpoints
        return os.path.exists(self.result) or (
            os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))
        )

    def recorded_config(self) -> dict | None:
        """The config its work was done with (``config.json``), if it holds work and the
        file reads back."""
        if not (self.has_work() and os.path.exists(self.config)):
            return None
        try:
            with open(self.config) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            return None  # unreadable: the checkpoint's own structure check still applies
        return recorded if isinstance(recorded, dict) else None


def method_dir(workdir: str, name: str) -> MethodDir:
    """Method ``name``'s directory in the job's ``workdir``."""
    return MethodDir(os.path.join(workdir, name))


def write_json(path: str, data, **dump_kwargs) -> None:
    """Writes ``data`` as JSON to ``path`` atomically (a temporary file renamed), on
    process 0 only. ``dump_kwargs`` go to ``json.dump`` (default: ``indent=2``,
    ``default=str``)."""
    dump_kwargs = {"indent": 2, "default": str, **dump_kwargs}
    write_text(path, json.dumps(data, **dump_kwargs) + "\n")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, on process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare(workdir: str) -> None:
    """Creates ``workdir`` if needed and checks, before anything trains, that a run can
    write there.

    Raises:
      WorkdirError: one line naming the path, what is wrong (not a directory,
        read-only filesystem, no permission, no space left) and what to do.
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(
            f"--workdir {path} is a file, not a directory: pass another --workdir (or move "
            "the file away)."
        )
    try:
        os.makedirs(path, exist_ok=True)
        if jax.process_index() == 0:  # the one that writes files
            probe = os.path.join(path, f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir {path} {_what_is_wrong(e)}") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise WorkdirError(
            f"--workdir {path} has only {free / 2**20:.1f} MiB free (a run writes checkpoints "
            f"and logs; at least {MIN_FREE_BYTES // 2**20} MiB are needed): free some space or "
            "pass a --workdir on another disk."
        )


def _what_is_wrong(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.EROFS:
        return f"is on a read-only filesystem{where}: pass a --workdir on a writable disk."
    if e.errno in (errno.EACCES, errno.EPERM):
        return (
            f"is not writable by this user{where}: pass a --workdir you can write to (or fix "
            "its permissions)."
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"has no space left{where}: free some space or pass a --workdir on another disk."
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot be created: a part of its path is a file{where}: pass another --workdir."
    return f"cannot be written: {e.strerror or e}{where}."
