"""Shared pieces of the BERT tests: a tiny tokenizer, a tiny config, fake checkpoints."""

import json
import os
import string
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from experiments.models.bert import BertClassifier, BertConfig
from experiments.models.bert_import import ImportReport, load_hf_params, read_hf_checkpoint

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "movie", "was", "good", "bad", "a", "man", "eats", "food"]


def tiny_tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer: a few words, then letters and ##letters.

    Any lowercase ASCII word is spelled with letters, so tfds's random mock
    strings tokenize too. It has no padding configured (as many files don't).
    """
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIAL + WORDS + [c for c in letters if c not in WORDS] + [f"##{c}" for c in letters]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIAL)  # already in the vocabulary: marks them special
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tok


def tiny_config(**overrides) -> BertConfig:
    kwargs = dict(
        vocab_size=tiny_tokenizer().get_vocab_size(),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def random_inputs(config: BertConfig, batch: int = 3, length: int = 12, seed: int = 0):
    """Random ids, two segments, the last rows padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, size=(batch, length)).astype(np.int32)
    types = (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0)
    lengths = np.maximum(length - 3 * np.arange(batch), 2)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "token_type_ids": types * mask, "attention_mask": mask}


def init_params(model: BertClassifier, x, seed: int = 0):
    return model.init(jax.random.key(seed), x, train=False)["params"]


def fake_hf_state_dict(config: BertConfig, *, seed: int = 0, prefix: str = "bert."):
    """Random weights under Hugging Face's names and PyTorch layouts ([out, in]).

    Written independently of ``bert_import.hf_name_map``, from modeling_bert's
    module names, as the spec that the map is checked against.
    """
    rng = np.random.default_rng(seed)
    h, i = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for n in range(config.num_layers):
        layer = f"encoder.layer.{n}"
        for name in ("self.query", "self.key", "self.value", "output.dense"):
            shapes[f"{layer}.attention.{name}.weight"] = (h, h)
            shapes[f"{layer}.attention.{name}.bias"] = (h,)
        shapes[f"{layer}.attention.output.LayerNorm.weight"] = (h,)
        shapes[f"{layer}.attention.output.LayerNorm.bias"] = (h,)
        shapes[f"{layer}.intermediate.dense.weight"] = (i, h)
        shapes[f"{layer}.intermediate.dense.bias"] = (i,)
        shapes[f"{layer}.output.dense.weight"] = (h, i)
        shapes[f"{layer}.output.dense.bias"] = (h,)
        shapes[f"{layer}.output.LayerNorm.weight"] = (h,)
        shapes[f"{layer}.output.LayerNorm.bias"] = (h,)
    state = {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    state[prefix + "embeddings.position_ids"] = np.arange(config.max_position_embeddings)[None]
    return state


def as_numpy(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def max_abs_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def hf_config_json(config: BertConfig, **extra) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "hidden_act": config.hidden_act,
        **extra,
    }


def write_checkpoint(path, cfg, state, *, tokenizer=None):
    """A Hugging Face-style checkpoint directory: config.json, model.safetensors, tokenizer.json."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config_json(cfg)))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(path / "model.safetensors")
    )
    if tokenizer is not None:
        tokenizer.save(str(path / "tokenizer.json"))
    return path


def load_hf_bert(
    path: str | os.PathLike,
    num_classes: int,
    *,
    seed: int = 0,
    dtype: Any = jnp.float32,
    load_head: bool = True,
) -> tuple[BertClassifier, dict[str, Any], ImportReport]:
    """Builds a ``BertClassifier`` from a checkpoint directory on disk (for the tests:
    the trainer loads weights through the family's ``load``).

    Args:
      path: directory with ``config.json`` and the weights (see module docstring).
      num_classes: number of classes of the (new) head.
      seed: seed of the fresh initialization of the head (and pooler, if absent).
      dtype: compute dtype of the model; params are float32.
      load_head: see ``load_hf_params``.

    Returns:
      ``(model, params, report)``.

    Raises:
      CheckpointMismatchError: see ``load_hf_params``.
    """
    config = BertConfig.from_hf_config(path)
    model = BertClassifier(config, num_classes, dtype=dtype)
    dummy = {k: jnp.zeros((1, 2), jnp.int32) for k in ("input_ids", "token_type_ids")}
    dummy["attention_mask"] = jnp.ones((1, 2), jnp.int32)
    params = jax.jit(lambda rng: model.init(rng, dummy, train=False)["params"])(
        jax.random.key(seed)
    )
    params, report = load_hf_params(
        read_hf_checkpoint(path), params, config=config, load_head=load_head
    )
    return model, params, report
