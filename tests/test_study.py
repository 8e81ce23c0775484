"""The comparison study (issue #19): its configs, protocol pieces, label noise on the
datasets, the self-calibrating alpha, robustness evaluation, and (slow) one task end to
end on its ``:local`` variant."""

import json
import os

import numpy as np
import pytest

from experiments import study, study_report
from experiments.config import check
from experiments.config.methods import expand_methods
from experiments.configs import default
from experiments.configs import study as study_configs
from experiments.data.registry import get_dataset
from experiments.run import robustness
from experiments.run import workdir as wd
from experiments.run.job import train_and_evaluate


@pytest.mark.parametrize("variant", [*study_configs.TASKS, "mnist1d:local", "digits:local"])
def test_every_task_is_a_valid_config_with_equal_grids(variant):
    c = study_configs.get_config(variant)
    assert check.check(c, device_count=1) == []
    sizes = {len(g["values"]) for g in c.study.grids.values()}
    assert len(sizes) == 1  # the same tuning budget for every tuned method
    for name, g in c.study.grids.items():
        assert list(g["values"]) == sorted(set(g["values"])), name
    if ":" not in variant:
        assert len(c.seeds) == 10 and len(c.study.tune_seeds) == 3
        # Noisy labels: two more values at the strong end (README "How PMM compares").
        assert sizes == ({8} if "noise" in variant else {6})
        if "noise" in variant:
            assert c.study.grids["label_smoothing"]["values"][-2:] == (0.5, 0.7)


def test_grid_points_set_every_field_of_the_grid():
    grid = {"fields": ("pmm.alpha_end", "pmm.alpha_init"), "scales": (1.0, 0.01)}
    got = study.point({"pmm": {"alpha_schedule": "linear"}}, grid, 1e-3)
    assert got == {"pmm": {"alpha_schedule": "linear", "alpha_end": 1e-3, "alpha_init": 1e-5}}


def test_holm():
    adjusted = study.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted["d"] is None
    np.testing.assert_allclose([adjusted[k] for k in "acb"], [0.03, 0.06, 0.06])


def test_final_config_takes_the_chosen_values():
    c = study_configs.get_config("mnist1d:local")
    grids = dict(c.study.grids)
    selected = {
        name: {"value": g["values"][-1], "overrides": study.point(
            c.methods[name].to_dict(), g, g["values"][-1])}
        for name, g in grids.items()
    }  # fmt: skip
    final = study.final_config(c, selected)
    assert "study" not in final and "attack" not in final
    methods = expand_methods(final)
    assert methods["weight_decay"].weight_decay == grids["weight_decay"]["values"][-1]
    assert list(methods) == list(c.method_order)


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_label_noise_keeps_the_test_split_and_is_one_draw_per_training_seed(name):
    kwargs = {"validation_size": 288 if name == "digits" else 500}
    clean = get_dataset(name, **kwargs)
    noisy = get_dataset(name, label_noise=0.4, label_noise_seed=3, **kwargs)
    again = get_dataset(name, label_noise=0.4, label_noise_seed=3, **kwargs)

    def labels(ds, split):
        return np.concatenate([b["y"][b["mask"]] for b in ds.eval_iter(split, 256)])

    np.testing.assert_array_equal(labels(clean, "test"), labels(noisy, "test"))
    flipped = np.mean(labels(clean, "validation") != labels(noisy, "validation"))
    assert 0.3 < flipped < 0.5
    first = [next(noisy.train_iter(s, 64))["y"] for s in (0, 1)]
    np.testing.assert_array_equal(first[0], next(again.train_iter(0, 64))["y"])  # recorded
    report = noisy.extra["label_noise"]([0, 1])
    assert report["rate"] == 0.4 and report["seed"] == 3
    assert all(0.35 < f < 0.45 for f in report["flipped_fraction"]["train"])
    assert report["flipped_fraction"]["train"][0] != report["flipped_fraction"]["train"][1]


def _local(**methods):
    c = default.get_config("local")
    c.num_devices = 1
    c.methods = methods
    c.method_order = tuple(methods)
    c.paired_comparisons = ()
    return c


def test_auto_alpha_is_measured_recorded_and_read_back(tmp_path, capsys):
    auto = {"pmm": {"alpha_schedule": "auto", "alpha_end": 0.01, "calibration_steps": 4}}
    c = _local(auto=auto)
    summary = train_and_evaluate(c, str(tmp_path))
    record = summary["methods"]["auto"]["extra"]["alpha_calibration"]
    assert record["steps"] == 4 and record["ratio"] == record["base_risk"] / record["penalty"]
    with open(tmp_path / "auto" / "meta.json") as f:
        assert json.load(f)["alpha_calibration"] == record
    assert "base risk / penalty at the start" in capsys.readouterr().out
    again = train_and_evaluate(c, str(tmp_path / "again"))  # deterministic
    assert again["methods"]["auto"]["extra"]["alpha_calibration"] == record


