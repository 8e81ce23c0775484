"""Loads Hugging Face BERT-family checkpoints from disk into ``BertClassifier`` params.

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (read
with ``safetensors.numpy``, no PyTorch needed; sharded ``model.safetensors.index.json``
too) or ``pytorch_model.bin`` (needs PyTorch). Nothing is downloaded: the hub is
never contacted.

Names are mapped from Hugging Face's ``BertModel`` / ``BertFor*`` layout (with or
without the ``bert.`` prefix, old ``LayerNorm.gamma/beta`` names too); PyTorch
``Linear`` weights ``[out, in]`` are transposed to Flax kernels ``[in, out]``.
The pooler and the classifier head (``classifier.*``) are loaded when present
(and ``load_head``), else kept freshly initialized; every other encoder weight is
required. Keys that are known to be harmless (``embeddings.position_ids``, the
pre-training heads ``cls.*``) are dropped and listed in the report; any other key
the model has no place for is an error.

Example::

  params, report = load_hf_params(read_hf_checkpoint("/ckpt/bert-base-uncased"), params)
  print(report)

The trainer loads checkpoints through this family's :func:`load` and
:func:`resolve_config` (via ``experiments.models.load_pretrained`` and
``resolve_pretrained``), as big_vision's model modules own their ``load()``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.models.bert import BertClassifier, BertConfig

Path = tuple[str, ...]

# Prefixes of keys that are dropped without complaint (pre-training heads).
_IGNORED_PREFIXES = ("cls.",)
# Keys dropped without complaint (buffers, not weights).
_IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Flax subtrees that may be absent from a checkpoint (then freshly initialized).
_OPTIONAL = ("pooler", "head")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or misshapen weights."""


@dataclasses.dataclass
class ImportReport:
    """What ``load_hf_params`` did.

    Attributes:
      loaded: checkpoint keys copied into the params (normalized names).
      ignored: checkpoint keys dropped as harmless (``position_ids``, ``cls.*``,
        ``classifier.*`` when ``load_head=False``).
      initialized: Flax param paths kept from the fresh initialization
        (``head/...`` unless loaded, ``pooler/...`` if absent).
    """

    loaded: list[str]
    ignored: list[str]
    initialized: list[str]

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; ignored {self.ignored or 'none'}; "
            f"freshly initialized {self.initialized or 'none'}"
        )


def read_hf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the weights of a Hugging Face checkpoint into numpy arrays.

    Args:
      path: a checkpoint directory, or a ``.safetensors`` / ``.bin`` file.

    Returns:
      ``{name: array}`` with the checkpoint's own names and dtypes (floating
      ``pytorch_model.bin`` tensors come back as float32).

    Raises:
      FileNotFoundError: no weights file in the directory.
      ImportError: ``pytorch_model.bin`` and PyTorch is not installed.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return read_hf_checkpoint(os.path.join(path, name))
        raise FileNotFoundError(
            f"No model.safetensors or pytorch_model.bin in {path!r} (files: "
            f"{sorted(os.listdir(path))})."
        )
    if path.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(read_hf_checkpoint(os.path.join(os.path.dirname(path), shard)))
        return state
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    return _read_torch_file(path)


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path!r} needs PyTorch (a CPU build is enough), or convert the "
            "checkpoint to model.safetensors, which needs no PyTorch."
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def _normalize(key: str) -> str:
    if key.startswith("bert."):
        key = key[len("bert.") :]
    if ".LayerNorm." in key:  # checkpoints converted from TF 1 name LayerNorm gamma/beta
        key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight")
        key = key.replace(".LayerNorm.beta", ".LayerNorm.bias")
    return key


