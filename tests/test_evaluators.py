"""Evaluators (experiments/evaluators.py): chosen by name, per-seed metrics of a split."""

import numpy as np
import pytest

from experiments import evaluators
from experiments.config import check
from experiments.config.problems import ConfigError
from experiments.configs import default


def _outs():
    """Two seeds, four real examples and one padding row (mask False)."""
    return {
        "correct": np.array([[1, 1, 0, 1, 0], [0, 1, 0, 1, 1]], bool),
        "loss": np.array([[0.1, 0.2, 0.9, 0.3, 0.0], [1.0, 0.5, 0.5, 0.2, 0.0]], np.float32),
        "pred": np.array([[1, 0, 1, 1, 0], [0, 0, 1, 1, 0]]),
        "label": np.array([[1, 0, 0, 1, 0], [1, 0, 0, 1, 0]]),
        "raw_margin": np.array([[2.0, 1.0, -1.0, 4.0, 9.0], [1.0, 1.0, -2.0, 2.0, 9.0]]),
        "feature_norm": np.array([[1.0, 2.0, 4.0, 1.0, 0.0], [2.0, 2.0, 1.0, 1.0, 0.0]]),
        "mask": np.array([[True] * 4 + [False]] * 2),
    }


def test_collect_drops_padding_and_evaluators_give_per_seed_numbers():
    half = {k: v[:, :3] for k, v in _outs().items()}
    rest = {k: v[:, 3:] for k, v in _outs().items()}
    outs = evaluators.collect([half, rest])
    assert outs["loss"].shape == (2, 4)
    names = evaluators.select({}, ("accuracy", "f1"))
    assert names == ("accuracy", "loss", "margins", "f1")
    m = evaluators.evaluate(outs, names)
    assert list(m) == ["accuracy", "loss", "margin_mean", "margin_p10", "f1"]
    np.testing.assert_allclose(m["accuracy"], [0.75, 0.5])
    np.testing.assert_allclose(m["loss"], [0.375, 0.55], rtol=1e-6)
    # Margins over each seed's radius on the split (4 and 2).
    np.testing.assert_allclose(m["margin_mean"], [6 / 16, 2 / 8])
    # Seed 0: tp=2, fp=1, fn=0 -> 4/5; seed 1: tp=1, fp=1, fn=1 -> 1/2.
    np.testing.assert_allclose(m["f1"], [0.8, 0.5])
    assert evaluators.to_lists(m, exclude=evaluators.MARGIN_METRICS) == {
        "accuracy": [0.75, 0.5],
        "loss": pytest.approx([0.375, 0.55]),
        "f1": [0.8, 0.5],
    }


def test_the_config_chooses_over_what_the_dataset_declares():
    assert evaluators.select({"evaluators": ("f1",)}, ("accuracy",))[-1] == "f1"
    assert evaluators.select({}, ()) == evaluators.CORE
    with pytest.raises(ValueError, match="Unknown evaluators"):
        evaluators.select({"evaluators": ("bleu",)})
    config = default.get_config("local")
    with config.unlocked():
        config.batch_size, config.eval_batch_size = 96, 200  # 8 fake test devices
        config.evaluators = ("f1",)
    check.validate(config)
    config.evaluators = ("bleu",)
    with pytest.raises(ConfigError, match="evaluators = \\('bleu',\\)"):
        check.validate(config)


def test_per_split_reuses_what_was_evaluated():
    calls = []

    def evaluate_split(split):
        calls.append(split)
        return {"accuracy": np.array([0.5])}

    done = {"validation_matched": {"accuracy": np.array([0.9])}}
    splits = evaluators.per_split(
        evaluate_split, ("validation_matched", "validation_mismatched"), done
    )
    assert splits == {
        "validation_matched": {"accuracy": [0.9]},
        "validation_mismatched": {"accuracy": [0.5]},
    }
    assert calls == ["validation_mismatched"]