def test_robustness_of_a_tiny_run_and_its_read_back(tmp_path):
    c = _local(baseline={}, ls={"objective": {"name": "label_smoothing", "kwargs": {}}})
    c.attack = {"max_examples": 8, "steps": 2, "bisection_steps": 2}
    train_and_evaluate(c, str(tmp_path))
    configs = expand_methods(c)
    ds = get_dataset(c.dataset, **c.dataset_kwargs)
    for cfg in configs.values():
        cfg.attack = c.attack
    src = (configs["baseline"], wd.method_dir(tmp_path, "baseline"))
    out = robustness.evaluate_method("ls", configs["ls"], ds, wd.method_dir(tmp_path, "ls"),
                                     source=src)  # fmt: skip
    assert np.asarray(out["robust_l2"]).shape == (5, 1)  # [eps][seed]
    assert out["robust_l2"][0] == out["transfer_l2"][0]  # eps 0: clean accuracy
    assert set(out["minimal_l2"]) == {"median", "p10", "not_flipped", "clean_errors"}
    assert robustness.evaluate_method("ls", configs["ls"], ds, wd.method_dir(tmp_path, "ls"),
                                      source=src) == out  # fmt: skip


@pytest.mark.slow
def test_one_task_end_to_end_and_the_report(tmp_path):
    c = study_configs.get_config("mnist1d_noise20:local")
    keep = ("baseline", "weight_decay", "pmm", "weight_decay_pmm", "am_softmax", "pmm_auto")
    c.methods = {k: v for k, v in c.methods.items() if k in keep}
    c.method_order = keep
    c.study.grids = {k: v for k, v in c.study.grids.items() if k in keep}
    c.paired_comparisons = ()
    c.num_devices = 1  # batches of 100 do not split over the tests' 8 fake devices
    out = study.run_study(c, str(tmp_path / "noise20"))
    assert set(out["selected"]) == {"weight_decay", "pmm", "weight_decay_pmm", "am_softmax"}
    assert out["label_noise"]["rate"] == 0.2
    assert "pmm_auto - baseline" in out["comparisons"] and "pmm_auto - pmm" in out["comparisons"]
    again = study.run_study(c, str(tmp_path / "noise20"))  # everything read back
    assert again["methods"] == out["methods"]
    study_report.write_report(str(tmp_path), str(tmp_path / "docs"))
    text = (tmp_path / "docs" / "compare.md").read_text()
    assert "| pmm_auto |" in text and "noise20" in text
    assert "of the training labels actually flipped" in text
    assert os.path.exists(tmp_path / "docs" / "compare_robust.png")


def _report_row() -> dict:
    """One method's row of a ``study.json`` (``format_task``'s input), untuned."""
    rob = {"settings": {"eps_fractions": [0.1]}, "robust_l2": [[0.5, 0.7]]}
    return {"chosen": None, "mean": 90.0, "std": 1.0, "margin_mean": [0.1, 0.2],
            "robustness": rob, "step_time_ratio": 1.0}  # fmt: skip


def test_the_report_states_the_fraction_of_labels_actually_flipped():
    row = _report_row()
    study_json = {
        "task": "t", "dataset": "mnist1d", "model": "cnn1d", "steps": 10, "seeds": [0, 1],
        "methods": {"baseline": row}, "comparisons": {},
        "label_noise": {"rate": 0.2, "seed": 0,
                        "flipped_fraction": {"train": [0.19, 0.21], "validation": 0.18}},
    }  # fmt: skip
    text = study_report.format_task(study_json)
    assert "rate 0.2 (noise seed 0): 20.00 % of the training labels actually flipped" in text
    assert "19.00–21.00 %" in text and "18.00 % of the validation labels" in text
    assert "| baseline |  | 90.00 ± 1.00 |" in text and "| 60.0 |" in text
    study_json["label_noise"] = None
    assert "flipped" not in study_report.format_task(study_json)


def test_the_report_says_how_low_the_holm_adjusted_wilcoxon_p_can_go():
    row = _report_row()
    comps = {f"m{i} - baseline": {"mean_diff": 0.01, "holm_t": 0.5, "holm_wilcoxon": p}
             for i, p in enumerate((0.04, 0.2, 1.0))}  # fmt: skip
    study_json = {
        "task": "t", "dataset": "digits", "model": "mlp", "steps": 10,
        "seeds": list(range(10)), "methods": {"baseline": row}, "comparisons": comps,
    }  # fmt: skip
    text = study_report.format_task(study_json)
    # 10 seeds: smallest exact two-sided p = 2 / 1024; times 3 comparisons = 0.00586.
    assert "smallest exact two-sided p is 0.00195" in text
    assert "over the task's 3 comparisons none can fall below 0.00586; 1 of 3" in text
    study_json["comparisons"] = {}
    assert "Wilcoxon" not in study_report.format_task(study_json)


def test_the_report_marks_a_value_chosen_at_the_end_of_its_grid():
    row = _report_row()
    rows = [{"value": v} for v in (0.1, 0.3, 1.0)]
    study_json = {
        "task": "t", "dataset": "digits", "model": "mlp", "steps": 10, "seeds": [0, 1],
        "methods": {"baseline": {**row, "chosen": None}, "a": {**row, "chosen": 1.0},
                    "b": {**row, "chosen": 0.3}},
        "selected": {"a": {"value": 1.0, "rows": rows}, "b": {"value": 0.3, "rows": rows}},
        "comparisons": {},
    }  # fmt: skip
    text = study_report.format_task(study_json)
    assert "| a | 1 † |" in text and "| b | 0.3 |" in text
    assert "† chosen at an end of its grid (a):" in text
    study_json["selected"]["a"]["value"] = study_json["methods"]["a"]["chosen"] = 0.3
    assert "†" not in study_report.format_task(study_json)
