"""Faults of the metric logs and the workdir, reproduced on real runs.

A crash, a full disk or a power cut can tear the last line of ``metrics.jsonl``
or leave a garbage ``meta.json``; a user can delete ``meta.json``. Each must be
repaired on the next run, with a warning that names the file, and lose no
curve point. Two runs on one workdir must not both run: the second stops at
once, naming the first; a lock left by a killed run must not block the next.
"""

import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

from experiments.config.methods import select_methods
from experiments.configs import default, sweep_mnist1d
from experiments.run import job
from experiments.run import lock as run_lock
from experiments.run.job import train_and_evaluate
from experiments.run.lock import WorkdirLocked
from experiments.run.logs import LogRepairWarning, MetricsLog, read_jsonl
from experiments.sweep import run_sweep
from tests.crashes import crashing_get_dataset
from tests.fake_devices import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [
    sys.executable,
    "-m",
    "experiments.train",
    "--config",
    "experiments/configs/default.py:local",
]
CLI_ENV = one_device_env()


def _config(**overrides):
    """The smoke config, PMM alone, two seeds (per-seed curve points), one device."""
    config = select_methods(default.get_config("local"), ["pmm"])
    with config.unlocked():
        config.num_devices = 1
        config.seeds = (0, 1)
        for key, value in overrides.items():
            config[key] = value
    return config


def _sweep_config():
    config = sweep_mnist1d.get_config("local")
    with config.unlocked():
        config.num_devices = 1
    return config


