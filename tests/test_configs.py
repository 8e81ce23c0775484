"""Every config: listed with its parameter count; its local variant trains and evaluates
on tfds.testing.mock_data (no download, no TensorFlow)."""

import json
import os

import pytest

from experiments.configs.listing import load_config
from experiments.trainer import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")
VISION = [
    "cifar10_resnet44",
    "cifar10_vgg16",
    "cifar100_wrn28_10",
    "cifar100_vgg16",
    "imagenet_mobilenet",
]


def _config(name, variant=""):
    return load_config(os.path.join(CONFIG_DIR, f"{name}.py"), variant)


@pytest.mark.parametrize("name", VISION)
def test_paper_row_and_baseline_twin_differ_only_in_pmm(name):
    pmm, base = _config(name), _config(name, "baseline")
    assert pmm.pmm.alpha_schedule != "none" and base.pmm.alpha_schedule == "none"
    a, b = pmm.to_dict(), base.to_dict()
    for c in (a, b):
        c.pop("pmm"), c.pop("name")
    assert a == b
    with open(os.path.join(CONFIG_DIR, f"{name}.py")) as f:
        assert "python -m experiments.train" in f.read().split("\n\n")[1]


def test_recipes_match_the_paper():
    r44 = _config("cifar10_resnet44")
    assert (r44.batch_size, r44.num_epochs, r44.optimizer, r44.weight_decay) == (
        64,
        200,
        "sgd",
        1e-4,
    )
    assert (r44.pmm.alpha_init, r44.pmm.alpha_end) == (1e-5, 1e-3)
    assert r44.dataset_kwargs.validation_size == 5000
    wrn = _config("cifar100_wrn28_10")
    assert wrn.nesterov and wrn.lr_boundaries == (60, 120, 160) and wrn.lr_decay == 0.2
    assert wrn.dataset_kwargs.autoaugment and wrn.dataset_kwargs.cutout_size == 8
    mob = _config("imagenet_mobilenet")
    assert (mob.batch_size, mob.num_epochs, mob.pmm.alpha_schedule) == (256, 90, "constant")
    assert mob.pmm.alpha_end == 1e-5 and mob.lr_boundaries == (30, 60, 80)


@pytest.mark.parametrize("name", VISION)
def test_local_variant_trains_and_evaluates_on_mock_data(name, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = _config(name, "local")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=32):
        summary = train_and_evaluate(config, str(tmp_path))
    (method,) = summary["methods"].values()
    assert len(method["test_accuracy"]) == 1 and 0 <= method["test_accuracy"][0] <= 1
    assert method["steps"] == 2
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["dataset"] == config.dataset
    if config.get("save_best"):
        assert "best" in method["extra"]
