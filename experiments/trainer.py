"""The training loop shared by every experiment.

``train_and_evaluate(config, workdir)`` trains each method of ``config.methods``
(or the config itself when it has none) for every seed, evaluates, and writes a
summary with tables and plots (``experiments/report.py``).

One method's seeds are trained *together*: the train state is stacked over
seeds and the step is ``jax.vmap``-ed, with ``steps_per_call`` steps fused into
one jitted ``lax.scan``. The batch is sharded over all devices (``P("data")`` on
its batch axis), the state replicated, so the same code runs on one CPU, a GPU,
or many devices and hosts.

Everything is resumable: checkpoints every ``checkpoint_every_steps`` (orbax),
metric logs truncated back to the restored step (and repaired if a crash tore
them, ``experiments/metrics_log.py``), and a finished method is not run again
(its ``result.json`` is read back). One run at a time per workdir: a second one
stops at once (``experiments/workdir_lock.py``). Checkpoints are verified on
restore (``pmm_jax.training.Checkpointer``); one saved from a different model or
seed count stops the run with a ``CheckpointMismatchError``.

Steps skipped for non-finite gradients are counted per seed
(``extra["nonfinite_steps"]``, shown in the summary); a seed that skipped more
than ``max_nonfinite_fraction`` of its steps fails the run with a
``NonFiniteStepsError`` once everything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import config_check, optim
from experiments.data.base import Dataset, sample_input
from experiments.data.registry import get_dataset
from experiments.metrics_log import MetricsLog, best_from_curves, progress
from experiments.models import get_model
from experiments.workdir_lock import workdir_lock
from pmm_jax import training


def merge(base: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """``base`` with ``overrides`` (a nested dict) merged in, recursively."""
    out = copy.deepcopy(base)
    with out.unlocked():
        for key, value in dict(overrides).items():
            if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
                out.get(key), ml_collections.ConfigDict
            ):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def expand_methods(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """``{method name: full config}``; a config without methods is one run."""
    methods = config.get("methods") or {}
    base = copy.deepcopy(config)
    with base.unlocked():
        base.methods = ml_collections.ConfigDict()
        base.method_order = ()
    if not methods:
        return {config.get("name", "run"): base}
    return {name: merge(base, methods[name]) for name in expand_order(config)}


def select_methods(config: ml_collections.ConfigDict, names) -> ml_collections.ConfigDict:
    """``config`` with only the methods ``names`` (``--methods=baseline,pmm``), in its order.

    Raises:
      config_check.ConfigError: a name that is not a method of ``config`` (or it has none).
    """
    methods = config.get("methods") or {}
    names = list(dict.fromkeys(names))
    problems = []
    if not methods:
        problems.append(
            config_check.Problem(
                "--methods",
                ",".join(names),
                f"config {config.get('name', '')!r} has no methods (it is one run); drop --methods",
            )
        )
    elif not names:
        problems.append(
            config_check.Problem(
                "--methods", "", "names no method; its methods: " + ", ".join(expand_order(config))
            )
        )
    for name in names if methods else ():
        if name not in methods:
            close = config_check.closest(name, methods)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            problems.append(
                config_check.Problem(
                    "--methods",
                    name,
                    f"not a method of this config; {hint}its methods: "
                    + ", ".join(expand_order(config)),
                )
            )
    if problems:
        raise config_check.ConfigError(problems, what="--methods")
    out = copy.deepcopy(config)
    with out.unlocked():
        out.methods = ml_collections.ConfigDict({n: methods[n] for n in names})
        out.method_order = tuple(n for n in expand_order(config) if n in names)
        if out.get("paired_comparisons"):
            out.paired_comparisons = tuple(
                tuple(p) for p in out.paired_comparisons if set(p) <= set(names)
            )
    return out


def expand_order(config: ml_collections.ConfigDict) -> list[str]:
    """The names of ``config``'s methods in the order they run: ``method_order``, then sorted."""
    methods = config.get("methods") or {}
    order = list(config.get("method_order") or ())
    return [n for n in order if n in methods] + sorted(n for n in methods if n not in order)


# Fields that do not change what is trained, left out of `config_hash` so that
# changing them reads a finished method back instead of training it again.
UNHASHED_FIELDS = ("max_nonfinite_fraction",)
DEFAULT_MAX_NONFINITE_FRACTION = 0.01


