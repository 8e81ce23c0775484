"""Every config: listed with its parameter count; its local variant trains and evaluates
on tfds.testing.mock_data (no download, no TensorFlow)."""

import json
import os

import pytest

from experiments.config.files import load_config
from experiments.config.identity import group_methods
from experiments.config.methods import expand_methods
from experiments.data.registry import dataset_info, get_dataset
from experiments.run.job import train_and_evaluate

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
    """``name`` is a file's name, or ``glue:TASK`` (``glue.py:TASK[:variant]``)."""
    if name.startswith("glue:"):
        name, variant = "glue", name[len("glue:") :] + (f":{variant}" if variant else "")
    return load_config(os.path.join(CONFIG_DIR, f"{name}.py"), variant)


@pytest.mark.parametrize("name", VISION)
def test_paper_row_and_baseline_twin_differ_only_in_pmm(name):
    twin = "pmm" if name.startswith("cifar") else ""  # a CIFAR row's "" is the paired row
    pmm, base = _config(name, twin), _config(name, "baseline")
    assert pmm.pmm.alpha_schedule != "none" and base.pmm.alpha_schedule == "none"
    a, b = pmm.to_dict(), base.to_dict()
    for c in (a, b):
        c.pop("pmm"), c.pop("name")
    assert a == b
    with open(os.path.join(CONFIG_DIR, f"{name}.py")) as f:
        assert "python -m experiments.train" in f.read().split("\n\n")[1]


@pytest.mark.parametrize("name", [n for n in VISION if n.startswith("cifar")])
def test_cifar_rows_train_the_paired_row_in_one_program(name):
    """By default: baseline and PMM x 5 seeds, one group (one program, one batch
    stream), whole epochs per call; each twin is the config of its variant."""
    c = _config(name)
    assert c.seeds == (0, 1, 2, 3, 4) and c.runs_mode == "auto" and c.epochs_per_call == 1
    methods = expand_methods(c)
    assert list(methods) == ["baseline", "pmm"]
    assert group_methods(methods) == [["baseline", "pmm"]]
    for twin, config in methods.items():
        alone = _config(name, twin).to_dict()
        together = config.to_dict()
        for d in (alone, together):
            d.pop("name")
        assert together == alone, twin
    local = expand_methods(_config(name, "local"))
    assert list(local) == ["baseline", "pmm"]
    assert group_methods(local) == [["baseline", "pmm"]]


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


GLUE = ["glue:mnli", "glue:qnli", "glue:rte", "glue:qqp", "glue:mrpc", "glue:sst2"]


@pytest.mark.parametrize("name", VISION + GLUE)
def test_paper_rows_use_the_authors_arithmetic_and_alphas(name):
    """The paper's alphas belong to the authors' reduction: every paper row uses it."""
    c = _config(name)
    assert c.pmm.penalty_reduction == "official"
    if name.startswith("cifar"):
        assert c.pmm.alpha_schedule == "epoch_linear"
        assert (c.pmm.alpha_init, c.pmm.alpha_end) == (1e-5, 1e-3)
    else:
        assert (c.pmm.alpha_schedule, c.pmm.alpha_end) == ("constant", 1e-5)
    if name == "glue:mnli":
        mm = _config(name, "mismatched")
        assert (mm.pmm.penalty_reduction, mm.pmm.alpha_end) == ("official", 1e-6)


@pytest.mark.parametrize(
    "name,variant",
    [("default", "local"), *((n, "local") for n in VISION), ("imagenet_mobilenet", "")],
)
def test_dataset_info_is_what_the_dataset_says(name, variant):
    """``--list-configs``' classes and shapes, without data, match the built dataset."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = _config(name, variant)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=16):
        ds = get_dataset(config.dataset, **config.dataset_kwargs)
    assert dataset_info(config.dataset, **config.dataset_kwargs) == (ds.num_classes, ds.input_spec)


@pytest.mark.slow
@pytest.mark.parametrize("name", VISION)
def test_local_variant_trains_and_evaluates_on_mock_data(name, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = _config(name, "local")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=32):
        summary = train_and_evaluate(config, str(tmp_path))
    expected = ["baseline", "pmm"] if name.startswith("cifar") else [config.name]
    assert list(summary["methods"]) == expected  # CIFAR: the paired row, in one program
    for method in summary["methods"].values():
        assert len(method["final_accuracy"]) == 1 and 0 <= method["final_accuracy"][0] <= 1
        assert method["steps"] == 2
        if config.get("save_best"):
            assert "best" in method["extra"]
        if len(expected) == 2:
            assert method["extra"]["runs"]["group"] == expected
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["dataset"] == config.dataset


@pytest.mark.parametrize("name", GLUE)
def test_glue_row_and_twin(name):
    pmm, base = _config(name), _config(name, "baseline")
    assert pmm.pmm.alpha_schedule == "constant" and pmm.pmm.alpha_end == 1e-5
    assert base.pmm.alpha_schedule == "none"
    assert (pmm.learning_rate, pmm.num_epochs) == (2e-5, 3)
    assert (pmm.name, base.name) == (name.replace(":", "_"), name.replace(":", "_") + "_baseline")
    a, b = pmm.to_dict(), base.to_dict()
    for c in (a, b):
        c.pop("pmm"), c.pop("name")
    assert a == b
    if name == "glue:mnli":
        mm = _config(name, "mismatched")
        assert mm.pmm.alpha_end == 1e-6 and mm.final_split == "validation_mismatched"
        assert pmm.eval_split == "validation_matched"


def test_glue_takes_the_task_as_its_variant():
    """``glue.py:TASK[:VARIANT]``: ml_collections passes everything after the first colon."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    with pytest.raises(ValueError, match=r"needs the task.*mnli, qnli, rte, qqp, mrpc, sst2"):
        _config("glue")
    with pytest.raises(ValueError, match=r"Unknown variant 'mismatched'"):
        _config("glue:mrpc", "mismatched")  # MNLI's only
    path = os.path.join(CONFIG_DIR, "glue.py")
    config = ConfigFileFlagParser("config").parse(f"{path}:mnli:baseline")
    assert config.name == "glue_mnli_baseline" and config.dataset == "glue/mnli"


def test_glue_needs_a_checkpoint_path(tmp_path):
    with pytest.raises(ValueError, match=r"pretrained\.path"):
        train_and_evaluate(_config("glue:sst2", "local"), str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glue:sst2", "glue:mrpc", "glue:mnli"])
def test_glue_local_variant_fine_tunes_a_checkpoint_on_mock_data(name, tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    from tests.bert_helpers import fake_hf_state_dict, tiny_config, tiny_tokenizer, write_checkpoint

    cfg = tiny_config()
    ckpt = write_checkpoint(
        tmp_path / "ckpt", cfg, fake_hf_state_dict(cfg), tokenizer=tiny_tokenizer()
    )
    config = _config(name, "local")
    with config.unlocked():
        config.pretrained.path = str(ckpt)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=16):
        summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert f"[pretrained] {ckpt}" in capsys.readouterr().out  # the weights were loaded
    (method,) = summary["methods"].values()
    splits = method["extra"]["splits"]
    if name == "glue:mnli":
        assert set(splits) == {"validation_matched", "validation_mismatched"}
    if name == "glue:mrpc":
        assert "f1" in method["extra"]["final_metrics"]
    assert 0 <= method["final_accuracy"][0] <= 1
