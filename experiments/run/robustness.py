"""Adversarial evaluation of trained methods: robust accuracy, transfer, minimal radii.

For each method of a finished job, its final state (the latest checkpoint) is attacked
on the first ``attack.max_examples`` examples of ``attack.split``, every seed at once
(``jax.vmap`` over the seed axis of the parameters, one ``jax.jit`` per method):

* **robust accuracy** under PGD with the Carlini-Wagner margin loss
  (``experiments.attacks.robust_accuracy``), in each norm of ``attack.norms``, at the
  radii ``attack.eps_fractions`` times the data's scale (``attacks.eps_grid_for`` on
  the attacked inputs: the median L2 norm, or the standard deviation for L-inf);
* **transfer**: the same attack crafted on the *baseline* of the same seed and
  applied to the method (``attacks.transfer_accuracy``). A method much more robust to
  its own attack than to the baseline's hides its gradients (gradient masking, as
  label smoothing is known to);
* the **minimal L2 radius** per example (``attacks.minimal_eps``, log bisection): an
  input-space margin distribution to set beside PMM's feature-space margins.

The attack runs in the space of the dataset's raw inputs (floats), the dataset's
``preprocess`` inside the model. Predictions use the objective's scores (AM-softmax:
its cosines). Results go to ``<method>/robustness.json`` and ``.npz`` (per-example
radii), and are read back when the method's config and the attack settings match.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import pmm_jax
from experiments import attacks
from experiments.config.identity import config_hash
from experiments.config.plan import plan_of
from experiments.run.build import Trainee, build
from experiments.run.workdir import MethodDir, write_json
from pmm_jax import training

ROBUSTNESS = "robustness.json"
RADII = "robustness_radii.npz"
DEFAULTS = {
    "split": "test",
    "max_examples": 500,
    "norms": ("l2", "linf"),
    "eps_fractions": (0.0, 0.05, 0.1, 0.2, 0.4),
    "steps": 10,
    "bisection_steps": 8,
    "transfer_from": "baseline",
    "seed": 0,
}


def settings(config) -> dict:
    """``config.attack`` over :data:`DEFAULTS` (JSON-normalized)."""
    given = dict(config.get("attack") or {})
    out = {**DEFAULTS, **given}
    return json.loads(json.dumps(out, default=list))


def examples(dataset, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (unpadded) examples of ``split`` as float inputs and labels."""
    xs, ys, have = [], [], 0
    for batch in dataset.eval_iter(split, max(1, min(n, 1000))):
        mask = np.asarray(batch.get("mask", np.ones(len(batch["y"]), bool)))
        xs.append(np.asarray(batch["x"])[mask])
        ys.append(np.asarray(batch["y"])[mask])
        have += int(mask.sum())
        if have >= n:
            break
    return np.concatenate(xs)[:n].astype(np.float32), np.concatenate(ys)[:n].astype(np.int32)


def _predict_fn(trainee: Trainee, dataset, state_one_seed):
    """``x -> scores`` of one seed's state (inference mode, preprocess inside)."""
    variables = {"params": state_one_seed.params}
    if state_one_seed.batch_stats:
        variables["batch_stats"] = state_one_seed.batch_stats

    def predict(x):
        x = dataset.preprocess(jax.random.PRNGKey(0), {"x": x}, False)["x"]
        logits, aux = state_one_seed.apply_fn(variables, x, train=False)
        if trainee.scores is None:
            return logits
        kernel, bias = pmm_jax.find_head(state_one_seed.params)
        return trainee.scores(logits, features=aux["pre_logits"], kernel=kernel, bias=bias)

    return predict