def _hashed_fields(config: ml_collections.ConfigDict | dict) -> dict:
    """The fields that decide what a run computes, JSON-normalized (tuples -> lists)."""
    as_dict = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    fields = {k: v for k, v in as_dict.items() if k not in UNHASHED_FIELDS}
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def config_hash(config: ml_collections.ConfigDict | dict) -> str:
    text = json.dumps(_hashed_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigChangedError(ValueError):
    """A method's workdir holds checkpoints or a result of a different config."""


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_same_config(config: ml_collections.ConfigDict, workdir: str, *, name: str) -> None:
    """Refuses to resume a method's work that was done with another config.

    A workdir's ``config.json`` records the config its checkpoints and result were
    trained with. Resuming them under a changed config (say another weight decay,
    with the same parameter shapes) would continue -- or just re-evaluate -- the
    old run and record it as the new one. Nothing is moved or deleted.

    Raises:
      ConfigChangedError: naming the fields that differ, if ``workdir`` holds
        checkpoints or a result of another config.
    """
    path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_work = os.path.exists(os.path.join(workdir, "result.json")) or (
        os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))
    )
    if not (has_work and os.path.exists(path)):
        return
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: the checkpoint's own structure check still applies
    old, new = _flatten(_hashed_fields(previous)), _flatten(_hashed_fields(config))
    diff = sorted(
        k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>")
    )
    if not diff:
        return
    shown = "; ".join(
        f"{k}: {old.get(k, '<unset>')!r} then, {new.get(k, '<unset>')!r} now" for k in diff[:10]
    )
    more = f" (and {len(diff) - 10} more)" if len(diff) > 10 else ""
    raise ConfigChangedError(
        f"[{name}] {workdir} holds checkpoints or a result of another config ({shown}{more}); "
        "resuming them would record the old run as this one. Use another --workdir, or "
        f"delete {workdir} to train this method again from scratch."
    )


class NonFiniteStepsError(RuntimeError):
    """Too many training steps were skipped for non-finite gradients (see
    ``max_nonfinite_fraction``). Raised after the results and checkpoints are written.

    Attributes:
      offenders: ``[(method, seed, skipped steps, total steps)]``.
    """

    def __init__(self, message: str, offenders: list[tuple[str, int, int, int]]):
        super().__init__(message)
        self.offenders = offenders


def max_nonfinite_fraction(config) -> float:
    """``config.max_nonfinite_fraction`` (default 0.01), checked to be in [0, 1]."""
    value = config.get("max_nonfinite_fraction", DEFAULT_MAX_NONFINITE_FRACTION)
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`max_nonfinite_fraction` must be a fraction in [0, 1] of the training steps "
            f"that may be skipped for non-finite gradients; got {value!r}."
        )
    return float(value)


def nonfinite_offenders(result: MethodResult, limit: float) -> list[tuple[str, int, int, int]]:
    """``[(method, seed, skipped, steps)]`` for the seeds that skipped more than
    ``limit`` of their steps (none for results written before the count existed)."""
    counts = result.extra.get("nonfinite_steps") or []
    return [
        (result.name, int(seed), int(count), int(result.steps))
        for seed, count in zip(result.seeds, counts, strict=True)
        if count > limit * max(result.steps, 1)
    ]


def check_nonfinite(checks: list[tuple[MethodResult, float]], workdir: str) -> None:
    """Raises :class:`NonFiniteStepsError` naming every (method, seed) whose skipped
    steps exceed its ``max_nonfinite_fraction`` (``checks``: ``[(result, limit)]``)."""
    lines, offenders = [], []
    for result, limit in checks:
        for name, seed, count, steps in nonfinite_offenders(result, limit):
            offenders.append((name, seed, count, steps))
            lines.append(
                f"method {name!r}, seed {seed}: {count} of {steps} training steps "
                f"({100 * count / max(steps, 1):.1f}%) were skipped for non-finite gradients, "
                f"above `max_nonfinite_fraction`={limit:g}"
            )
    if not offenders:
        return
    raise NonFiniteStepsError(
        "Too many skipped training steps:\n  "
        + "\n  ".join(lines)
        + f"\nThe results, metrics and checkpoints are written under {workdir}. The run "
        "diverged or its data holds NaN/Inf: look at the loss, learning rate and alpha "
        "(`train/nonfinite_steps` in metrics.jsonl shows when it started), or accept it with "
        "--config.max_nonfinite_fraction=<fraction> (not part of the config hash: finished "
        "methods are read back, not retrained).",
        offenders,
    )