def hf_name_map(config: BertConfig) -> dict[str, tuple[Path, bool]]:
    """Maps each Hugging Face weight name to its Flax param path.

    Args:
      config: the model's ``BertConfig`` (for the number of layers).

    Returns:
      ``{hf_name: (flax_path, transpose)}`` with names without the ``bert.``
      prefix; ``transpose`` is True for ``Linear`` weights.
    """
    names: dict[str, tuple[Path, bool]] = {}

    def linear(hf: str, path: Path):
        names[f"{hf}.weight"] = ((*path, "kernel"), True)
        names[f"{hf}.bias"] = ((*path, "bias"), False)

    def layer_norm(hf: str, path: Path):
        names[f"{hf}.weight"] = ((*path, "scale"), False)
        names[f"{hf}.bias"] = ((*path, "bias"), False)

    emb = ("encoder", "embeddings")
    for kind in ("word", "position", "token_type"):
        names[f"embeddings.{kind}_embeddings.weight"] = (
            (*emb, f"{kind}_embeddings", "embedding"),
            False,
        )
    layer_norm("embeddings.LayerNorm", (*emb, "layer_norm"))
    for i in range(config.num_layers):
        hf, fx = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        for proj in ("query", "key", "value"):
            linear(f"{hf}.attention.self.{proj}", (*fx, "attention", proj))
        linear(f"{hf}.attention.output.dense", (*fx, "attention", "output"))
        layer_norm(f"{hf}.attention.output.LayerNorm", (*fx, "attention_norm"))
        linear(f"{hf}.intermediate.dense", (*fx, "intermediate"))
        linear(f"{hf}.output.dense", (*fx, "output"))
        layer_norm(f"{hf}.output.LayerNorm", (*fx, "output_norm"))
    linear("pooler.dense", ("pooler",))
    linear("classifier", ("head",))
    return names


def _get(tree: Mapping[str, Any], path: Path):
    for p in path:
        tree = tree[p]
    return tree


def _flat_paths(tree, prefix: Path = ()) -> list[Path]:
    if isinstance(tree, Mapping):
        return [q for k, v in tree.items() for q in _flat_paths(v, (*prefix, k))]
    return [prefix]


