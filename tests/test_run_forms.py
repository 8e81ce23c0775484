"""Runs in one program (experiments/run/forms.py): a paired row trains as its runs would
separately; a group resumes mid-epoch bit for bit; "auto" is a fixed rule (two fresh
runs train alike), "measure" times the forms once and keeps its choice; a resume in
another form says so and every result records its forms.

The model is the CIFAR ResNet recipe, tiny (depth 8, width 4), on mock CIFAR held
on the device (32 records: 24 train, 8 validation; batch 8, so 3 steps an epoch).
PMM uses a constant alpha 1e-3 so that the twins differ from the first step.
"""

import json
import shutil
import warnings

import chex
import jax
import numpy as np
import pytest

from experiments.config.fields import CANDIDATES
from experiments.config.identity import group_methods
from experiments.config.methods import expand_methods
from experiments.config.plan import plan_of
from experiments.configs import cifar10_resnet44
from experiments.data import feed, images
from experiments.run import forms, loop
from experiments.run.build import build
from experiments.run.job import train_and_evaluate, train_method
from experiments.run.workdir import RUNS_RECORD
from pmm_jax import training

tfds = pytest.importorskip("tensorflow_datasets")

STEPS = 4


def _config(*, seeds=(0, 1), runs_mode="vmap", steps=STEPS, per_call=2, **extra):
    c = cifar10_resnet44.get_config("local")
    c.seeds = seeds
    c.runs_mode = runs_mode
    c.num_train_steps = steps
    c.steps_per_call = per_call
    c.log_every_steps = per_call
    c.eval_every_steps = steps
    c.checkpoint_every_steps = per_call
    c.pmm.alpha_schedule = "constant"
    c.pmm.alpha_end = 1e-3
    c.tsne = False
    for key, value in extra.items():
        c[key] = value
    return c


@pytest.fixture(scope="module")
def mock():
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=32):
        yield


@pytest.fixture(scope="module")
def dataset(mock):
    ds = images.get_dataset("cifar10", validation_size=8)
    assert ds.device_data is not None and ds.num_train == 24
    return ds


def _trained_separately(config, dataset, mesh, method, seed, programs):
    """One run alone: ``method`` at ``seed``, its own program and data stream (the
    program compiled once per method, in ``programs``)."""
    c = expand_methods(config)[method]
    c.seeds = (seed,)
    plan = plan_of(c, dataset.num_train)
    trainee = build(c, dataset, mesh, plan)
    train_steps = programs.setdefault(method, trainee.train_steps)
    blocks = feed.train_blocks(dataset, [seed], c.batch_size, plan.per_call, mesh)
    state = trainee.initial_state()
    for _ in range(plan.total // plan.per_call):
        state, _ = train_steps(state, next(blocks))
    return training.gather_to_host(state.params)


@pytest.mark.slow
def test_twins_in_one_program_train_as_the_four_runs_separately(dataset):
    """Baseline + PMM x 2 seeds in one program, in each form, against the four runs
    trained alone (their own programs and streams): the same parameters, to float
    tolerance (the forms fuse the float work differently, so not bit for bit)."""
    mesh = training.make_mesh(1)  # the forms, not the sharding, are under test here
    config = _config()
    programs = {}
    separate = {
        (method, seed): _trained_separately(config, dataset, mesh, method, seed, programs)
        for method in ("baseline", "pmm")
        for seed in config.seeds
    }
    methods = expand_methods(config)
    plan = plan_of(methods["pmm"], dataset.num_train)
    trainees = [build(c, dataset, mesh, plan) for c in methods.values()]
    initial = [t.initial_state() for t in trainees]
    for mode in CANDIDATES:
        program = forms.program([t.train_step for t in trainees], len(config.seeds), mode, mesh)
        blocks = feed.train_blocks(dataset, config.seeds, config.batch_size, plan.per_call, mesh)
        states = tuple(jax.tree.map(jax.numpy.copy, s) for s in initial)
        for _ in range(plan.total // plan.per_call):
            states, metrics = program(states, next(blocks))
        assert [m["loss"].shape for m in metrics] == [(plan.per_call, 2)] * 2
        params = [training.gather_to_host(s.params) for s in states]
        together = dict(zip(methods, params, strict=True))
        for (method, seed), alone in separate.items():
            i = config.seeds.index(seed)
            chex.assert_trees_all_close(
                jax.tree.map(lambda a, i=i: a[i], together[method]),
                jax.tree.map(lambda a: a[0], alone),
                rtol=1e-5,
                atol=1e-6,
                custom_message=f"{mode}: {method}, seed {seed}",
            )
        # The twins did differ (PMM is on from the first step).
        a, b = (jax.tree.leaves(together[m]) for m in ("baseline", "pmm"))
        assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)), mode