@dataclasses.dataclass
class MethodResult:
    """What one method's run produced (per seed where it says so)."""

    name: str
    seeds: list[int]
    test_accuracy: list[float]
    test_loss: list[float]
    margin_mean: list[float]  # normalized pairwise margin on the test set, per seed
    margin_p10: list[float]
    curves: dict[str, list]  # {"step": [...], "<split>_accuracy": [[per seed] per eval]}
    wall_time_s: float
    steps: int
    config_hash: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def total_steps_of(config, steps_per_epoch: int) -> int:
    if config.get("num_epochs", 0) > 0:
        return int(config.num_epochs * steps_per_epoch)
    return int(config.num_train_steps)


def intervals(config, steps_per_epoch: int, total: int) -> dict[str, int]:
    """Log / eval / checkpoint intervals in steps (``*_every_epochs`` wins if > 0)."""
    out = {}
    for what in ("log", "eval", "checkpoint"):
        epochs = config.get(f"{what}_every_epochs", 0)
        out[what] = (
            round(epochs * steps_per_epoch) if epochs else int(config[f"{what}_every_steps"])
        )
    k = config.steps_per_call
    for what, every in out.items():
        if every < 1 or every % k:
            raise ValueError(
                f"the {what} interval of {every} steps must be a positive multiple of "
                f"`steps_per_call`={k} (set `steps_per_call=1` for epoch-based intervals)."
            )
    if total % k:
        raise ValueError(f"the run's {total} steps must be a multiple of `steps_per_call`={k}.")
    return out


def _stack(batches):
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class _Runner:
    """Jitted, sharded, seed-vmapped train/eval functions for one method."""

    def __init__(self, config, dataset: Dataset, mesh, total_steps: int, steps_per_epoch: int):
        self.config = config
        self.dataset = dataset
        self.mesh = mesh
        self.seeds = [int(s) for s in config.seeds]
        model = get_model(config.model, num_classes=dataset.num_classes, **config.model_kwargs)
        tx = optim.make_optimizer(config, steps_per_epoch, total_steps)
        self.state = training.create_train_state(model, tx, _sample_input(dataset), seed=self.seeds)
        pretrained = config.get("pretrained")
        if pretrained and pretrained.get("path"):
            # The optimizer state does not depend on the initial values (Adam's
            # moments start at zero), so the weights can be swapped in after init.
            self.state = load_pretrained(self.state, model, pretrained)
        self.state = training.replicate_on_mesh(self.state, mesh)
        train_step = training.make_train_step(
            alpha=optim.make_alpha(config.pmm, steps_per_epoch, total_steps),
            base_loss=optim.base_loss(config.pmm),
            penalty_reduction=config.pmm.penalty_reduction,
            stop_radius_gradient=config.pmm.stop_radius_gradient,
            preprocess=dataset.preprocess,
        )
        eval_step = training.make_eval_step(
            base_loss=optim.base_loss(config.pmm), preprocess=dataset.preprocess
        )
        replicated = NamedSharding(mesh, P())
        # Batches: [steps, seeds, batch, ...] for training, [batch, ...] for eval.
        train_data = NamedSharding(mesh, P(None, None, "data"))
        eval_data = NamedSharding(mesh, P("data"))
        self.train_data, self.eval_data = train_data, eval_data

        def multi_step(state, batches):
            return lax.scan(jax.vmap(train_step), state, batches)

        self.multi_step = jax.jit(
            multi_step,
            in_shardings=(replicated, train_data),
            out_shardings=(replicated, replicated),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            jax.vmap(eval_step, in_axes=(0, None)),
            in_shardings=(replicated, eval_data),
            out_shardings=NamedSharding(mesh, P(None, "data")),
        )

    def split_metrics(self, outs) -> dict[str, np.ndarray]:
        """Dataset-specific metrics per seed (e.g. F1 for GLUE's QQP and MRPC)."""
        task = self.dataset.extra.get("task")
        if task is None or "f1" not in self.dataset.extra.get("metrics", ()):
            return {}
        from experiments.data.glue import glue_metrics

        f1 = [
            glue_metrics(task.name, p, y)["f1"]
            for p, y in zip(outs["pred"], outs["label"], strict=True)
        ]
        return {"f1": np.asarray(f1)}

    def put(self, batch, sharding, batch_axis):
        procs = jax.process_count()

        def one(x):
            x = np.asarray(x)
            shape = list(x.shape)
            shape[batch_axis] *= procs
            training.check_divisible(shape[batch_axis], self.mesh.devices.size)
            return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

        return jax.tree.map(one, batch)

    def evaluate(self, split: str, *, keep_examples: bool = False) -> dict[str, np.ndarray]:
        """Per-seed metrics on a whole split; per-example arrays if asked."""
        bsz = self.config.eval_batch_size
        chunks = []
        it = self.dataset.eval_iter(split, bsz, jax.process_index(), jax.process_count())
        for batch in it:
            out = self.eval_step(self.state, self.put(batch, self.eval_data, 0))
            chunks.append(jax.tree.map(_to_host, out))
        outs = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
        mask = outs["mask"][0]
        outs = {k: v[:, mask] for k, v in outs.items()}
        # Normalize margins by the radius of the whole split, per seed.
        radius = outs["feature_norm"].max(axis=1, keepdims=True)
        margins = outs["raw_margin"] / np.where(radius > 0, radius, 1.0)
        result = {
            "accuracy": outs["correct"].mean(axis=1),
            "loss": outs["loss"].mean(axis=1),
            "margin_mean": margins.mean(axis=1),
            "margin_p10": np.percentile(margins, 10, axis=1),
            **self.split_metrics(outs),
        }
        if keep_examples:
            result.update(margins=margins, pre_logits=outs["pre_logits"], label=outs["label"][0])
        return result