def load_hf_params(
    state_dict: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    config: BertConfig,
    load_head: bool = True,
) -> tuple[dict[str, Any], ImportReport]:
    """Fills freshly initialized ``BertClassifier`` params from a checkpoint.

    Args:
      state_dict: ``{hf_name: array}``, e.g. from ``read_hf_checkpoint``.
      params: ``BertClassifier(config, k).init(...)["params"]``: gives the
        expected shapes and the values of what the checkpoint lacks (head, pooler).
      config: the ``BertConfig`` the params were built with.
      load_head: copy ``classifier.*`` into ``head`` if present; if False it is
        ignored (e.g. fine-tuning an MNLI checkpoint on a binary task).

    Returns:
      ``(new_params, report)``: a new nested dict of float32 arrays, and the
      ``ImportReport``.

    Raises:
      CheckpointMismatchError: listing every missing required weight, every
        unexpected key and every shape mismatch at once.
    """
    names = hf_name_map(config)
    new = _copy_dicts(params)
    loaded, ignored, unexpected, shape_errors = [], [], [], []
    seen = set()  # normalized names that the model has a place for
    for raw_key, value in state_dict.items():
        key = _normalize(raw_key)
        if key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES):
            ignored.append(raw_key)
            continue
        if key.startswith("classifier.") and not load_head:
            ignored.append(raw_key)
            continue
        if key not in names or key in seen:  # unknown, or twice (with and without bert.)
            unexpected.append(raw_key)
            continue
        seen.add(key)
        path, transpose = names[key]
        value = np.asarray(value, np.float32)
        value = value.T if transpose else value
        expected = tuple(np.shape(_get(params, path)))
        if value.shape != expected:
            shape_errors.append(
                f"{raw_key}: checkpoint {value.shape}{' (transposed)' if transpose else ''}"
                f" vs model {'/'.join(path)} {expected}"
            )
            continue
        _get(new, path[:-1])[path[-1]] = jnp.asarray(value)
        loaded.append(key)
    # The pooler and head may be absent, but not in part.
    present = {names[k][0][0] for k in seen}
    missing = [
        k
        for k, (path, _) in names.items()
        if k not in seen and (path[0] not in _OPTIONAL or path[0] in present)
    ]
    if missing or unexpected or shape_errors:
        lines = [f"The checkpoint does not fit BertClassifier({config}):"]
        if missing:
            lines.append(f"missing weights ({len(missing)}, names without 'bert.'): {missing}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
            if not seen:
                lines.append(
                    "(no expected name matched: is this a BERT-family checkpoint? Names "
                    "like 'embeddings.word_embeddings.weight', optionally under 'bert.', "
                    "are expected.)"
                )
        if shape_errors:
            lines.append(f"wrong shapes ({len(shape_errors)}): {shape_errors}")
        raise CheckpointMismatchError("\n  ".join(lines))
    loaded_paths = {names[k][0] for k in loaded}
    initialized = [
        "/".join(p) for p in _flat_paths(params) if p[0] in _OPTIONAL and p not in loaded_paths
    ]
    return new, ImportReport(loaded=loaded, ignored=ignored, initialized=initialized)


def _copy_dicts(tree):
    """A new nested dict (also from a FrozenDict) sharing the leaves."""
    if isinstance(tree, Mapping):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree


# The family's pretrained-weights interface (``experiments.models.load_pretrained`` and
# ``resolve_pretrained`` dispatch here for ``model="bert"``).


def load(
    params: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    model: BertClassifier,
    stacked: bool = False,
    kind: str | None = None,
) -> dict[str, Any]:
    """Loads a checkpoint directory's encoder and pooler into ``params``; the head stays.

    The classifier head is never loaded (fine-tuning gets a fresh head, of this
    model's ``num_classes``). The report is printed as ``[pretrained] PATH: ...``.

    Args:
      params: ``model``'s freshly initialized params.
      path: a Hugging Face BERT-family checkpoint directory (``config.json`` +
        ``model.safetensors`` or ``pytorch_model.bin``).
      model: the ``BertClassifier`` the params belong to (its ``config``).
      stacked: every leaf of ``params`` has a leading axis of independent copies
        (e.g. one per seed, as the trainer stacks them); the checkpoint is read
        once and loaded into each copy.
      kind: the checkpoint format: ``"hf_bert"`` (the default, ``None``) only.

    Returns:
      The new params (nested dicts; stacked like ``params``).

    Raises:
      CheckpointMismatchError: see ``load_hf_params``.
    """
    if kind not in (None, "hf_bert"):
        raise ValueError(f"Unknown pretrained.kind {kind!r}; known: hf_bert.")
    weights = read_hf_checkpoint(path)
    copies = jax.tree.leaves(params)[0].shape[0] if stacked else 1
    loaded = []
    for i in range(copies):
        params_i = jax.tree.map(lambda x, i=i: np.asarray(x[i]), params) if stacked else params
        new, report = load_hf_params(weights, params_i, config=model.config, load_head=False)
        loaded.append(new)
    print(f"[pretrained] {path}: {report}", flush=True)
    if not stacked:
        return loaded[0]
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *loaded)


def resolve_config(config):
    """Points the BERT architecture and the tokenizer at ``config.pretrained.path``.

    ``model_kwargs.hf_config`` and the dataset's ``tokenizer`` default to the
    checkpoint directory, so one flag (``--config.pretrained.path=DIR``) sets all three.

    Args:
      config: an ``ml_collections.ConfigDict`` with ``model="bert"`` and ``pretrained``.

    Returns:
      A resolved copy of ``config``.

    Raises:
      ValueError: ``pretrained.path`` is empty and ``allow_random_init`` is not set
        (with ``pretrained.how_to_get``, if the config says how to get it).
    """
    config = copy.deepcopy(config)
    path = config.pretrained.get("path", "")
    with config.unlocked():
        if not path and not config.get("allow_random_init", False):
            how_to_get = config.pretrained.get("how_to_get")
            raise ValueError(
                f"config {config.name!r} fine-tunes a pretrained BERT: set "
                "--config.pretrained.path=DIR, a directory with config.json, "
                "model.safetensors (or pytorch_model.bin) and tokenizer.json "
                "(e.g. a local copy of bert-base-uncased)."
                + (f" {how_to_get}" if how_to_get else "")
            )
        if path and not config.model_kwargs.get("hf_config"):
            config.model_kwargs.hf_config = path
        if path and "tokenizer" in config.dataset_kwargs and not config.dataset_kwargs.tokenizer:
            config.dataset_kwargs.tokenizer = path
    return config
