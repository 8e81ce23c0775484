"""``python -m experiments.bench paper-speed``: the documented JSON, its arithmetic,
the CPU defaults, and finite losses from the R-runs program (tiny ResNet, in-process)."""

import json
import math
import types

import pytest

from experiments.bench import cli, paper_speed


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_speed") / "paper_speed.json"
    peer = "eager" if paper_speed_torch() else "none"
    argv = "paper-speed --tiny --modes vmap --dtypes float32 --steps-per-call 2 --reps 2"
    cli.main([*argv.split(), "--peer", peer, "--out", str(out)])  # no --runs: the CPU default
    return json.loads(out.read_text())


def paper_speed_torch():
    from experiments.bench import torch_peer

    return torch_peer.available()


def _check_throughput(row, runs):
    assert row["runs"] == runs and row["batch_per_run"] == 64
    for key in ("step_ms", "images_per_s", "projected_200_epochs_min"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert row["images_per_s"] == pytest.approx(runs * 64 * 1000 / row["step_ms"])
    assert row["projected_200_epochs_min"] == pytest.approx(200 * 703 * row["step_ms"] / 60000)


@pytest.mark.slow
def test_tiny_run_writes_the_documented_schema(tiny_result):
    r = tiny_result
    for key in ("device", "jax", "date", "command"):
        assert isinstance(r[key], str) and r[key], key
    assert r["command"].startswith("python -m experiments.bench paper-speed ")
    assert isinstance(r["rows"], list) and isinstance(r["peers"], list)
    # CPU default: R in {1, 2}; the vmap rows and the R=1 no-scan reference.
    assert {(row["runs"], row["mode"]) for row in r["rows"]} == {
        (1, "vmap"),
        (2, "vmap"),
        (1, paper_speed.NOSCAN),
    }
    for row in r["rows"]:
        _check_throughput(row, row["runs"])
        assert row["dtype"] == "float32" and row["steps_per_call"] == 2
        assert isinstance(row["name"], str) and row["compile_s"] >= 0
        assert row["stat"] == "median" and len(row["calls_ms"]) == 2
    [comparison] = r["comparisons"]
    assert comparison["runs"] == 2 and comparison["ratio"] > 0
    assert "ratio_vs_noscan" in comparison


@pytest.mark.slow
def test_r2_program_trains_both_methods_with_finite_losses(tiny_result):
    [row] = [row for row in tiny_result["rows"] if row["runs"] == 2]
    assert row["methods"] == ["baseline", "pmm"] and row["seeds_per_method"] == 1
    assert row["loss_finite"]
    for losses in row["last_loss"].values():
        assert len(losses) == 1 and all(math.isfinite(v) for v in losses)


@pytest.mark.slow
def test_torch_peer_row(tiny_result):
    if not paper_speed_torch():
        assert tiny_result["peers"] == []
        pytest.skip("PyTorch not installed")
    [peer] = tiny_result["peers"]
    _check_throughput(peer, 1)
    assert peer["variant"] == "eager" and "eager" in peer["how"]
    assert peer["variants"][0]["loss_finite"]


def test_layout_and_defaults():
    assert paper_speed.layout(1) == (("pmm",), 1)
    assert paper_speed.layout(2) == (("baseline", "pmm"), 1)
    assert paper_speed.layout(10) == (("baseline", "pmm"), 5)
    with pytest.raises(ValueError):
        paper_speed.layout(3)
    assert paper_speed.default_runs("cpu") == (1, 2)
    assert paper_speed.default_runs("gpu") == (1, 2, 10)
    assert paper_speed.STEPS_PER_EPOCH == 703
    from experiments.config.fields import CANDIDATES

    assert paper_speed.MODES == CANDIDATES


def test_plan_puts_first_things_first_and_skips_slow_unroll_on_cpu():
    args = types.SimpleNamespace(
        runs=(1, 2, 10),
        modes=paper_speed.MODES,
        dtypes=paper_speed.DTYPES,
        isolate=("unroll:10",),
        allow_slow_compile=False,
        reference=True,
        peer=("eager", "max-autotune-no-cudagraphs", "reduce-overhead"),
        xla_variants=("cmdbuf_while",),
    )
    tasks, skipped = paper_speed.plan(args, "cpu")
    assert tasks[0] == ("row", 1, paper_speed.NOSCAN, "float32")
    assert tasks[-1] == ("peer", "max-autotune-no-cudagraphs")
    assert ("peer", "eager") in tasks[:9]
    names = {s["name"] for s in skipped}
    assert "resnet44_unroll_r10_float32" in names and "xla_variants" in names
    assert not any(t[0] == "child" for t in tasks)
    gpu_tasks, gpu_skipped = paper_speed.plan(args, "gpu")
    assert ("child", 10, "unroll", "float32") in gpu_tasks and not gpu_skipped
    assert ("xla", "cmdbuf_while") in gpu_tasks
    assert paper_speed.task_name(tasks[0], False) == "resnet44_noscan_r1_float32"
    assert paper_speed.task_name(("peer", "eager"), True) == "torch_eager"


def test_comparisons_hold_r_runs_against_r_separate_runs():
    def row(runs, mode, ms):
        return {"name": f"{mode}{runs}", "runs": runs, "mode": mode, "dtype": "float32",
                "step_ms": ms}  # fmt: skip

    rows = [row(1, "vmap", 12.0), row(1, "sequential", 10.0), row(2, "vmap", 30.0)]
    rows.append(row(1, paper_speed.NOSCAN, 5.0))
    [c] = paper_speed.comparisons(rows)
    assert c["separate_runs_ms"] == 20.0 and c["ratio"] == 1.5 and c["slower_than_separate"]
    assert c["separate_from"] == "sequential1" and c["ratio_vs_noscan"] == 3.0


def test_the_one_cli_has_the_mode(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["paper-speed", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m experiments.bench paper-speed ")
    assert "paper-speed" in cli.MODES and "paper-speed" in cli.EPILOG