def _lines(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A workdir whose run crashed in step 25 (last checkpoint: step 20)."""
    workdir = tmp_path_factory.mktemp("crashed")
    real_get_dataset = job.get_dataset

    crashing = crashing_get_dataset(real_get_dataset, at_batch=25, error=KeyboardInterrupt)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "get_dataset", crashing)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(_config(), str(workdir))
    # The crash released the workdir lock.
    assert (workdir / ".lock").read_text() == ""
    assert [r["step"] for r in _lines(workdir / "pmm" / "metrics.jsonl")] == [10, 20, 20]
    return workdir


def _copy(crashed, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(crashed, workdir)
    return workdir, workdir / "pmm"


def test_torn_last_line_of_metrics_jsonl_is_dropped_and_the_run_resumes(crashed, tmp_path):
    workdir, method = _copy(crashed, tmp_path)
    log_path = method / "metrics.jsonl"
    text = log_path.read_text()
    last = text.splitlines()[-1]
    log_path.write_text(text[: len(text) - len(last) // 2 - 1])  # half the eval line, no "\n"
    point = json.loads((method / "meta.json").read_text())["curves"]["test_accuracy"][0]

    with pytest.warns(LogRepairWarning, match=r"metrics\.jsonl: dropped 1 .*line 3 \(torn"):
        summary = train_and_evaluate(_config(), str(workdir))

    # The torn line (step 20's evaluation) is gone; every line since is whole.
    assert [r["step"] for r in _lines(log_path)] == [10, 20, 30, 40, 40]
    # meta.json still had that evaluation: the curves are complete.
    curves = summary["methods"]["pmm"]["curves"]
    assert curves["step"] == [20, 40]
    assert curves["test_accuracy"][0] == point and len(curves["test_accuracy"][1]) == 2


def test_garbage_meta_json_is_set_aside_and_rebuilt_from_metrics_jsonl(crashed, tmp_path):
    workdir, method = _copy(crashed, tmp_path)
    meta_text = (method / "meta.json").read_text()
    point = json.loads(meta_text)["curves"]["test_accuracy"][0]
    wall = _lines(method / "metrics.jsonl")[-1]["wall_time_s"]
    torn = meta_text[: len(meta_text) // 2]  # a write cut short
    (method / "meta.json").write_text(torn)

    with pytest.warns(
        LogRepairWarning,
        match=r"meta\.json is unreadable .*kept as meta\.json\.corrupt\. Rebuilt it from "
        r".*metrics\.jsonl: 1 evaluation point\(s\) \(steps 20\.\.20\), wall time",
    ):
        summary = train_and_evaluate(_config(), str(workdir))

    assert (method / "meta.json.corrupt").read_text() == torn
    result = summary["methods"]["pmm"]
    assert result["curves"]["step"] == [20, 40]
    assert result["curves"]["test_accuracy"][0] == point
    assert result["wall_time_s"] > wall  # the time before the crash is counted
    assert json.loads((method / "meta.json").read_text())["curves"] == result["curves"]


def test_deleted_meta_json_curves_and_best_come_back_complete(tmp_path):
    config = _config(save_best=True)
    first = train_and_evaluate(config, str(tmp_path))["methods"]["pmm"]
    method = tmp_path / "pmm"
    (method / "meta.json").unlink()
    (method / "result.json").unlink()  # so that the rerun resumes (at step 40/40)

    with pytest.warns(LogRepairWarning, match=r"meta\.json is missing\. .*2 evaluation point"):
        again = train_and_evaluate(config, str(tmp_path))["methods"]["pmm"]

    assert again["curves"] == first["curves"]  # no point lost
    assert again["extra"]["best"] == first["extra"]["best"]  # best_acc/best_step recovered
    assert again["extra"]["best"]["step"] in (20, 40)
    assert again["wall_time_s"] > 0


def test_garbage_lines_in_the_middle_are_skipped_with_a_warning(crashed, tmp_path):
    _, method = _copy(crashed, tmp_path)
    log_path = method / "metrics.jsonl"
    good = log_path.read_text().splitlines()
    log_path.write_text("\n".join([good[0], "\x00" * 40, '["no step"]', *good[1:]]) + "\n")

    records, dropped = read_jsonl(str(log_path))
    assert [r["step"] for r in records] == [10, 20, 20]
    assert [n for n, _ in dropped] == [2, 3]
    with pytest.warns(LogRepairWarning, match=r"dropped 2 damaged line\(s\): line 2 .*line 3"):
        log = MetricsLog(str(method), start_step=20)
    log.close()
    assert log_path.read_text().splitlines() == good  # rewritten without them
    assert log.curves()["step"] == [20]


def test_an_intact_log_resumes_without_warnings(crashed, tmp_path):
    _, method = _copy(crashed, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogRepairWarning)
        log = MetricsLog(str(method), start_step=20)
    log.close()
    assert log.meta["curves"]["step"] == [20] and log.meta["wall_time_s"] > 0


def test_a_second_run_on_a_workdir_in_use_exits_at_once_naming_the_holder(tmp_path, monkeypatch):
    """A real second process, started while this one trains in the workdir."""
    second = {}
    real_get_dataset = job.get_dataset

    def get_dataset(name, **kwargs):
        ds = real_get_dataset(name, **kwargs)
        real_iter = ds.train_iter

        def train_iter(*args, **kw):
            for i, batch in enumerate(real_iter(*args, **kw)):
                if i == 15 and not second:  # in the middle of the first run
                    t0 = time.perf_counter()
                    second["out"] = subprocess.run(
                        [*CLI, "--workdir", str(tmp_path), "--config.num_devices=1"],
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=300,
                        env=CLI_ENV,
                    )
                    second["seconds"] = time.perf_counter() - t0
                yield batch

        return dataclasses.replace(ds, train_iter=train_iter)

    monkeypatch.setattr(job, "get_dataset", get_dataset)
    summary = train_and_evaluate(_config(), str(tmp_path))

    out = second["out"]
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"experiments.train: error: The workdir {tmp_path} is in use by another run: "
    )
    assert f"PID {os.getpid()} on host {socket.gethostname()}, since " in message
    assert f"Wait for that run to finish; or stop it (kill {os.getpid()} on " in message
    assert "another --workdir" in message
    assert "Traceback" not in out.stderr
    # It stopped before loading data or training anything.
    assert "step/s" not in out.stderr and "resuming" not in out.stdout
    print(f"the second run took {second['seconds']:.1f} s, interpreter start included")
    # The first run was not disturbed: one uninterrupted log, complete curves.
    assert [r["step"] for r in _lines(tmp_path / "pmm" / "metrics.jsonl")] == [
        10,
        20,
        20,
        30,
        40,
        40,
    ]
    assert summary["methods"]["pmm"]["curves"]["step"] == [20, 40]
    assert (tmp_path / ".lock").read_text() == ""  # released


@pytest.mark.slow
def test_the_lock_of_a_killed_run_does_not_block_the_next(tmp_path):
    """A real CLI run killed by SIGKILL while training leaves its lock file behind."""
    log = open(tmp_path / "cli.log", "w")
    proc = subprocess.Popen(
        [
            *CLI,
            "--workdir",
            str(tmp_path),
            "--config.num_devices=1",
            "--config.num_train_steps=100000",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=CLI_ENV,
    )
    try:
        deadline = time.monotonic() + 240
        while not any(
            p.stat().st_size for p in tmp_path.glob("*/metrics.jsonl")
        ):  # until it has logged a training step
            assert proc.poll() is None, (tmp_path / "cli.log").read_text()
            assert time.monotonic() < deadline, "the CLI run did not start training"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    left = json.loads((tmp_path / ".lock").read_text())
    assert left["pid"] == proc.pid and left["host"] == socket.gethostname()

    with pytest.warns(UserWarning, match=rf"took over the lock .*: PID {proc.pid} on host "):
        summary = train_and_evaluate(_config(), str(tmp_path))
    assert summary["methods"]["pmm"]["curves"]["step"] == [20, 40]
    assert (tmp_path / ".lock").read_text() == ""


def test_a_held_workdir_stops_training_and_the_sweep_before_any_work(tmp_path):
    with run_lock.workdir_lock(str(tmp_path)):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["since"] and holder["argv"]
        for run in (
            lambda: run_sweep(_sweep_config(), str(tmp_path)),
            lambda: train_and_evaluate(_config(), str(tmp_path)),
        ):
            with pytest.raises(WorkdirLocked, match=rf"PID {os.getpid()} on host"):
                run()
        assert os.listdir(tmp_path) == [".lock"]  # nothing was written
    assert (tmp_path / ".lock").read_text() == ""
    with run_lock.workdir_lock(str(tmp_path)):  # free again
        pass


def test_without_flock_the_lock_file_content_decides(tmp_path, monkeypatch):
    """On a filesystem without flock: live holders block, dead ones on this host do not."""

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    lock = tmp_path / ".lock"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "since": "earlier"}))
    with pytest.raises(
        WorkdirLocked, match=rf"PID {os.getppid()} on host .*does not support flock"
    ):
        with run_lock.workdir_lock(str(tmp_path)):
            pass
    lock.write_text(json.dumps({"pid": dead.pid, "host": "another-host", "since": "earlier"}))
    with pytest.raises(WorkdirLocked, match=r"another-host.*if that run is gone.*delete"):
        with run_lock.workdir_lock(str(tmp_path)):
            pass
    lock.write_text(json.dumps({"pid": dead.pid, "host": host, "since": "earlier"}))
    with pytest.warns(UserWarning, match=rf"took over the lock .*PID {dead.pid} on host"):
        with run_lock.workdir_lock(str(tmp_path)):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock.read_text() == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with run_lock.workdir_lock(str(tmp_path)):  # an empty lock file is free
            pass
