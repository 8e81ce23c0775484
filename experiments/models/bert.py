"""BERT encoder and sequence classifier (Devlin et al., 2019) in Flax linen.

The layout follows Hugging Face's ``BertModel`` (post-LayerNorm blocks, learned
absolute positions, token-type embeddings, a tanh pooler on ``[CLS]``), so that
``experiments.models.bert_import`` can load its checkpoints; the forward pass
matches PyTorch's to float32 rounding (``tests/test_bert_pretrained.py``).

Parameter tree of ``BertClassifier`` (Flax ``Dense`` kernels are ``[in, out]``)::

  encoder/embeddings/{word,position,token_type}_embeddings/embedding
  encoder/embeddings/layer_norm/{scale,bias}
  encoder/layer_{i}/attention/{query,key,value,output}/{kernel,bias}
  encoder/layer_{i}/attention_norm/{scale,bias}
  encoder/layer_{i}/{intermediate,output}/{kernel,bias}
  encoder/layer_{i}/output_norm/{scale,bias}
  pooler/{kernel,bias}
  head/{kernel,bias}                      the classifier PMM regularizes

Example::

  cfg = BertConfig.from_hf_config("/path/to/checkpoint")   # its config.json
  model = BertClassifier(cfg, num_classes=3)
  logits, aux = model.apply({"params": params}, x, train=False)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Added to the attention logits of padded keys: exp() of it is 0 in float32, and
# adding a logit to it cannot overflow.
_MASK_BIAS = jnp.finfo(jnp.float32).min / 2

# Hugging Face's names for the feed-forward activation. Their "gelu" is the exact
# erf form; "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT encoder (defaults: BERT-base, uncased).

    Attributes:
      vocab_size: rows of the word-embedding table.
      hidden_size: width ``H`` of every token representation.
      num_layers: number of transformer blocks.
      num_heads: attention heads per block (``H`` must be divisible by it).
      intermediate_size: width of the feed-forward layer.
      max_position_embeddings: longest sequence the position table covers.
      type_vocab_size: number of segment (token type) ids.
      layer_norm_eps: LayerNorm epsilon.
      hidden_dropout: dropout on embeddings, block outputs (and the head input
        unless ``classifier_dropout`` is set).
      attention_dropout: dropout on the attention probabilities.
      hidden_act: feed-forward activation, a key of ``ACTIVATIONS``.
      initializer_range: std of the normal initializer of kernels/embeddings.
      classifier_dropout: dropout in front of the head; ``None``: ``hidden_dropout``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    classifier_dropout: float | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; known: {sorted(ACTIVATIONS)}."
            )

    @classmethod
    def from_hf_config(cls, path: str | os.PathLike) -> BertConfig:
        """Reads a Hugging Face BERT ``config.json`` (or a directory holding one).

        Args:
          path: the ``config.json`` file or the checkpoint directory.

        Returns:
          The ``BertConfig``.

        Raises:
          ValueError: the config describes something this module does not
            implement (e.g. relative position embeddings).
        """
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            hf = json.load(f)
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"{path}: position_embedding_type={position_type!r}; only 'absolute' is "
                "implemented."
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError(f"{path}: decoder / cross-attention BERTs are not supported.")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            hidden_act=hf.get("hidden_act", "gelu"),
            initializer_range=hf.get("initializer_range", 0.02),
            classifier_dropout=hf.get("classifier_dropout"),
        )


def _init(config: BertConfig):
    return nn.initializers.normal(config.initializer_range)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout.

    Attributes:
      config: the ``BertConfig``.
      dtype: compute dtype (parameters stay float32).
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, *, train: bool):
        """Embeds token ids.

        Args:
          input_ids: ``int32[B, T]`` with ``T <= max_position_embeddings``.
          token_type_ids: ``int32[B, T]`` segment ids.
          train: enables dropout (rng stream ``"dropout"``).

        Returns:
          ``[B, T, H]`` in ``dtype``.
        """
        cfg = self.config
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids has length {length} > max_position_embeddings="
                f"{cfg.max_position_embeddings}."
            )

        def embed(num, name):
            return nn.Embed(
                num, cfg.hidden_size, dtype=self.dtype, embedding_init=_init(cfg), name=name
            )

        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(length))
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False, name="layer_norm"
        )(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask bias and output projection.

    Attributes:
      config: the ``BertConfig``.
      dtype: compute dtype; the softmax is always computed in float32.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, train: bool) -> jax.Array:
        """Attends every position to every unmasked position.

        Args:
          x: ``[B, T, H]``.
          mask_bias: ``float32[B, 1, 1, T]``: 0 on real keys, very negative on padding.
          train: enables attention dropout.

        Returns:
          ``[B, T, H]``, after the output projection (before residual and norm).
        """
        cfg = self.config
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        dense = functools.partial(
            nn.Dense, cfg.hidden_size, dtype=self.dtype, kernel_init=_init(cfg)
        )

        def project(name):  # [B, T, H] -> [B, T, heads, head_dim]
            y = dense(name=name)(x)
            return y.reshape(*y.shape[:-1], heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        logits = logits / math.sqrt(head_dim) + mask_bias
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=not train)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        context = context.reshape(*context.shape[:-2], cfg.hidden_size)
        return dense(name="output")(context)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block: attention, then feed-forward.

    Attributes:
      config: the ``BertConfig``.
      dtype: compute dtype.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, train: bool) -> jax.Array:
        """``[B, T, H] -> [B, T, H]``; ``mask_bias`` as in ``BertSelfAttention``."""
        cfg = self.config
        dropout = nn.Dropout(cfg.hidden_dropout)
        norm = functools.partial(
            nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False
        )
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_init(cfg))

        y = BertSelfAttention(cfg, self.dtype, name="attention")(x, mask_bias, train=train)
        x = norm(name="attention_norm")(x + dropout(y, deterministic=not train))
        y = ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, name="intermediate")(x))
        y = dense(cfg.hidden_size, name="output")(y)
        return norm(name="output_norm")(x + dropout(y, deterministic=not train))


class BertEncoder(nn.Module):
    """Embeddings and the stack of ``BertLayer`` blocks (HF ``BertModel`` minus pooler).

    Attributes:
      config: the ``BertConfig``.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        train: bool,
    ) -> jax.Array:
        """Encodes a batch of token sequences.

        Args:
          input_ids: ``int32[B, T]``.
          token_type_ids: ``int32[B, T]``, 0 for the first segment, 1 for the second.
          attention_mask: ``int32[B, T]`` (or bool), 1 on real tokens, 0 on padding.
          train: enables dropout (rng stream ``"dropout"``).

        Returns:
          The last hidden states, ``[B, T, H]`` in ``dtype`` (padded positions are
          computed too, as in PyTorch, and attend only to real tokens).
        """
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, train=train
        )
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, _MASK_BIAS)
        for i in range(self.config.num_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask_bias, train=train)
        return x


