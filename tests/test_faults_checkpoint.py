"""Checkpoint faults, each reproduced for real: flipped bits, stray step directories,
a different model / seed count, NaN states, checkpoints from before integrity records,
and runs that skip too many non-finite steps."""

import dataclasses
import json
import os
import re
import shutil
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.config.identity import ConfigChangedError
from experiments.config.methods import select_methods
from experiments.configs import default
from experiments.run import job
from experiments.run.job import train_and_evaluate
from experiments.run.results import NonFiniteStepsError
from pmm_jax import training
from tests.toy import ToyNet, toy_data, toy_state

WIDE = ToyNet(width=256)  # data files large enough to flip bytes in the middle of


def _train(state, steps, ckpt):
    """``steps`` train steps, saving when due; ``{step: host copy of the saved items}``."""
    step_fn = jax.jit(training.make_train_step(alpha=1e-3))
    saved = {}
    for i in range(steps):
        state, _ = step_fn(state, toy_data(n=32, seed=100 + i))
        if ckpt.save(state):
            saved[int(state.step)] = jax.device_get(state.checkpoint_items())
    return state, saved


def _largest_data_file(step_dir):
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir)
        for name in names
        if os.path.basename(root) == "d"  # orbax's data files (not its JSON metadata)
    ]
    return max(files, key=os.path.getsize)


