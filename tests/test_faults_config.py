"""Issue #12, "Nothing silent": config faults an adversarial user found, each reproduced.

Command-line overrides that a method silently shadowed, values that failed only
when a later method started (or never), division by zero, and bare tracebacks
for unknown fields: every config is now checked as a whole, for every method,
before anything trains (``experiments/config/check.py``), with one error naming
each field, its value and what is allowed.
"""

import json
import os
import subprocess
import sys
import time

import jax
import pytest

from experiments.config import argv, check
from experiments.config.files import config_files, load_config
from experiments.config.methods import expand_methods, merge, select_methods
from experiments.config.problems import ConfigError
from experiments.configs import default, sweep_mnist1d, tweets_minilm
from experiments.run import job
from experiments.sweep import grid_points, run_sweep
from tests.fake_devices import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")
LOCAL = "experiments/configs/default.py:local"


def _cli(workdir, *args):
    """The real CLI in a subprocess, on one CPU device: (returncode, stderr, seconds)."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--workdir", str(workdir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=one_device_env(),
    )
    return out.returncode, out.stderr, time.perf_counter() - start


def _nothing_trained(workdir) -> bool:
    """No method started: no method directory, no summary."""
    return not os.path.exists(workdir) or not any(
        os.path.isdir(os.path.join(workdir, d)) or d == "summary.json" for d in os.listdir(workdir)
    )


def _local(**fields):
    """default.py:local on one device, with ``fields`` set (as --config.FIELD=... would)."""
    config = default.get_config("local")
    with config.unlocked():
        config.num_devices = 1
        for path, value in fields.items():
            *parents, last = path.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[last] = value
    config.unlock()  # tests may add fields, as a config file could
    return config


def _fields(problems) -> list[str]:
    return [p.field for p in problems]


# --- 1. Overrides that a method shadows, or that apply where not asked -------------------


def test_cli_override_that_a_method_shadows_is_refused_before_training(tmp_path):
    """Was: --config.pmm.alpha_end / --config.weight_decay trained with the methods' own
    values (pmm kept its alpha, weight_decay kept 1e-4) while summary.json recorded the
    overrides as used. Now: exit 2 at once, naming each method and the spelling that works."""
    flags = ["--config.pmm.alpha_end=0.5", "--config.weight_decay=0.5"]
    code, err, _ = _cli(tmp_path / "w", "--config", LOCAL, *flags)
    assert code == 2, err
    assert "Traceback" not in err and "nothing was trained" in err
    for method in ("pmm", "weight_decay_pmm"):
        assert f"--config.methods.{method}.pmm.alpha_end=0.5" in err
    for method in ("weight_decay", "weight_decay_pmm"):
        assert f"methods.{method}.weight_decay = {default.WEIGHT_DECAY}" in err
        assert f"--config.methods.{method}.weight_decay=0.5" in err
    assert _nothing_trained(tmp_path / "w")


def test_override_equal_to_a_methods_own_value_shadows_nothing():
    value = default.PMM_ALPHA_END  # what the pmm method sets itself
    config = _local(**{"pmm.alpha_end": value})
    chosen = select_methods(config, ["baseline", "pmm"])
    assert check.check(chosen, overrides={"pmm.alpha_end": value}) == []


def test_override_reaches_exactly_the_methods_that_do_not_set_the_field():
    config = _local(weight_decay=0.5)
    overrides = {"weight_decay": 0.5}
    chosen = select_methods(config, ["baseline", "pmm", "dropout"])
    assert check.check(chosen, overrides=overrides) == []
    effective = expand_methods(chosen)
    assert {n: c.weight_decay for n, c in effective.items()} == {
        "baseline": 0.5,
        "dropout": 0.5,
        "pmm": 0.5,
    }
    # With the method that sets it, the override is refused, not silently shadowed.
    problems = check.check(config, overrides=overrides)
    assert _fields(problems) == [
        "methods.weight_decay.weight_decay",
        "methods.weight_decay_pmm.weight_decay",
    ]
    # The spelling the error names reaches the method, and nothing else.
    config.methods.weight_decay.weight_decay = 0.5
    assert check.check(config, overrides={"methods.weight_decay.weight_decay": 0.5}) == []
    assert expand_methods(config)["weight_decay"].weight_decay == 0.5
    assert expand_methods(config)["weight_decay_pmm"].weight_decay == default.WEIGHT_DECAY


def test_bogus_alpha_schedule_that_every_method_shadows_is_refused():
    """Was: with methods that each set alpha_schedule (tweets_minilm), the value was ignored
    and the run exited 0."""
    config = tweets_minilm.get_config("local")
    with config.unlocked():
        config.pmm.alpha_schedule = "bogus"
    problems = check.check(config, overrides={"pmm.alpha_schedule": "bogus"}, device_count=1)
    text = "\n".join(map(str, problems))
    assert "pmm.alpha_schedule = 'bogus': must be one of 'none', 'constant'" in text
    assert "no method uses this value" in text
    assert "--config.methods.baseline.pmm.alpha_schedule=bogus" in text
    assert "--config.methods.pmm.pmm.alpha_schedule=bogus" in text


# --- 2. Values that failed late: only when their method started, or at the first eval ----


def test_bogus_penalty_reduction_fails_before_the_first_method(tmp_path, monkeypatch):
    """Was: a ValueError when the `pmm` method started, after three methods had trained."""
    config = _local()
    config.methods.pmm.pmm.penalty_reduction = "bogus"
    loaded = []
    monkeypatch.setattr(job, "get_dataset", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError) as e:
        job.train_and_evaluate(config, str(tmp_path / "w"))
    assert str(e.value).count("\n") == 1  # one problem, one line
    assert (
        "methods.pmm.pmm.penalty_reduction = 'bogus': must be one of 'mean', 'official', 'sum'"
        in str(e.value)
    )
    assert not loaded and _nothing_trained(tmp_path / "w")  # not even the data was read
    # In the base config, it names the methods that would use it.
    problems = check.check(_local(**{"pmm.penalty_reduction": "bogus"}))
    assert _fields(problems) == ["pmm.penalty_reduction"]
    users = "baseline, weight_decay, dropout, pmm, weight_decay_pmm"
    assert f"(used by methods {users})" in str(problems[0])


def test_eval_batch_size_that_does_not_split_over_the_devices():
    """Was: a ValueError at the first evaluation, after the first training steps."""
    assert jax.device_count() == 8  # the tests' fake devices
    config = _local(num_devices=0, batch_size=96, eval_batch_size=500)
    (problem,) = check.check(config)
    assert problem.field == "eval_batch_size" and problem.value == 500
    assert "multiple of the 8 devices" in problem.allowed and "e.g. 504" in problem.allowed
    # The devices the run will use: num_devices, or all of them.
    assert check.check(_local(num_devices=4, batch_size=96, eval_batch_size=500)) == []
    assert _fields(check.check(_local(num_devices=16))) == ["num_devices"]
    config = _local(num_devices=8, batch_size=96, eval_batch_size=200)
    config.methods.dropout.batch_size = 100
    assert _fields(check.check(config)) == ["methods.dropout.batch_size"]


def test_zero_batch_size_and_steps_per_call_are_refused_not_divided_by(tmp_path):
    """Was: ZeroDivisionError."""
    config = _local(batch_size=0, steps_per_call=0)
    with pytest.raises(ConfigError) as e:
        job.train_and_evaluate(config, str(tmp_path / "w"))
    assert _fields(e.value.problems) == ["batch_size", "steps_per_call"]
    assert "batch_size = 0: must be an integer >= 1" in str(e.value)
    assert "steps_per_call = 0: must be an integer >= 1" in str(e.value)


def test_every_problem_in_one_error_each_with_field_value_and_what_is_allowed():
    config = _local(
        optimizer="sgdd",
        learning_rate=0.0,
        seeds=(1, 1),
        eval_every_steps=25,
        lr_schedule="step",
        **{"pmm.alpha_init": float("nan")},
    )
    config.methods.dropout.model_kwargs.dropout_rate = 1.0
    config.methods.pmm.pmm.alpha_schedule = "constant"
    config.methods.pmm.pmm.alpha_end = 0.0
    problems = check.check(config)
    assert _fields(problems) == [
        "seeds",
        "optimizer",
        "learning_rate",
        "pmm.alpha_init",
        "eval_every_steps",
        "lr_boundaries",
        "methods.dropout.model_kwargs.dropout_rate",
        "methods.pmm.pmm.alpha_end",
    ]
    text = "\n".join(map(str, problems))
    assert "optimizer = 'sgdd': must be one of 'sgd', 'adam', 'adamw'" in text
    assert "eval_every_steps = 25: must be a multiple of steps_per_call=10" in text
    assert "pmm.alpha_end = 0.0: must be > 0 with pmm.alpha_schedule='constant'" in text
    assert "dropout_rate = 1.0: must be a finite number in [0, 1)" in text


def test_values_that_need_the_dataset_are_checked_after_reading_it(tmp_path):
    """Epoch-based intervals and split names: checked with the dataset, before training."""
    config = select_methods(_local(eval_split="validation"), ["baseline"])
    with pytest.raises(ConfigError, match=r"eval_split = 'validation': must be a split of the"):
        job.train_and_evaluate(config, str(tmp_path / "w"))
    assert _nothing_trained(tmp_path / "w")
    vision = load_config(os.path.join(CONFIG_DIR, "cifar10_resnet44.py"))
    with vision.unlocked():
        vision.epochs_per_call = 0.0  # steps_per_call decides
        vision.steps_per_call = 2
        vision.log_every_epochs = 0.25
    assert check.check(vision, device_count=1) == []  # steps per epoch not known yet
    problems = check.check(
        vision, device_count=1, num_train=45_000, eval_splits=("validation", "test")
    )
    # 703 steps per epoch: the log interval (176 steps) and the run (140,600) are fine.
    assert _fields(problems) == ["eval_every_epochs", "checkpoint_every_epochs"]
    assert "is 703 steps (703 steps per epoch), which must be a positive multiple of" in str(
        problems[0]
    )
    # Half an epoch per call is 352 steps: an epoch (703) is not a whole number of calls.
    with vision.unlocked():
        vision.epochs_per_call = 0.5
        vision.log_every_epochs = 1
    problems = check.check(
        vision, device_count=1, num_train=45_000, eval_splits=("validation", "test")
    )
    assert _fields(problems) == [
        "log_every_epochs",
        "eval_every_epochs",
        "checkpoint_every_epochs",
        "num_epochs",
    ]


# --- 3. Unknown fields and method names --------------------------------------------------


def test_cli_unknown_field_and_method_name_give_one_line_each(tmp_path):
    """Was: a bare `AttributeError: 'no_such_field'` after three chained tracebacks."""
    code, err, _ = _cli(
        tmp_path / "w",
        "--config",
        LOCAL,
        "--config.no_such_field=1",
        "--config.methods.pmmm.pmm.alpha_end=1e-3",
        "--config.pmm.alpha_ennd=1e-3",
    )
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert "--config.no_such_field" in lines[0] and "closest known fields:" in lines[0]
    assert "no method 'pmmm'" in lines[1] and "did you mean pmm?" in lines[1]
    assert "no field 'pmm.alpha_ennd'" in lines[2] and "pmm.alpha_end" in lines[2]
    assert _nothing_trained(tmp_path / "w")


def test_unknown_fields_in_a_config_or_a_method_are_refused_with_the_closest_names():
    config = _local()
    with config.unlocked():
        config.no_such_field = 1
        config.methods.pmm.pmm.alpha_ennd = 1e-3  # merged in silently before
        config.methods.dropout.model_kwargs.dropout_rat = 0.5  # a TypeError at its turn before
        config.methods.baseline.dataset = "cifar10"  # read from the base config only
        config.method_order = (*config.method_order, "pmmm")  # silently skipped before
        config.paired_comparisons = (("pmm", "weight_deacy"),)  # silently skipped before
    text = "\n".join(map(str, check.check(config)))
    assert "no_such_field = 1: unknown field" in text
    assert "methods.pmm.pmm.alpha_ennd = 0.001: unknown field; did you mean pmm.alpha_end" in text
    assert "methods.dropout.model_kwargs.dropout_rat = 0.5: is not an argument of model" in text
    assert "did you mean dropout_rate?" in text
    assert "methods.baseline.dataset = 'cifar10': a method cannot set this field" in text
    assert "'pmmm' is not a method; did you mean pmm?" in text
    assert "paired_comparisons = (('pmm', 'weight_deacy'),): 'weight_deacy' is not a method" in text


def test_unknown_override_names_the_closest_fields():
    config = default.get_config("local")
    line = argv.unknown_override(config, "methods.pmm.pmm.alpha_ennd", LOCAL)
    assert "closest known fields: methods.pmm.pmm.alpha_end" in line
    line = argv.unknown_override(config, "methods.baseline.weight_decay", LOCAL)
    assert "does not set weight_decay" in line and "--methods=baseline" in line
    assert argv.unknown_override(config, "methods.pmm.pmm.alpha_end", LOCAL) is None


# --- 4. A subset of methods: --methods ---------------------------------------------------


def test_cli_methods_flag_with_a_typo_is_refused_before_training(tmp_path):
    code, err, _ = _cli(tmp_path / "w", "--config", LOCAL, "--methods=baseline,pmmm")
    assert code == 2 and "Traceback" not in err, err
    assert "--methods = 'pmmm': not a method of this config; did you mean pmm?" in err
    assert _nothing_trained(tmp_path / "w")


def test_select_methods_keeps_the_config_order_and_only_pairs_that_run():
    config = default.get_config("local")
    chosen = select_methods(config, ["weight_decay_pmm", "pmm", "weight_decay"])
    assert list(expand_methods(chosen)) == ["weight_decay", "pmm", "weight_decay_pmm"]
    pairs = (("pmm", "weight_decay"), ("weight_decay_pmm", "weight_decay"))
    assert chosen.paired_comparisons == pairs
    with pytest.raises(ConfigError, match="names no method"):
        select_methods(config, [])
    one_run = load_config(os.path.join(CONFIG_DIR, "imagenet_mobilenet.py"))
    with pytest.raises(ConfigError, match="has no methods"):
        select_methods(one_run, ["pmm"])
    paired = load_config(os.path.join(CONFIG_DIR, "cifar10_resnet44.py"))  # the paired row
    assert list(expand_methods(select_methods(paired, ["pmm"]))) == ["pmm"]
    # An override of a method that does not run would do nothing: refused.
    problems = check.check(
        select_methods(config, ["baseline"]),
        overrides={"methods.pmm.pmm.alpha_end": 1e-3},
        device_count=1,
    )
    assert _fields(problems) == ["--config.methods.pmm.pmm.alpha_end"]


# --- 5. What the run records --------------------------------------------------------------


def test_config_json_and_summary_record_each_methods_effective_config(tmp_path):
    """Was: summary.json's `config` showed the base values as if every method used them."""
    config = _local(
        num_train_steps=10, log_every_steps=10, eval_every_steps=10, checkpoint_every_steps=10
    )
    config = select_methods(config, ["baseline", "weight_decay"])
    with config.unlocked():
        config.weight_decay = 0.5  # reaches baseline only: weight_decay sets its own
    job.train_and_evaluate(config, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "config" not in summary and summary["base_config"]["weight_decay"] == 0.5
    for name, want in (("baseline", 0.5), ("weight_decay", default.WEIGHT_DECAY)):
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["weight_decay"] == want and saved["methods"] == {}
        assert summary["methods"][name]["extra"]["config"] == saved


# --- 6. Every config validates; the sweep too ------------------------------------------

VARIANTS = {
    "default": ["", "local", "paper", "auto"],
    "sweep_mnist1d": ["", "local", "layers"],
    "tweets_minilm": ["", "sweep", "full", "local", "auto"],
    "glue": [
        *(
            f"{task}{v}"
            for task in ("mnli", "qnli", "qqp", "rte", "mrpc", "sst2")
            for v in ("", ":baseline", ":local")
        ),
        "mnli:mismatched",
    ],
    "study": [
        *(
            f"{task}{v}"
            for task in ("mnist1d", "mnist1d_noise20", "mnist1d_noise40", "digits")
            for v in ("", ":local")
        ),
        "cifar10",
        "cifar10:local",
    ],
    **{
        name: ["", "baseline", "local"]
        for name in (
            "cifar10_resnet44",
            "cifar10_vgg16",
            "cifar100_wrn28_10",
            "cifar100_vgg16",
            "imagenet_mobilenet",
        )
    },
}


def test_the_variant_list_covers_every_config_file():
    assert {f[:-3] for f in config_files(CONFIG_DIR)} == set(VARIANTS)


@pytest.mark.parametrize(
    "name,variant", [(n, v) for n, variants in VARIANTS.items() for v in variants]
)
def test_every_config_variant_validates(name, variant):
    config = load_config(os.path.join(CONFIG_DIR, f"{name}.py"), variant)
    assert check.check(config, device_count=1) == []
    if "sweep" in config:  # and every point of its grid, as experiments.sweep checks them
        grid = {f"{family}_{value:g}": p for family, value, p in grid_points(config)}
        base = merge(config, {})
        with base.unlocked():
            del base["sweep"]
        assert check.check(base, methods=grid, sweep=True, device_count=1) == []


def test_sweep_checks_every_grid_point_and_refuses_shadowed_overrides(tmp_path):
    config = sweep_mnist1d.get_config("local")
    with config.unlocked():
        config.num_devices = 1
        config.weight_decay = 1e-3
    with pytest.raises(ConfigError) as e:
        run_sweep(config, str(tmp_path / "w"), overrides={"weight_decay": 1e-3})
    assert "sweep point 'weight_decay_0.0001' sets this itself" in str(e.value)
    assert "change the grid (config.sweep)" in str(e.value)
    assert not os.path.exists(tmp_path / "w")
    with config.unlocked():
        config.weight_decay = 0.0
        config.sweep.dropout_rates = (0.2, 1.5)
    with pytest.raises(ConfigError, match=r"sweep\.dropout_rates = \(0\.2, 1\.5\): must be a tup"):
        run_sweep(config, str(tmp_path / "w"))


# --- Issue #22: seeds ---------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [(-1,), (2**40,), (2**31,), (0, 3, 0), (1.5,)])
def test_bad_seeds_are_refused_by_the_config_check(seeds):
    """Was: an OverflowError traceback from create_train_state (2**40), or a ValueError
    after the check had passed and files were written (-1)."""
    problems = check.check(_local(seeds=seeds))
    assert _fields(problems) == ["seeds"]
    assert "distinct integers in [0, 2**31)" in str(problems[0])
    assert check.check(_local(seeds=(0, 2**31 - 1))) == []


def test_cli_bad_seeds_write_nothing(tmp_path):
    workdir = tmp_path / "w"
    code, err, _ = _cli(workdir, "--config", LOCAL, "--config.seeds=(1099511627776,)")
    assert code == 2 and "Traceback" not in err, err
    assert "seeds = (1099511627776,): must be a non-empty tuple of distinct integers" in err
    assert not workdir.exists()  # nothing written, not even the workdir


def test_create_train_state_names_a_seed_out_of_int32():
    from tests.toy import toy_state

    for seed in ([2**40], 2**31, [0, True], []):
        with pytest.raises(ValueError, match=r"`seed` must be an integer in \[-2\*\*31, 2\*\*31\)"):
            toy_state(seed=seed)


# --- The fields of the comparison study and of PMM at hidden layers ------------------------


def test_objective_pmm_layers_and_their_checks():
    config = _local()
    config.methods.pmm.objective = {"name": "label_smoothing", "kwargs": {"epsilon": 0.1}}
    assert check.check(config) == []
    config.methods.pmm.objective.kwargs.epsiln = 0.1
    config.methods.pmm.pmm.layers = ("block2", "blok3")
    config.methods.pmm.pmm.layer_weights = (1.0,)
    config.methods.dropout.pmm = {"base_loss": "hinge"}
    config.methods.dropout.objective = {"name": "logit_norm", "kwargs": {"tau": 0.0}}
    text = "\n".join(map(str, check.check(config)))
    assert (
        "methods.pmm.objective.kwargs.epsiln = 0.1: is not a hyperparameter of objective " in text
    )
    assert "did you mean epsilon?" in text
    assert "'blok3' is not a layer of model 'cnn1d': it offers 'head', 'block1'" in text
    assert "methods.pmm.pmm.layer_weights = (1.0,): must give one weight per layer" in text
    assert "methods.dropout.pmm.base_loss = 'hinge': must be 'cross_entropy' with" in text
    assert "methods.dropout.objective.kwargs = {'tau': 0.0}" in text


def test_train_refuses_a_study_config(tmp_path):
    code, err, _ = _cli(tmp_path / "w", "--config", "experiments/configs/study.py:mnist1d:local")
    assert code == 2 and "python -m experiments.study" in err