def load_pretrained(state: training.TrainState, model, pretrained) -> training.TrainState:
    """Loads pretrained weights into every seed's params (heads stay freshly initialized).

    ``pretrained.kind == "hf_bert"``: a Hugging Face BERT-family checkpoint
    directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
    """
    if pretrained.get("kind", "hf_bert") != "hf_bert":
        raise ValueError(f"Unknown pretrained.kind {pretrained.kind!r}; known: hf_bert.")
    from experiments.models.bert_import import load_hf_params, read_hf_checkpoint

    weights = read_hf_checkpoint(pretrained.path)
    seeds = jax.tree.leaves(state.params)[0].shape[0]
    loaded = []
    for i in range(seeds):
        params_i = jax.tree.map(lambda x, i=i: np.asarray(x[i]), state.params)
        new, report = load_hf_params(weights, params_i, config=model.config, load_head=False)
        loaded.append(new)
    print(f"[pretrained] {pretrained.path}: {report}", flush=True)
    params = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *loaded)
    return state.replace(params=params)


def resolve_pretrained(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Points the BERT architecture and the tokenizer at ``config.pretrained.path``.

    For ``model == "bert"``: ``model_kwargs.hf_config`` and the dataset's
    ``tokenizer`` default to the checkpoint directory, so one flag
    (``--config.pretrained.path=DIR``) sets all three.
    """
    pretrained = config.get("pretrained")
    if config.model != "bert" or not pretrained:
        return config
    config = copy.deepcopy(config)
    path = pretrained.get("path", "")
    with config.unlocked():
        if not path and not config.get("allow_random_init", False):
            raise ValueError(
                f"config {config.name!r} fine-tunes a pretrained BERT: set "
                "--config.pretrained.path=DIR, a directory with config.json, "
                "model.safetensors (or pytorch_model.bin) and tokenizer.json "
                "(e.g. a local copy of bert-base-uncased)."
                + (f" {pretrained.how_to_get}" if pretrained.get("how_to_get") else "")
            )
        if path and not config.model_kwargs.get("hf_config"):
            config.model_kwargs.hf_config = path
        if path and "tokenizer" in config.dataset_kwargs and not config.dataset_kwargs.tokenizer:
            config.dataset_kwargs.tokenizer = path
    return config


def _to_host(x):
    if jax.process_count() > 1:
        x = jax.experimental.multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _sample_input(dataset: Dataset):
    return sample_input(dataset.input_spec)


def train_method(
    config, dataset: Dataset, workdir: str, *, name: str, check_nonfinite_steps: bool = True
) -> MethodResult:
    """Trains all seeds of one method (resuming if possible), then evaluates.

    The final evaluation is on ``config.final_split`` (default ``"test"``; the
    sweep uses ``"validation"``), and is what ``MethodResult.test_accuracy`` holds.
    ``extra["nonfinite_steps"]`` holds, per seed, the steps skipped for
    non-finite gradients.

    Raises:
      NonFiniteStepsError: (if ``check_nonfinite_steps``) a seed skipped more than
        ``config.max_nonfinite_fraction`` of its steps; raised after the result,
        metrics and checkpoints are written.
    """
    os.makedirs(workdir, exist_ok=True)
    limit = max_nonfinite_fraction(config)
    digest = config_hash(config)
    check_same_config(config, workdir, name=name)
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            saved = json.load(f)
        if saved.get("config_hash") == digest:
            print(f"[{name}] already finished; read back {result_path}", flush=True)
            result = MethodResult(**saved)
            if check_nonfinite_steps:
                check_nonfinite([(result, limit)], workdir)
            return result
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str)

    global_batch = config.batch_size
    steps_per_epoch = max(1, dataset.num_train // global_batch)
    total = total_steps_of(config, steps_per_epoch)
    every = intervals(config, steps_per_epoch, total)
    k = config.steps_per_call
    mesh = training.make_mesh(config.get("num_devices", 0) or None)
    runner = _Runner(config, dataset, mesh, total, steps_per_epoch)

    ckpt = training.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=every["checkpoint"],
        keep=config.keep_checkpoints,
    )
    # The best state by mean accuracy on `eval_split` (select on validation!).
    best_ckpt = None
    if config.get("save_best", False):
        best_ckpt = training.Checkpointer(os.path.join(workdir, "best"), save_every=1, keep=1)
    restored = ckpt.restore_latest(runner.state)
    if restored is not None:
        runner.state = restored
    start = int(np.asarray(_to_host(runner.state.step))[0])
    log = MetricsLog(workdir, start_step=start)
    curves = log.curves()  # live: log.write(..., curve_point=...) appends to it
    elapsed = log.meta.get("wall_time_s", 0.0)
    split = config.eval_split
    if best_ckpt is not None and "best_acc" not in log.meta:
        # meta.json was lost: the best evaluation so far is the curves' best.
        best = best_from_curves(curves, f"{split}_accuracy")
        if best is not None:
            log.set_meta(best_acc=best[0], best_step=best[1])
    if start:
        print(f"[{name}] resuming at step {start}/{total}", flush=True)

    iters = [
        dataset.train_iter(
            seed, global_batch, jax.process_index(), jax.process_count(), start_step=start
        )
        for seed in runner.seeds
    ]
    t0 = time.perf_counter()
    bar = progress(total=total, initial=start, desc=name)
    step = start
    window = []
    while step < total:
        batches = _stack([_stack([next(it) for it in iters]) for _ in range(k)])
        runner.state, metrics = runner.multi_step(
            runner.state, runner.put(batches, runner.train_data, 2)
        )
        step += k
        window.append(metrics)
        bar.update(k)
        if step % every["log"] == 0 or step == total:
            train = {
                key: float(np.mean(np.concatenate([np.asarray(m[key]).ravel() for m in window])))
                for key in window[0]
            }
            window = []
            log.write(
                step,
                {f"train/{key}": v for key, v in train.items()},
                wall_time_s=elapsed + time.perf_counter() - t0,
            )
            bar.set_postfix(loss=f"{train['loss']:.3f}", acc=f"{train['accuracy']:.3f}")
        if step % every["eval"] == 0 or step == total:
            ev = runner.evaluate(split)
            log.write(
                step,
                {
                    f"{split}/accuracy": float(ev["accuracy"].mean()),
                    f"{split}/margin_mean": float(ev["margin_mean"].mean()),
                },
                curve_point={f"{split}_accuracy": ev["accuracy"].tolist()},
                wall_time_s=elapsed + time.perf_counter() - t0,
            )
            if best_ckpt is not None and ev["accuracy"].mean() > log.meta.get("best_acc", -1.0):
                best_ckpt.save(runner.state, force=True)
                log.set_meta(best_acc=float(ev["accuracy"].mean()), best_step=step)
        if ckpt.save(runner.state):
            log.set_meta(wall_time_s=elapsed + time.perf_counter() - t0)
    bar.close()
    ckpt.save(runner.state, force=True)
    ckpt.close()

    final_split = config.get("final_split", "test")
    skipped = np.asarray(_to_host(training.nonfinite_steps(runner.state))).reshape(-1)
    extra = {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(mesh.devices.size),
        "config": config.to_dict(),  # the effective config of this method
        # Steps skipped for non-finite gradients (optax.apply_if_finite), per seed.
        "nonfinite_steps": [int(n) for n in skipped],
    }
    if best_ckpt is not None:
        best_ckpt.wait()
        last_state = runner.state
        best_state = best_ckpt.restore_latest(runner.state)
        if best_state is not None:
            runner.state = best_state
            best = runner.evaluate(final_split)
            extra["best"] = {
                "step": log.meta.get("best_step"),
                f"{split}_accuracy": log.meta.get("best_acc"),
                f"{final_split}_accuracy": best["accuracy"].tolist(),
            }
        runner.state = last_state
        best_ckpt.close()
    final = runner.evaluate(final_split, keep_examples=True)
    extra["final_metrics"] = {
        k: v.tolist() for k, v in final.items() if k in ("accuracy", "f1", "loss")
    }
    if config.get("evaluate_all_splits", False):
        extra["splits"] = {}
        for other in dataset.eval_splits:
            ev = final if other == final_split else runner.evaluate(other)
            extra["splits"][other] = {
                k: v.tolist() for k, v in ev.items() if k in ("accuracy", "f1", "margin_mean")
            }
    wall = elapsed + time.perf_counter() - t0
    log.set_meta(wall_time_s=wall)
    log.close()
    np.savez_compressed(
        os.path.join(workdir, "test_examples.npz"),
        margins=final["margins"],
        pre_logits_seed0=final["pre_logits"][0],
        label=final["label"],
    )
    result = MethodResult(
        name=name,
        seeds=runner.seeds,
        test_accuracy=final["accuracy"].tolist(),
        test_loss=final["loss"].tolist(),
        margin_mean=final["margin_mean"].tolist(),
        margin_p10=final["margin_p10"].tolist(),
        curves=curves,
        wall_time_s=wall,
        steps=total,
        config_hash=digest,
        extra=extra,
    )
    if jax.process_index() == 0:
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result.to_json(), f, indent=2)
        os.replace(tmp, result_path)
    if check_nonfinite_steps:
        check_nonfinite([(result, limit)], workdir)
    return result


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overrides: dict | None = None
) -> dict:
    """Trains every method of ``config`` and writes ``summary.json`` + plots to ``workdir``.

    Nothing trains unless every method's config is valid (``experiments/config_check.py``):
    checked before the data is read, and again with the dataset's size and splits.

    Args:
      config: the config; its ``methods`` (if any) are trained one after the other.
      workdir: where checkpoints, logs, the summary and plots go.
      overrides: the command line's ``--config.*`` overrides (``{dotted path: value}``);
        one that a method would shadow is refused.

    Raises:
      config_check.ConfigError: every problem of the config, before any training.
      WorkdirLocked: another run is using ``workdir`` (checked before anything is
        loaded or written).
    """
    from experiments import report

    config_check.validate(config, overrides=overrides)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        config = resolve_pretrained(config)
        dataset = get_dataset(config.dataset, **config.get("dataset_kwargs", {}))
        config_check.validate(config, num_train=dataset.num_train, eval_splits=dataset.eval_splits)
        results, checks = {}, []
        for name, method_config in expand_methods(config).items():
            results[name] = train_method(
                method_config,
                dataset,
                os.path.join(workdir, name),
                name=name,
                check_nonfinite_steps=False,  # checked below, once every method is written
            )
            checks.append((results[name], max_nonfinite_fraction(method_config)))
        summary = report.write_summary(config, dataset.name, results, workdir)
        check_nonfinite(checks, workdir)
        return summary
