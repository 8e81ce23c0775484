"""One run per workdir: a lock file that names its holder.

Two runs on one workdir would interleave ``metrics.jsonl`` and overwrite each
other's checkpoints and results. ``with workdir_lock(workdir):`` holds
``<workdir>/.lock`` for the whole run; a second run on the same workdir stops at
once with a :class:`WorkdirLocked` error that names the holder (PID, host,
since when) and what to do.

The lock is an ``fcntl.flock`` on the open file, so the operating system
releases it when its process dies, even by ``kill -9``: a lock file left behind
never blocks the next run (which says that it took over, with a warning). The
file's content (PID, host, start time, command line) is for the messages. On a
filesystem without ``flock`` (some network filesystems) the content is the lock
alone: a holder on this host whose PID is gone is stale and taken over; one on
another host cannot be checked, and the message says to delete the file if that
run is gone.

In a multi-host run only process 0 takes the lock; it tells the others whether
it got it, so that all of them stop together.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import warnings

import jax
import numpy as np

from experiments.run.workdir import LOCK

# flock errors that mean "not supported here" rather than "held".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class WorkdirLocked(RuntimeError):
    """Another run holds the workdir."""


def _read_holder(fd: int) -> dict | None:
    """The holder written in the lock file; ``None`` if empty or unreadable."""
    try:
        holder = json.loads(os.pread(fd, 65536, 0))
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)  # visible to the other hosts of a shared filesystem


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "a process that has not written its name yet"
    text = f"PID {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
    argv = holder.get("argv")
    if argv:
        text += f" (command: {' '.join(map(str, argv))})"
    return text


def _pid_alive(pid) -> bool:
    """Whether process ``pid`` of this host is running (a zombie is not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_stale(holder: dict | None) -> bool:
    """Whether a holder read from the lock file alone (no flock) is gone."""
    if holder is None:  # empty (released) or torn content: nobody holds it
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


def _held_message(path: str, holder: dict | None, *, flock: bool) -> str:
    workdir = os.path.dirname(path)
    pid = holder.get("pid") if holder else None
    stop = f"stop it (kill {pid} on {holder.get('host')})" if pid else "stop it"
    text = (
        f"The workdir {workdir} is in use by another run: {_describe(holder)}; lock file "
        f"{path}. Two runs on one workdir would interleave its logs and overwrite each "
        f"other's checkpoints. Wait for that run to finish; or {stop} and rerun this "
        "command, which resumes from its checkpoints; or pass another --workdir."
    )
    if not flock:
        text += (
            " This filesystem does not support flock, so the lock is the file's content alone: "
            f"if that run is gone (its machine went down), delete {path}."
        )
    return text


def _acquire(workdir: str) -> int:
    """Locks ``workdir``; returns the lock file's descriptor (held open)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flock = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLocked(_held_message(path, _read_holder(fd), flock=True)) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            flock = False
        previous = _read_holder(fd)
        if not flock and not _is_stale(previous):
            raise WorkdirLocked(_held_message(path, previous, flock=False))
        if previous is not None:
            warnings.warn(
                f"{path}: took over the lock of a run that ended without releasing it "
                f"(killed, or its machine went down): {_describe(previous)}. Its checkpoints "
                "and logs are resumed from as usual.",
                stacklevel=4,
            )
        _write_holder(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # an empty lock file is a free one, also without flock
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # closing the descriptor releases the flock anyway
    finally:
        os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds ``<workdir>/.lock`` (on process 0) for the duration of the ``with`` block.

    Args:
      workdir: the run's directory (created if missing).

    Raises:
      WorkdirLocked: another live run holds the workdir (on every process of a
        multi-host run), with a message that names it and what to do.
    """
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _acquire(workdir)
        except Exception as e:  # told to the other processes first, then raised
            error = e
    try:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not int(ok) and error is None:
                error = WorkdirLocked(
                    f"Process 0 could not lock the workdir {workdir}; its output says why."
                )
        if error is not None:
            raise error
        yield
    finally:
        if fd is not None:
            _release(fd)