class BertClassifier(nn.Module):
    """BERT sequence classifier: encoder, tanh pooler on ``[CLS]``, dropout, head.

    Follows the model contract of ``experiments.models``: returns ``(logits, aux)``
    with ``aux["pre_logits"]`` the input of ``nn.Dense(num_classes, name="head")``.

    Attributes:
      config: the ``BertConfig``.
      num_classes: number of classes ``k``.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    config: BertConfig
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: dict[str, jax.Array], *, train: bool):
        """Classifies token sequences.

        Args:
          x: ``{"input_ids", "token_type_ids", "attention_mask"}``, each
            ``int32[B, T]`` (the two last default to zeros / ones if absent).
          train: enables dropout (rng stream ``"dropout"``).

        Returns:
          ``(logits, aux)``: ``logits`` ``[B, num_classes]``; ``aux`` with
          ``"pre_logits"`` ``[B, H]`` (the head's input, after dropout),
          ``"pooled"`` ``[B, H]`` (the pooler output, before dropout) and
          ``"hidden_states"`` ``[B, T, H]`` (the encoder's last layer).
        """
        cfg = self.config
        input_ids = x["input_ids"]
        token_type_ids = x.get("token_type_ids", jnp.zeros_like(input_ids))
        attention_mask = x.get("attention_mask", jnp.ones_like(input_ids))
        hidden = BertEncoder(cfg, self.dtype, name="encoder")(
            input_ids, token_type_ids, attention_mask, train=train
        )
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_init(cfg))
        pooled = jnp.tanh(dense(cfg.hidden_size, name="pooler")(hidden[:, 0]))
        rate = cfg.hidden_dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
        pre_logits = nn.Dropout(rate)(pooled, deterministic=not train)
        logits = dense(self.num_classes, name="head")(pre_logits)
        return logits, {"pre_logits": pre_logits, "pooled": pooled, "hidden_states": hidden}


def build_classifier(
    num_classes: int,
    *,
    config: BertConfig | None = None,
    hf_config: str | None = None,
    dtype: Any = jnp.float32,
    **overrides,
) -> BertClassifier:
    """A ``BertClassifier`` from a ``BertConfig``, a Hugging Face ``config.json``, or fields.

    ``config`` is used as is; else ``hf_config`` names a checkpoint directory or
    its ``config.json``; else the ``BertConfig`` defaults (BERT-base) apply.
    ``overrides`` replace fields
    (e.g. ``num_layers=2`` for a tiny test model). Registered as ``"bert"`` in
    ``experiments.models``; the weights themselves are loaded by this family's
    ``load`` (``experiments.models.bert_import.load``; ``config.pretrained`` in a
    training config), not here.
    """
    if config is None:
        config = BertConfig.from_hf_config(hf_config) if hf_config else BertConfig()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return BertClassifier(config, num_classes, dtype=jnp.dtype(dtype))
