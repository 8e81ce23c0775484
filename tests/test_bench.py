"""The benchmark CLI writes the documented JSON and its modes parse; the PyTorch peer runs.

(The peer's penalty is held against ours in tests/test_official_torch.py.)
"""

import json

import numpy as np
import pytest

from experiments.bench import cli, timing


@pytest.mark.slow
def test_quick_run_writes_documented_schema(tmp_path):
    out = tmp_path / "bench.json"
    args = "--quick --only cnn1d --only penalty --reps 3 --penalty-ks 10,100 --out"
    cli.main([*args.split(), str(out)])
    result = json.loads(out.read_text())
    assert isinstance(result["device"], str) and isinstance(result["jax"], str)
    assert isinstance(result["peers"], list)
    [row] = result["rows"]
    assert "cnn1d" in row["name"] and row["batch"] == 100
    for key in ("ce_step_ms", "pmm_step_ms", "pmm_overhead"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert row["pmm_overhead"] == pytest.approx(row["pmm_step_ms"] / row["ce_step_ms"])
    assert row["nonfinite_steps"] == {"ce": 0.0, "pmm": 0.0}
    assert [r["k"] for r in result["penalty_vs_k"]] == [10, 100]
    assert all(r["penalty_ms"] > 0 for r in result["penalty_vs_k"])


def test_paired_ratio_interval_brackets_the_median():
    rng = np.random.default_rng(0)
    den = rng.uniform(1.0, 2.0, 40)
    out = timing.paired_ratio(1.1 * den, den)
    assert out["median"] == pytest.approx(1.1)
    lo, hi = out["ci95"]
    assert lo <= out["median"] <= hi and out["pairs"] == 40


def test_torch_resnet_steps_run():
    pytest.importorskip("torch")
    from experiments.bench import torch_peer

    steps, info = torch_peer.make_resnet_steps(4, depth=8, width=4)
    assert set(steps) == {"ce", "pmm"} and info["layout"].startswith("NCHW")
    for step in steps.values():
        assert np.isfinite(float(step()))


@pytest.mark.parametrize("mode", [[], ["profile"], ["determinism"], ["vision"], ["sharded-head"]])
def test_every_mode_of_the_one_cli_parses(mode, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*mode, "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: {' '.join(['python -m experiments.bench', *mode])} ")


def test_sharded_head_mode_writes_rows_with_bytes_and_times(tmp_path):
    out = tmp_path / "sharded.json"
    args = "sharded-head --ks 512 --batch 16 --dim 8 --reps 2 --out"
    cli.main([*args.split(), str(out)])
    result = json.loads(out.read_text())
    assert result["devices"] == 8 and result["load_avg_start"]
    rows = {r["form"]: r for r in result["rows"]}
    assert set(rows) == {"class_parallel", "all_gathered", "explicit_jit", "auto_jit"}
    for row in rows.values():
        assert row["k"] == 512 and row["time_ms"] > 0 and row["collectives"] > 0
        assert row.get("max_rel_error_vs", {"class_parallel": 0.0})["class_parallel"] < 1e-5
    # The class-parallel forms move no k/n-sized array; the all-gathered one does.
    assert rows["class_parallel"]["largest_dim"] < 512 // 4
    assert rows["explicit_jit"]["bytes"] == rows["class_parallel"]["bytes"]
    assert rows["all_gathered"]["largest_dim"] == 512