_TEMPLATES = {}  # method -> a state to restore into


def _final_params(workdir, config, dataset, method):
    """The latest checkpoint's params of ``method`` under ``workdir``."""
    if method not in _TEMPLATES:
        c = expand_methods(config)[method]
        plan = plan_of(c, dataset.num_train)
        _TEMPLATES[method] = build(c, dataset, training.make_mesh(1), plan).initial_state()
    ckpt = training.Checkpointer(workdir / method / "checkpoints")
    state = ckpt.restore_latest(_TEMPLATES[method])
    ckpt.close()
    assert int(training.gather_to_host(state.step)[0]) == STEPS
    return training.gather_to_host(state.params)


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, step_to_crash: int):
    """Makes the loop stop (as if killed) right after the call that reaches that step,
    before it logs, evaluates or saves anything at that step."""
    real = loop.progress

    def progress(total, initial=0, desc=""):
        bar = real(total=total, initial=initial, desc=desc)
        update, done = bar.update, [initial]

        def crashing_update(n):
            done[0] += n
            if done[0] == step_to_crash:
                bar.close()
                raise _Crash
            update(n)

        bar.update = crashing_update
        return bar

    monkeypatch.setattr(loop, "progress", progress)


def _crashed_run(config, workdir, monkeypatch, step_to_crash: int = 3):
    """A run of ``config`` in ``workdir`` killed after ``step_to_crash``."""
    _crash_after(monkeypatch, step_to_crash)
    with pytest.raises(_Crash):
        train_and_evaluate(config, str(workdir))
    monkeypatch.undo()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mock):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = _config(runs_mode="auto", per_call=1, num_devices=1)
    summary = train_and_evaluate(config, str(workdir))
    return workdir, config, summary


@pytest.mark.slow
def test_auto_is_a_rule_recorded_with_the_forms_trained(uninterrupted):
    workdir, _, summary = uninterrupted
    record = json.loads((workdir / RUNS_RECORD).read_text())
    (choice,) = record.values()
    assert choice["mode"] == forms.auto_form(jax.default_backend(), "resnet_cifar")
    assert choice["how"] == "rule" and "ms_per_step" not in choice  # nothing was timed
    assert set(choice["config_hashes"]) == {"baseline", "pmm"}
    for method in summary["methods"].values():
        runs_info = method["extra"]["runs"]
        assert runs_info["mode"] == choice["mode"] and runs_info["runs"] == 4
        assert runs_info["forms"] == [{"mode": choice["mode"], "from_step": 0, "to_step": STEPS}]


def test_auto_rule():
    assert forms.auto_form("cpu", "resnet_cifar") == "sequential_loop"
    assert forms.auto_form("cpu", "cnn1d") == forms.auto_form("gpu", "resnet_cifar") == "vmap"


