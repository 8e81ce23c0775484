"""Runs in one program (experiments/runs.py): a paired row trains as its runs would
separately; a group resumes mid-epoch bit for bit; "auto" measures once and keeps
its choice.

The model is the CIFAR ResNet recipe, tiny (depth 8, width 4), on mock CIFAR held
on the device (32 records: 24 train, 8 validation; batch 8, so 3 steps an epoch).
PMM uses a constant alpha 1e-3 so that the twins differ from the first step.
"""

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from experiments import runs, trainer
from experiments.configs import cifar10_resnet44
from experiments.data import feed, images
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
    c = trainer.expand_methods(config)[method]
    c.seeds = (seed,)
    plan = trainer.plan_of(c, dataset)
    trainee = trainer.build(c, dataset, mesh, plan)
    train_steps = programs.setdefault(method, trainee.train_steps)
    blocks = feed.train_blocks(dataset, [seed], c.batch_size, plan.per_call, mesh)
    state = trainee.state
    for _ in range(plan.total // plan.per_call):
        state, _ = train_steps(state, next(blocks))
    return training.gather_to_host(state.params)


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
    methods = trainer.expand_methods(config)
    plan = trainer.plan_of(methods["pmm"], dataset)
    trainees = [trainer.build(c, dataset, mesh, plan) for c in methods.values()]
    for mode in runs.CANDIDATES:
        program = runs.program([t.train_step for t in trainees], len(config.seeds), mode, mesh)
        blocks = feed.train_blocks(dataset, config.seeds, config.batch_size, plan.per_call, mesh)
        states = tuple(jax.tree.map(jax.numpy.copy, t.state) for t in trainees)
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
        c = trainer.expand_methods(config)[method]
        plan = trainer.plan_of(c, dataset)
        _TEMPLATES[method] = trainer.build(c, dataset, training.make_mesh(1), plan).state
    ckpt = training.Checkpointer(workdir / method / "checkpoints")
    state = ckpt.restore_latest(_TEMPLATES[method])
    ckpt.close()
    assert int(training.gather_to_host(state.step)[0]) == STEPS
    return training.gather_to_host(state.params)


class _Crash(Exception):
    pass


def _crashed_run(ref_dir, config, workdir, monkeypatch, step_to_crash: int = 3):
    """A run of ``config`` in ``workdir`` killed after ``step_to_crash``; it starts with
    the choice "auto" made for ``ref_dir`` (copied), so that it does not measure again."""
    (workdir / runs.RECORD).write_text((ref_dir / runs.RECORD).read_text())
    _crash_after(monkeypatch, step_to_crash)
    with pytest.raises(_Crash):
        trainer.train_and_evaluate(config, str(workdir))
    monkeypatch.undo()


def _crash_after(monkeypatch, step_to_crash: int):
    """Makes the trainer stop (as if killed) right after the call reaching that step."""
    real = trainer._after_call

    def after_call(run, step):
        if step == step_to_crash:
            raise _Crash
        return real(run, step)

    monkeypatch.setattr(trainer, "_after_call", after_call)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mock):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = _config(runs_mode="auto", per_call=1, num_devices=1)
    summary = trainer.train_and_evaluate(config, str(workdir))
    return workdir, config, summary


def test_auto_measures_every_form_once_and_records_its_choice(uninterrupted):
    workdir, _, summary = uninterrupted
    record = json.loads((workdir / runs.RECORD).read_text())
    (choice,) = record.values()
    assert set(choice["ms_per_step"]) == set(runs.CANDIDATES)
    assert choice["mode"] == min(choice["ms_per_step"], key=choice["ms_per_step"].get)
    assert set(choice["config_hashes"]) == {"baseline", "pmm"}
    for method in summary["methods"].values():
        assert method["extra"]["runs"]["mode"] == choice["mode"]
        assert method["extra"]["runs"]["runs"] == 4


def test_a_group_resumed_mid_epoch_is_bit_identical(
    uninterrupted, dataset, tmp_path, monkeypatch, capsys
):
    """Killed after step 3 (checkpoints at 1 and 2; 3 steps an epoch), and pmm's
    latest checkpoint lost, as a crash between the two methods' saves leaves them:
    the group goes back to the common step 1 (mid-epoch), in the mode "auto" chose
    the first time, and ends with the uninterrupted run's parameters, bit for bit."""
    ref_dir, config, _ = uninterrupted
    _crashed_run(ref_dir, config, tmp_path, monkeypatch)
    shutil.rmtree(tmp_path / "pmm" / "checkpoints" / "2")
    record = json.loads((tmp_path / runs.RECORD).read_text())
    trainer.train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "[baseline] back to step 1" in out
    assert "as measured before" in out
    assert json.loads((tmp_path / runs.RECORD).read_text()) == record  # not measured again
    for method in ("baseline", "pmm"):
        chex.assert_trees_all_equal(
            _final_params(tmp_path, config, dataset, method),
            _final_params(ref_dir, config, dataset, method),
        )


def test_methods_that_cannot_share_a_loop_train_apart():
    config = _config(runs_mode="auto")
    methods = trainer.expand_methods(config)
    assert runs.group_methods(methods) == [["baseline", "pmm"]]
    methods["pmm"].batch_size = 16  # another data stream
    assert runs.group_methods(methods) == [["baseline"], ["pmm"]]
    methods["pmm"].batch_size = config.batch_size
    methods["pmm"].runs_mode = "per_method"
    assert runs.group_methods(methods) == [["baseline"], ["pmm"]]
    with pytest.raises(ValueError, match="runs mode must be one of"):
        runs.program([], 1, "grouped", None)


def test_one_run_under_auto_chooses_between_scan_and_loop(dataset, tmp_path):
    """A single run has no forms to choose from, but XLA:CPU's scanned ResNet step is far
    slower than one program per step: "auto" times the two and records its choice."""
    config = trainer.expand_methods(_config(seeds=(0,), runs_mode="auto", num_devices=1))["pmm"]
    config.steps_per_call = config.log_every_steps = config.checkpoint_every_steps = 1
    result = trainer.train_method(config, dataset, str(tmp_path), name="pmm")
    info = result.extra["runs"]
    assert info["runs"] == 1 and set(info["auto"]["ms_per_step"]) == {"vmap", "vmap_loop"}
    assert info["mode"] == min(info["auto"]["ms_per_step"], key=info["auto"]["ms_per_step"].get)
    assert json.loads((tmp_path / runs.RECORD).read_text())["pmm"]["mode"] == info["mode"]


def test_a_torn_choice_record_is_measured_again_with_a_warning(tmp_path):
    hashes = {"baseline": "h1", "pmm": "h2"}
    assert runs.read_choice(str(tmp_path), "baseline+pmm", hashes) is None  # none yet: quiet
    runs.write_choice(str(tmp_path), "baseline+pmm", hashes, {"mode": "vmap_loop"})
    assert runs.read_choice(str(tmp_path), "baseline+pmm", hashes)["mode"] == "vmap_loop"
    assert runs.read_choice(str(tmp_path), "baseline+pmm", {"pmm": "h2"}) is None  # other group
    (tmp_path / runs.RECORD).write_text('{"baseline+pmm": {"mo')
    with pytest.warns(UserWarning, match="unreadable.*measured again"):
        assert runs.read_choice(str(tmp_path), "baseline+pmm", hashes) is None
