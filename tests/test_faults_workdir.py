"""Issue #22, case 6: a workdir that cannot be written gives one line naming the path and
what is wrong (a file, a read-only filesystem, no space), before anything trains."""

import errno
import os
import subprocess
import sys

import pytest

from experiments.configs import default
from experiments.run import workdir as wd
from experiments.run.job import train_and_evaluate
from tests.fake_devices import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    config = default.get_config("local")
    config.num_devices = 1
    return config


def _cli(workdir):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", "--workdir", str(workdir),
         "--config", "experiments/configs/default.py:local"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=one_device_env(),
    )  # fmt: skip


def test_a_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "runs"
    path.write_text("my notes")
    with pytest.raises(wd.WorkdirError, match=r"is a file, not a directory: pass another"):
        train_and_evaluate(_config(), str(path))
    out = _cli(path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert f"--workdir {path} is a file, not a directory" in line
    assert path.read_text() == "my notes"  # nothing lost


def test_a_workdir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(wd.WorkdirError, match="a part of its path is a file"):
        wd.prepare(str(tmp_path / "f" / "runs"))


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "is on a read-only filesystem"),
        (errno.ENOSPC, "has no space left"),
        (errno.EACCES, "is not writable by this user"),
    ],
)
def test_unwritable_workdirs_are_named(tmp_path, monkeypatch, code, words):
    real_open = open

    def failing_open(path, *args, **kwargs):
        if ".write-test-" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(wd.WorkdirError, match=words) as err:
        wd.prepare(str(tmp_path / "w"))
    assert str(tmp_path / "w") in str(err.value) and "\n" not in str(err.value)


def test_too_little_free_space(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 2**20))
    with pytest.raises(wd.WorkdirError, match=r"has only 1\.0 MiB free"):
        wd.prepare(str(tmp_path))


def test_a_real_read_only_filesystem(tmp_path):
    """A read-only tmpfs, where this machine lets us mount one (root)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a read-only filesystem here")
    try:
        out = _cli(mnt / "w")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "is on a read-only filesystem" in out.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