def _flip_bytes(path, count=32, seed=0):
    """Inverts ``count`` bytes in the middle half of the file, in place."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        quarter = len(data) // 4
        where = np.random.default_rng(seed).choice(2 * quarter, count, replace=False) + quarter
        for i in where:
            data[i] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))


def _listing(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, dirs, names in os.walk(directory)
        for name in dirs + names
    )


def _save_like_old_code(directory, states):
    """What the Checkpointer did before integrity records: plain orbax, nothing else."""
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(save_interval_steps=1, max_to_keep=3, create=True),
    )
    for state in states:
        step = int(np.asarray(state.step).reshape(-1)[0])
        manager.save(step, args=ocp.args.StandardSave(state.checkpoint_items()), force=True)
    manager.close()


def _abstract(x):
    """The restore target of one leaf, as the Checkpointer builds it."""
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _flip_so_that_orbax_reads_it_back(directory, step, like):
    """Flips 16 bytes of the step's largest data file, at positions where plain
    orbax still restores the checkpoint without an error (most are: the zstd
    frames carry no checksum), but with different values. Returns the file."""
    path = _largest_data_file(directory / str(step))
    with open(path, "rb") as f:
        original = f.read()
    target = jax.tree.map(_abstract, like.checkpoint_items())
    want = jax.tree.leaves(jax.device_get(like.checkpoint_items()))
    for seed in range(20):
        with open(path, "wb") as f:
            f.write(original)
        _flip_bytes(path, count=16, seed=seed)
        manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
        try:
            got = jax.tree.leaves(
                jax.device_get(manager.restore(step, args=ocp.args.StandardRestore(target)))
            )
        except Exception:  # caught by orbax: not the silent case under test
            continue
        finally:
            manager.close()
        if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want, strict=True)):
            return path
    raise AssertionError("no flip pattern that orbax reads back silently")


@pytest.mark.parametrize("async_save", [False, True])
def test_bit_flips_in_the_latest_are_caught_and_the_previous_is_restored(tmp_path, async_save):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=3, async_save=async_save)
    state, saved = _train(toy_state(WIDE), 6, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # step 6 is saved (or still being written): no-op
        assert not ckpt.save(state, force=True)
    ckpt.close()
    _flip_so_that_orbax_reads_it_back(directory, 6, like=state)

    with pytest.warns(training.CheckpointCorruptWarning, match=r"step 6 .*SHA-256 mismatch"):
        restored = training.Checkpointer(directory).restore_latest(toy_state(WIDE, seed=5))
    assert int(restored.step) == 4
    chex.assert_trees_all_equal(jax.device_get(restored.checkpoint_items()), saved[4])
    moved = os.listdir(str(directory) + ".corrupt")
    assert len(moved) == 1 and moved[0].startswith("6-")  # kept, not deleted
    assert training.Checkpointer(directory).all_steps() == [2, 4]


@pytest.mark.parametrize("ledger", ["kept", "deleted"])
def test_a_checkpoint_that_lost_its_record_next_to_recorded_ones_is_damaged(tmp_path, ledger):
    # Issue #22, case 1: flip bytes in the newest checkpoint's data and delete its
    # _CHECKPOINT_METADATA (where its record lives). It is not an "old" checkpoint:
    # the directory's ledger -- or, without it, the recorded older checkpoint -- says so.
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=3)
    state, saved = _train(toy_state(WIDE), 6, ckpt)
    ckpt.close()
    _flip_so_that_orbax_reads_it_back(directory, 6, like=state)
    (directory / "6" / "_CHECKPOINT_METADATA").unlink()
    if ledger == "deleted":
        (directory / training.checkpoint.LEDGER).unlink()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = training.Checkpointer(directory).restore_latest(toy_state(WIDE, seed=5))
    categories = [w.category for w in caught]
    assert training.CheckpointNotVerifiedWarning not in categories
    (corrupt,) = [w for w in caught if w.category is training.CheckpointCorruptWarning]
    why = "ledger" if ledger == "kept" else "older checkpoint at step 2"
    assert re.search(rf"step 6 .*no integrity record, but .*{why}", str(corrupt.message))
    assert int(restored.step) == 4
    chex.assert_trees_all_equal(jax.device_get(restored.checkpoint_items()), saved[4])
    (moved,) = os.listdir(str(directory) + ".corrupt")
    assert moved.startswith("6-")  # kept, not deleted


def test_a_lone_checkpoint_that_lost_its_record_is_damaged_by_the_ledger(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=1)
    _train(toy_state(), 4, ckpt)
    ckpt.close()
    assert training.Checkpointer(directory).all_steps() == [4]
    (directory / "4" / "_CHECKPOINT_METADATA").unlink()
    with pytest.warns(training.CheckpointCorruptWarning, match=r"no integrity record, but"):
        assert training.Checkpointer(directory).restore_latest(toy_state(seed=5)) is None
    assert os.listdir(str(directory) + ".corrupt")[0].startswith("4-")


def test_a_file_named_like_a_step_is_moved_aside_never_deleted(tmp_path):
    # Issue #22, case 2: orbax deleted a file at <dir>/4 to save step 4 there.
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=2)
    _train(toy_state(), 4, ckpt)
    ckpt.close()
    shutil.rmtree(directory / "4")
    (directory / "4").write_text("a user's file")
    (directory / "notes.txt").write_text("mine")
    (directory / "notes").mkdir()

    ckpt = training.Checkpointer(directory, save_every=2, keep=2)
    with pytest.warns(training.CheckpointCorruptWarning, match=r"4 is a file, not a checkpoint"):
        restored = ckpt.restore_latest(toy_state(seed=5))
    assert int(restored.step) == 2
    (moved,) = os.listdir(str(directory) + ".corrupt")
    assert moved.startswith("4-not-a-checkpoint-")
    assert (directory.parent / "ckpt.corrupt" / moved).read_text() == "a user's file"

    # A file that appears later where a save is due is moved aside first, with a warning.
    _, more = _train(restored, 2, ckpt)  # saves step 4
    (directory / "6").write_text("another file")
    with pytest.warns(training.CheckpointCorruptWarning, match=r"6 is a file, not a checkpoint"):
        _, more6 = _train(_restore(directory), 2, ckpt)  # saves step 6 (keep=2: 4 and 6)
    ckpt.close()
    assert sorted(more) == [4] and sorted(more6) == [6]
    assert training.Checkpointer(directory).all_steps() == [4, 6]
    kept = sorted(os.listdir(str(directory) + ".corrupt"))
    assert [k.split("-")[0] for k in kept] == ["4", "6"]
    assert (directory / "notes.txt").read_text() == "mine" and (directory / "notes").is_dir()


def _restore(directory):
    return training.Checkpointer(directory).restore_latest(toy_state(seed=5))


def test_stray_step_directories_are_ignored_and_saving_still_works(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=3)
    _, saved = _train(toy_state(), 6, ckpt)
    ckpt.close()
    (directory / "8").mkdir()  # empty: it made orbax expect `Composite` args everywhere
    (directory / "7").mkdir()  # partial: metadata but no item
    (directory / "7" / "_CHECKPOINT_METADATA").write_text("{}")
    leftover = directory / "10.orbax-checkpoint-tmp-1234"  # an interrupted save
    leftover.mkdir()
    (leftover / "junk").write_text("x")
    (directory / "notes").mkdir()

    ckpt = training.Checkpointer(directory, save_every=2, keep=3)
    with pytest.warns(training.CheckpointCorruptWarning, match="not a checkpoint") as caught:
        restored = ckpt.restore_latest(toy_state(seed=5))
    assert int(restored.step) == 6
    chex.assert_trees_all_equal(jax.device_get(restored.checkpoint_items()), saved[6])
    assert not any("not trusted" in str(w.message) for w in caught)  # no good one distrusted
    moved = sorted(os.listdir(str(directory) + ".corrupt"))
    assert [m.split("-")[:2] for m in moved] == [["7", "incomplete"], ["8", "incomplete"]]
    assert leftover.exists() and (directory / "notes").exists()  # not ours to move

    # Training on saves at step 8, where the empty directory was, and after.
    _, more = _train(restored, 4, ckpt)
    ckpt.close()
    assert sorted(more) == [8, 10]
    assert training.Checkpointer(directory).all_steps() == [6, 8, 10]
    again = training.Checkpointer(directory).restore_latest(toy_state(seed=5))
    assert int(again.step) == 10


def test_a_save_into_a_directory_with_an_empty_step_works(tmp_path):
    directory = tmp_path / "ckpt"
    (directory / "3").mkdir(parents=True)
    ckpt = training.Checkpointer(directory, save_every=1)
    with pytest.warns(training.CheckpointCorruptWarning, match="is empty"):
        _, saved = _train(toy_state(), 3, ckpt)  # saves 1, 2 and 3 (where the empty one was)
    ckpt.close()
    assert sorted(saved) == [1, 2, 3]
    restored = training.Checkpointer(directory).restore_latest(toy_state(seed=5))
    chex.assert_trees_all_equal(jax.device_get(restored.checkpoint_items()), saved[3])


def _target(change):
    if change == "width":
        return toy_state(
            ToyNet(width=32), seed=[0, 1]
        ), "params/body/kernel: saved float32[2,6,16] vs expected float32[2,6,32]"
    if change == "seeds":
        return (
            toy_state(ToyNet(width=16), seed=[0, 1, 2]),
            "differ in their leading axis only (2 saved vs 3 expected: a different seed count?)"
            ": params/BatchNorm_0/bias: saved float32[2,16] vs expected float32[3,16]",
        )
    if change == "dtype":
        state = toy_state(ToyNet(width=16), seed=[0, 1])
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.params)
        return state.replace(params=params), (
            "params/head/kernel: saved float32[2,16,5] vs expected bfloat16[2,16,5]"
        )
    assert change == "optimizer"
    model = ToyNet(width=16)
    state = training.create_train_state(model, optax.adam(1e-3), jnp.zeros((2, 6)), seed=[0, 1])
    return state, "opt_state/inner_state/0/mu/head/bias: saved absent vs expected float32[2,5]"


@pytest.mark.parametrize("change", ["width", "seeds", "dtype", "optimizer"])
def test_restoring_into_a_different_structure_raises_and_moves_nothing(tmp_path, change):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=1)
    ckpt.save(toy_state(ToyNet(width=16), seed=[0, 1]), force=True)
    ckpt.close()
    before = _listing(tmp_path)

    target, difference = _target(change)
    with pytest.raises(training.CheckpointMismatchError, match=re.escape(difference)) as err:
        training.Checkpointer(directory).restore_latest(target)
    assert err.value.step == 0 and "Nothing was moved" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert _listing(tmp_path) == before  # nothing moved aside, nothing deleted
    # ... and the state it was saved from still restores, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = training.Checkpointer(directory).restore_latest(
            toy_state(ToyNet(width=16), seed=[0, 1])
        )
    assert same is not None


@pytest.mark.parametrize("where", ["orbax_metadata", "record"])
def test_damaged_metadata_is_corruption_not_a_mismatch(tmp_path, where):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, save_every=2, keep=3)
    _train(toy_state(), 4, ckpt)
    ckpt.close()
    if where == "orbax_metadata":  # a flipped letter in an array's name
        path, reason = directory / "4" / "default" / "_METADATA", "not trusted"
        text = path.read_text()
        assert '{"key": "kernel"' in text
        path.write_text(text.replace('{"key": "kernel"', '{"key": "kernal"', 1))
    else:  # a flipped digit in the integrity record's shape of an array
        path, reason = directory / "4" / "_CHECKPOINT_METADATA", "disagrees with the checkpoint's"
        data = json.loads(path.read_text())
        leaf = data["custom_metadata"]["pmm_jax_integrity"]["leaves"]["params/head/kernel"]
        assert leaf["shape"] == [16, 5]
        leaf["shape"] = [16, 6]
        path.write_text(json.dumps(data))

    with pytest.warns(training.CheckpointCorruptWarning, match=reason):
        restored = training.Checkpointer(directory).restore_latest(toy_state(seed=5))
    assert int(restored.step) == 2
    assert os.listdir(str(directory) + ".corrupt")[0].startswith("4-")


def _poisoned(state):
    kernel = state.params["head"]["kernel"]
    params = {
        **state.params,
        "head": {**state.params["head"], "kernel": kernel.at[0, 0].set(jnp.nan)},
    }
    return state.replace(params=params)


def test_a_nan_state_is_not_saved_and_a_nan_checkpoint_is_not_restored(tmp_path):
    # A NaN state is refused: it would push good checkpoints out of the last `keep`.
    directory = tmp_path / "new"
    ckpt = training.Checkpointer(directory, save_every=2, keep=2)
    state, _ = _train(toy_state(), 4, ckpt)
    with pytest.warns(training.CheckpointNotSavedWarning, match=r"params/head/kernel \(1 of 80\)"):
        assert not ckpt.save(_poisoned(state.replace(step=state.step + 2)))
    ckpt.close()
    assert training.Checkpointer(directory).all_steps() == [2, 4]

    # A NaN checkpoint written before that (older code) is not trusted when restoring.
    step_fn = jax.jit(training.make_train_step(alpha=1e-3))
    states = [toy_state()]
    for i in range(2):
        states.append(step_fn(states[-1], toy_data(n=32, seed=i))[0])
    _save_like_old_code(
        tmp_path / "old",
        [states[1], states[2], _poisoned(states[2]).replace(step=states[2].step + 1)],
    )
    with pytest.warns(training.CheckpointCorruptWarning, match=r"step 3 .*non-finite values"):
        restored = training.Checkpointer(tmp_path / "old").restore_latest(toy_state(seed=5))
    assert int(restored.step) == 2
    chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(states[2].params))
    assert os.listdir(str(tmp_path / "old") + ".corrupt")[0].startswith("3-")


def test_checkpoints_without_a_record_restore_with_one_warning(tmp_path):
    directory = tmp_path / "ckpt"
    step_fn = jax.jit(training.make_train_step(alpha=1e-3))
    states = [toy_state()]
    for i in range(2):
        states.append(step_fn(states[-1], toy_data(n=32, seed=i))[0])
    _save_like_old_code(directory, states[1:])
    before = _listing(tmp_path)

    ckpt = training.Checkpointer(directory, save_every=1, keep=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ckpt.restore_latest(toy_state(seed=5))
        second = ckpt.restore_latest(toy_state(seed=5))
    assert [w.category for w in caught] == [training.CheckpointNotVerifiedWarning]  # once
    assert "no integrity record" in str(caught[0].message)
    assert int(first.step) == int(second.step) == 2
    chex.assert_trees_all_equal(jax.device_get(first.params), jax.device_get(states[2].params))
    assert _listing(tmp_path) == before  # accepted, not quarantined

    # New saves next to the old ones are verified.
    _train(first, 1, ckpt)
    ckpt.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(training.Checkpointer(directory).restore_latest(toy_state(seed=5)).step) == 3


# -- the training loop -----------------------------------------------------------


def _local(**changes):
    config = select_methods(default.get_config("local"), ["pmm"])
    with config.unlocked():
        config.batch_size = 96
        config.eval_batch_size = 200
        config.num_devices = 1
        for key, value in changes.items():
            config[key] = value
    return config


def _poison_seed(seed_to_poison, every):
    """A get_dataset whose training batches for one seed hold a NaN every ``every``."""
    real_get_dataset = job.get_dataset

    def get_dataset(name, **kwargs):
        ds = real_get_dataset(name, **kwargs)
        real_iter = ds.train_iter

        def train_iter(seed, *args, **kw):
            for i, batch in enumerate(real_iter(seed, *args, **kw)):
                if seed == seed_to_poison and i % every == every - 1:
                    batch = dict(batch, x=np.array(batch["x"], np.float32))
                    batch["x"][0, 0] = np.nan
                yield batch

        return dataclasses.replace(ds, train_iter=train_iter)

    return get_dataset


def test_skipped_nonfinite_steps_are_reported_and_too_many_fail_the_run(
    tmp_path, monkeypatch, capsys
):
    config = _local(seeds=(0, 1))
    monkeypatch.setattr(job, "get_dataset", _poison_seed(1, every=4))
    with pytest.raises(NonFiniteStepsError, match="max_nonfinite_fraction") as err:
        train_and_evaluate(config, str(tmp_path))
    assert err.value.offenders == [("pmm", 1, 10, 40)]
    assert "method 'pmm', seed 1: 10 of 40 training steps (25.0%)" in str(err.value)

    # Everything was written before failing: result, summary, checkpoints.
    result = json.loads((tmp_path / "pmm" / "result.json").read_text())
    assert result["extra"]["nonfinite_steps"] == [0, 10]
    assert json.loads((tmp_path / "summary.json").read_text())["nonfinite_steps"] == {
        "pmm": [0, 10]
    }
    text = (tmp_path / "summary.txt").read_text()
    assert "seed 0: 0/40 (0.0%), seed 1: 10/40 (25.0%)" in text
    assert training.Checkpointer(tmp_path / "pmm" / "checkpoints").all_steps() == [20, 40]

    # Accepting it reads the finished method back instead of training it again.
    with config.unlocked():
        config.max_nonfinite_fraction = 0.5
    capsys.readouterr()
    summary = train_and_evaluate(config, str(tmp_path))
    assert "already finished" in capsys.readouterr().out
    assert summary["methods"]["pmm"]["extra"]["nonfinite_steps"] == [0, 10]


def test_bad_max_nonfinite_fraction_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"max_nonfinite_fraction = 2\.0: must be a finite number in \[0, 1\]"
    ):
        train_and_evaluate(_local(max_nonfinite_fraction=2), str(tmp_path))


def test_a_run_resumed_with_a_different_model_stops_and_keeps_its_checkpoints(tmp_path):
    config = _local(num_train_steps=20, eval_every_steps=20)
    train_and_evaluate(config, str(tmp_path))
    checkpoints = tmp_path / "pmm" / "checkpoints"
    before = _listing(checkpoints)

    with config.unlocked():
        config.model_kwargs.channels = 8  # a wider model, same workdir
    # The workdir's config.json says what changed, before any checkpoint is read.
    with pytest.raises(ConfigChangedError, match=r"model_kwargs.channels: 4 then, 8 now"):
        train_and_evaluate(config, str(tmp_path))
    assert _listing(checkpoints) == before
    # Without config.json (say, checkpoints copied elsewhere) the checkpoint's own
    # structure check stops it: a mismatch, not corruption, and nothing is moved.
    os.remove(tmp_path / "pmm" / "config.json")
    os.remove(tmp_path / "pmm" / "result.json")
    with pytest.raises(training.CheckpointMismatchError, match=r"saved float32\[1,.*4\] vs"):
        train_and_evaluate(config, str(tmp_path))
    assert _listing(checkpoints) == before
    assert not os.path.exists(str(checkpoints) + ".corrupt")


def test_a_method_resumed_under_a_changed_config_is_refused(tmp_path):
    """Was: with the same parameter shapes (another weight decay, say) the old
    checkpoints were resumed -- at the last step, just re-evaluated -- and recorded
    as the new config's result. Now: an error naming the fields, nothing moved."""
    config = _local(num_train_steps=20, eval_every_steps=20)
    train_and_evaluate(config, str(tmp_path))
    before = sorted(os.listdir(tmp_path / "pmm" / "checkpoints"))
    changed = _local(num_train_steps=20, eval_every_steps=20, weight_decay=0.5)
    with pytest.raises(ConfigChangedError, match=r"weight_decay: 0\.0 then, 0\.5 now"):
        train_and_evaluate(changed, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "pmm" / "checkpoints")) == before
    # The same config still reads its result back.
    again = train_and_evaluate(config, str(tmp_path))
    assert again["methods"]["pmm"]["steps"] == 20