@pytest.mark.slow
def test_a_group_resumed_mid_epoch_is_bit_identical(
    uninterrupted, dataset, tmp_path, monkeypatch, capsys
):
    """Killed after step 3 (checkpoints at 1 and 2; 3 steps an epoch), and pmm's
    latest checkpoint lost, as a crash between the two methods' saves leaves them:
    the group goes back to the common step 1 (mid-epoch), in the form recorded the
    first time, and ends with the uninterrupted run's parameters, bit for bit."""
    ref_dir, config, _ = uninterrupted
    _crashed_run(config, tmp_path, monkeypatch)
    shutil.rmtree(tmp_path / "pmm" / "checkpoints" / "2")
    record = json.loads((tmp_path / RUNS_RECORD).read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error", forms.FormChangedWarning)
        train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "[baseline] back to step 1" in out
    assert "recorded" in out
    assert json.loads((tmp_path / RUNS_RECORD).read_text()) == record  # not chosen again
    for method in ("baseline", "pmm"):
        chex.assert_trees_all_equal(
            _final_params(tmp_path, config, dataset, method),
            _final_params(ref_dir, config, dataset, method),
        )


@pytest.mark.slow
def test_a_resume_in_another_form_warns_and_records_both(uninterrupted, tmp_path, monkeypatch):
    """Issue #22, case 3: a run resumed under another runs_mode was silent, and its
    result recorded only the last form."""
    ref_dir, config, _ = uninterrupted
    _crashed_run(config, tmp_path, monkeypatch)  # steps 0-2 saved, in the auto form
    first = json.loads((ref_dir / RUNS_RECORD).read_text())
    (auto_mode,) = {c["mode"] for c in first.values()}
    other = "vmap" if auto_mode != "vmap" else "unroll"
    resumed = config.copy_and_resolve_references()
    resumed.runs_mode = other
    with pytest.warns(forms.FormChangedWarning) as caught:
        summary = train_and_evaluate(resumed, str(tmp_path))
    messages = {str(w.message) for w in caught}
    assert len(messages) == 2  # one per method
    for text in messages:
        assert f"steps 0-2 were trained in the program form {auto_mode!r}" in text
        assert f"resume in {other!r}" in text and "differ slightly" in text
    for method in summary["methods"].values():
        assert method["extra"]["runs"]["forms"] == [
            {"mode": auto_mode, "from_step": 0, "to_step": 2},
            {"mode": other, "from_step": 2, "to_step": STEPS},
        ]


def test_methods_that_cannot_share_a_loop_train_apart():
    config = _config(runs_mode="auto")
    methods = expand_methods(config)
    assert group_methods(methods) == [["baseline", "pmm"]]
    methods["pmm"].batch_size = 16  # another data stream
    assert group_methods(methods) == [["baseline"], ["pmm"]]
    methods["pmm"].batch_size = config.batch_size
    methods["pmm"].runs_mode = "per_method"
    assert group_methods(methods) == [["baseline"], ["pmm"]]
    with pytest.raises(ValueError, match="runs mode must be one of"):
        forms.program([], 1, "grouped", None)


@pytest.mark.slow
def test_measure_times_scan_against_loop_for_one_run(dataset, tmp_path):
    """A single run has no forms to choose from, but XLA:CPU's scanned ResNet step is far
    slower than one program per step: "measure" times the two and records its choice."""
    config = expand_methods(_config(seeds=(0,), runs_mode="measure", num_devices=1))["pmm"]
    config.steps_per_call = config.log_every_steps = config.checkpoint_every_steps = 1
    result = train_method(config, dataset, str(tmp_path), name="pmm")
    info = result.extra["runs"]
    timings = info["choice"]["ms_per_step"]
    assert info["runs"] == 1 and info["how"] == "measured" and set(timings) == {"vmap", "vmap_loop"}
    assert info["mode"] == min(timings, key=timings.get)
    assert json.loads((tmp_path / RUNS_RECORD).read_text())["pmm"]["mode"] == info["mode"]


def test_a_torn_choice_record_is_chosen_again_with_a_warning(tmp_path):
    hashes = {"baseline": "h1", "pmm": "h2"}
    assert forms.read_choice(str(tmp_path), "baseline+pmm", hashes) is None  # none yet: quiet
    forms.write_choice(str(tmp_path), "baseline+pmm", hashes, {"mode": "vmap_loop"})
    assert forms.read_choice(str(tmp_path), "baseline+pmm", hashes)["mode"] == "vmap_loop"
    assert forms.read_choice(str(tmp_path), "baseline+pmm", {"pmm": "h2"}) is None  # other group
    (tmp_path / RUNS_RECORD).write_text('{"baseline+pmm": {"mo')
    with pytest.warns(UserWarning, match="unreadable.*chosen again"):
        assert forms.read_choice(str(tmp_path), "baseline+pmm", hashes) is None


@pytest.mark.slow
def test_two_fresh_runs_of_the_cifar_local_row_are_bit_identical_under_load(mock, tmp_path):
    """Issue #22: "auto" timed the forms and, on a loaded machine, chose differently from
    one fresh run to the next. Now it is a rule: the same form, the same numbers."""
    import subprocess
    import sys

    config = cifar10_resnet44.get_config("local")
    config.num_devices = 1
    assert config.runs_mode == "auto"
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        first = train_and_evaluate(config, str(tmp_path / "first"))
        second = train_and_evaluate(config, str(tmp_path / "second"))
    finally:
        for p in burners:
            p.kill()
    for name in ("baseline", "pmm"):
        a, b = first["methods"][name], second["methods"][name]
        assert a["extra"]["runs"]["forms"] == b["extra"]["runs"]["forms"]
        for key in ("final_accuracy", "final_loss", "margin_mean", "margin_p10", "curves"):
            assert a[key] == b[key], (name, key)
