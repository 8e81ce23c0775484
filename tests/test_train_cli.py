"""The training CLI: --help, --list-configs, a smoke run (schema, plots, resume), the sweep."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.config.identity import config_hash, hashed_fields
from experiments.config.methods import select_methods
from experiments.configs import default, sweep_mnist1d
from experiments.run import job
from experiments.run.job import train_and_evaluate
from experiments.sweep import grid_points, run_sweep
from tests.crashes import crashing_get_dataset
from tests.fake_devices import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=one_device_env(),
    )


def _local():
    """The smoke config, with batches that split over the 8 fake test devices."""
    config = default.get_config("local")
    with config.unlocked():
        config.batch_size = 96
        config.eval_batch_size = 200
    return config


def test_help():
    out = _cli("--help")
    assert out.returncode == 0
    assert "--workdir" in out.stdout and "--config" in out.stdout


def test_list_configs():
    out = _cli("--list-configs")
    assert out.returncode == 0, out.stderr
    lines = [ln.split("\t") for ln in out.stdout.strip().splitlines()]
    by_name = {ln[0]: ln for ln in lines}
    assert by_name["default"][1:] == ["cnn1d", "mnist1d", "5210"]
    # glue.py needs its task: one line per task; shapes from the dataset registry.
    assert by_name["glue:mnli"][1:] == ["bert", "glue/mnli", "109484547"]  # 3 classes
    assert by_name["glue:sst2"][1:] == ["bert", "glue/sst2", "109483778"]
    for ln in lines:
        assert len(ln) == 4 and ln[3].isdigit(), ln


def test_data_dir_is_settable_from_the_command_line(tmp_path):
    """The configs' data_dir is "" (tfds's default), not None: ml_collections refuses to
    override a None field from the command line."""
    missing = tmp_path / "no_tfds_here"
    out = _cli(
        "--workdir",
        str(tmp_path / "w"),
        "--config",
        "experiments/configs/cifar10_resnet44.py:local",
        f"--config.dataset_kwargs.data_dir={missing}",
    )
    assert out.returncode != 0
    assert "not supported for overriding" not in out.stderr
    assert f"--data_dir={missing}" in out.stderr + out.stdout  # the prepare command names it


def test_missing_workdir_is_a_usage_error():
    out = _cli()
    assert out.returncode != 0 and "--workdir is required" in out.stderr


def test_smoke_run_writes_summary_plots_and_resumes(tmp_path, capsys):
    config = _local()
    with config.unlocked():
        default.add_paper_schedule(config)  # the ":paper" variant's extra method
        config.seeds = (0, 1)
        config.tsne = True
        config.tsne_points = 200
        config.num_devices = 1  # sharded training: test_interrupted_run_... uses 8 devices
    summary = train_and_evaluate(config, str(tmp_path))
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["dataset"] == "mnist1d"
    assert set(data["methods"]) == {
        "baseline",
        "weight_decay",
        "dropout",
        "pmm",
        "weight_decay_pmm",
        "pmm_paper",
    }
    for m in data["methods"].values():
        assert len(m["final_accuracy"]) == 2
        assert all(isinstance(a, float) and 0 <= a <= 1 for a in m["final_accuracy"])
        assert len(m["margin_mean"]) == 2 and len(m["margin_p10"]) == 2
        assert m["wall_time_s"] > 0
    assert data["base_config"]["batch_size"] == 96
    comp = data["comparisons_vs_baseline"]["pmm"]
    assert len(comp["diff_per_seed"]) == 2 and "paired_t" in comp and "wilcoxon" in comp
    # The paper's setting, PMM on top of weight decay, against weight decay alone.
    wd_pmm = data["paired"]["weight_decay_pmm - weight_decay"]
    want = np.subtract(
        data["methods"]["weight_decay_pmm"]["final_accuracy"],
        data["methods"]["weight_decay"]["final_accuracy"],
    )
    np.testing.assert_allclose(wd_pmm["diff_per_seed"], want)
    # Each method records the config it actually trained with.
    assert data["methods"]["pmm_paper"]["extra"]["config"]["pmm"]["penalty_reduction"] == "official"
    assert data["methods"]["weight_decay_pmm"]["extra"]["config"]["weight_decay"] == 1e-3
    for name in ("accuracy_curves.png", "margin_histograms.png", "tsne_features.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert (tmp_path / "pmm" / "metrics.jsonl").read_text().count("\n") >= 4
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "pmm" / "tb"))
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "pmm - baseline" in printed
    assert "weight_decay_pmm - weight_decay" in printed

    assert all(m["final_split"] == "test" for m in data["methods"].values())

    # Rerunning in the same workdir reads finished methods back instead of training,
    # also a result.json written before the fields were renamed (test_accuracy, ...).
    path = tmp_path / "pmm" / "result.json"
    old = json.loads(path.read_text())
    old["test_accuracy"], old["test_loss"] = old.pop("final_accuracy"), old.pop("final_loss")
    del old["final_split"]
    path.write_text(json.dumps(old))
    again = train_and_evaluate(config, str(tmp_path))
    assert "already finished" in capsys.readouterr().out
    for name, m in summary["methods"].items():
        for key in ("final_split", "final_accuracy", "final_loss", "margin_mean", "curves"):
            assert again["methods"][name][key] == m[key], (name, key)


def test_interrupted_run_resumes_from_checkpoint(tmp_path, capsys, monkeypatch):
    config = select_methods(_local(), ["pmm"])
    with config.unlocked():
        config.tsne = False
    full = train_and_evaluate(config, str(tmp_path / "full"))

    # Crash in the middle of step 25 (the last checkpoint is at step 20).
    real_get_dataset = job.get_dataset

    crashing = crashing_get_dataset(real_get_dataset, at_batch=25, error=KeyboardInterrupt)

    monkeypatch.setattr(job, "get_dataset", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, str(tmp_path / "part"))
    monkeypatch.setattr(job, "get_dataset", real_get_dataset)
    resumed = train_and_evaluate(config, str(tmp_path / "part"))
    assert "resuming at step 20/40" in capsys.readouterr().out
    assert resumed["methods"]["pmm"]["final_accuracy"] == full["methods"]["pmm"]["final_accuracy"]
    assert resumed["methods"]["pmm"]["curves"] == full["methods"]["pmm"]["curves"]
    log = (tmp_path / "part" / "pmm" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [10, 20, 20, 30, 40, 40]


def test_groups_in_parallel_threads_train_as_one_at_a_time_and_resume(tmp_path, monkeypatch):
    """parallel_groups=2 (the main job's): the same numbers as one group at a time; a crash
    in both threads is raised once the running groups end, and the rerun resumes both."""
    config = select_methods(_local(), ["baseline", "pmm"])
    with config.unlocked():
        config.tsne = False
        config.parallel_groups = 1
    alone = train_and_evaluate(config, str(tmp_path / "alone"))
    with config.unlocked():
        config.parallel_groups = 2

    real_get_dataset = job.get_dataset

    crashing = crashing_get_dataset(real_get_dataset, at_batch=25, error=RuntimeError)

    monkeypatch.setattr(job, "get_dataset", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_and_evaluate(config, str(tmp_path / "two"))
    monkeypatch.setattr(job, "get_dataset", real_get_dataset)
    two = train_and_evaluate(config, str(tmp_path / "two"))
    for name in ("baseline", "pmm"):
        for key in ("final_accuracy", "final_loss", "margin_mean", "curves"):
            assert two["methods"][name][key] == alone["methods"][name][key], (name, key)


@pytest.mark.slow
def test_sweep_local_writes_json_and_plot(tmp_path):
    config = sweep_mnist1d.get_config("local")
    with config.unlocked():
        config.seeds = (0,)
        config.num_devices = 1  # the sweep's logic is under test here, not sharding
    out = run_sweep(config, str(tmp_path))
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["split"] == "validation"
    families = {r["family"] for r in data["rows"]}
    assert families == {
        "baseline",
        "pmm_linear",
        "pmm_constant",
        "pmm_hinge_linear",
        "hinge_baseline",
        "weight_decay_pmm_linear",
        "pmm_paper",
        "weight_decay",
        "dropout",
    }
    assert set(out["selected"]) == families
    assert (tmp_path / "sweep_alpha.png").stat().st_size > 1000


def test_sweep_points_are_those_of_the_recorded_mnist1d_sweep():
    """Same point names and configs as the run in docs/sweep_mnist1d.json: read back, not redone."""
    with open(os.path.join(ROOT, "docs", "sweep_mnist1d.json")) as f:
        recorded = json.load(f)
    config = sweep_mnist1d.get_config()
    names = [f"{family}_{value:g}" for family, value, _ in grid_points(config)]
    assert names == [r["name"] for r in recorded["rows"]]
    # Fields added since are left out of the hash at the value that computes what the
    # recorded runs did (and unhashed fields do not count): the same runs.
    assert hashed_fields(config) == hashed_fields(recorded["config"])
    assert config_hash(config) == config_hash(recorded["config"])


def test_train_refuses_a_sweep_config(tmp_path):
    """A config with a sweep block runs with experiments.sweep; train would ignore the grid."""
    out = _cli("--workdir", str(tmp_path), "--config", "experiments/configs/tweets_minilm.py:sweep")
    assert out.returncode == 2 and "python -m experiments.sweep" in out.stderr
    assert not os.listdir(tmp_path)