def _attack_program(trainee, dataset, source_trainee, grids: dict, s: dict):
    """``(state, source_state, key, x, y) -> outputs [seeds, ...]``, jitted."""

    def program(state, source, key, x, y):
        def one_seed(state, source, key):
            predict = _predict_fn(trainee, dataset, state)
            keys = jax.random.split(key, 2 * len(grids) + 1)
            out = {}
            for i, (norm, grid) in enumerate(grids.items()):
                common = dict(eps_grid=grid, norm=norm, steps=s["steps"], loss="cw")
                out[f"robust_{norm}"] = attacks.robust_accuracy(
                    predict, x, y, key=keys[2 * i], **common
                )
                if source is not None:
                    craft = _predict_fn(source_trainee, dataset, source)
                    out[f"transfer_{norm}"] = attacks.transfer_accuracy(
                        craft, predict, x, y, key=keys[2 * i + 1], **common
                    )
            if "l2" in grids:
                out["minimal_l2"] = attacks.minimal_eps(
                    predict,
                    x,
                    y,
                    eps_max=2.0 * float(np.max(grids["l2"])),
                    norm="l2",
                    bisection_steps=s["bisection_steps"],
                    pgd_steps=s["steps"],
                    key=keys[-1],
                )
            return out

        keys = jax.random.split(key, len(trainee.seeds))
        return jax.vmap(one_seed)(state, source, keys)

    return jax.jit(program)


def evaluate_method(
    name: str,
    config,
    dataset,
    mdir: MethodDir,
    *,
    source: tuple | None = None,
    mesh=None,
) -> dict:
    """The robustness of method ``name`` (finished in ``mdir``), read back if done.

    Args:
      source: ``(config, MethodDir)`` of the method the transfer attack is crafted on
        (the baseline), or None.

    Returns:
      ``{"settings", "eps": {norm: [G]}, "robust_<norm>": [[per seed] per eps],
      "transfer_<norm>": ..., "minimal_l2": {"median": [per seed], ...}}``.
    """
    s = settings(config)
    key = {"config_hash": config_hash(config), "settings": s}
    if source is not None:
        key["source_hash"] = config_hash(source[0])
    path = os.path.join(mdir.path, ROBUSTNESS)
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f)
        if done.get("key") == key:
            return done
    mesh = mesh or training.make_mesh(1)
    x, y = examples(dataset, s["split"], s["max_examples"])
    grids = {n: attacks.eps_grid_for(x, s["eps_fractions"], n) for n in s["norms"]}
    trainee, state = _final(config, dataset, mdir, mesh)
    source_trainee, source_state = (None, None)
    if source is not None:
        source_trainee, source_state = _final(source[0], dataset, source[1], mesh)
    program = _attack_program(trainee, dataset, source_trainee, grids, s)
    out = program(state, source_state, jax.random.PRNGKey(s["seed"]), jnp.asarray(x), y)
    out = jax.tree.map(np.asarray, jax.device_get(out))
    result = {"key": key, "settings": s, "eps": {n: g.tolist() for n, g in grids.items()}}
    for k, v in out.items():
        if k == "minimal_l2":  # over the examples classified right (0: clean errors)
            flipped = np.where(np.isfinite(v) & (v > 0), v, np.nan)
            result[k] = {
                "median": np.nanmedian(flipped, axis=1).tolist(),
                "p10": np.nanpercentile(flipped, 10, axis=1).tolist(),
                "not_flipped": np.mean(~np.isfinite(v), axis=1).tolist(),
                "clean_errors": np.mean(v == 0, axis=1).tolist(),
            }
            if jax.process_index() == 0:
                np.savez_compressed(os.path.join(mdir.path, RADII), minimal_l2=v)
        else:
            result[k] = v.T.tolist()  # [eps][seed]
    write_json(path, result)
    return result


def _final(config, dataset, mdir: MethodDir, mesh):
    """The method's trainee and its latest checkpoint (the final state)."""
    plan = plan_of(config, dataset.num_train)
    trainee = build(config, dataset, mesh, plan, alpha_ratio=1.0)
    ckpt = training.Checkpointer(mdir.checkpoints, save_every=plan.every["checkpoint"])
    state = ckpt.restore_latest(trainee.initial_state())
    ckpt.close()
    if state is None or int(training.gather_to_host(state.step)[0]) != plan.total:
        raise ValueError(f"{mdir.path} holds no finished run to attack (train it first).")
    return trainee, state
