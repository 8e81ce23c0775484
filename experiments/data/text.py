"""Tokenization for BERT-style models with the checkpoint's own ``tokenizer.json``.

Uses the ``tokenizers`` package (Rust, batched, no PyTorch): its post-processor
adds the special tokens (``[CLS] a [SEP] b [SEP]`` for BERT) and the segment ids,
its truncation is longest-first, and every sequence is padded to ``max_len`` so
that batches have one static shape under ``jax.jit``.

Example::

  tok = load_tokenizer("/ckpt/bert-base-uncased")           # or .../tokenizer.json
  x = encode_pairs(tok, ["A man eats."], ["Someone is eating."], max_len=128)
  x["input_ids"].shape                                       # (1, 128), int32
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

TEXT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a ``tokenizers.Tokenizer`` from ``tokenizer.json`` or its directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path!r} does not exist; a checkpoint directory with a tokenizer.json "
            "(the fast-tokenizer file Hugging Face saves) is needed."
        )
    return Tokenizer.from_file(path)


def _pad_token(tokenizer: Tokenizer) -> tuple[str, int]:
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_token"], tokenizer.padding["pad_id"]
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, token_id
    raise ValueError("The tokenizer has no padding configured and no [PAD] / <pad> token.")


def configure(tokenizer: Tokenizer, *, max_len: int) -> Tokenizer:
    """Sets longest-first truncation and right padding to ``max_len``, in place.

    Only touches the tokenizer when its settings differ, so that threads that
    share a tokenizer configured once can encode concurrently.

    Returns:
      The same tokenizer.
    """
    truncation = {"max_length": max_len, "stride": 0, "strategy": "longest_first"}
    if tokenizer.truncation != {**truncation, "direction": "right"}:
        tokenizer.enable_truncation(**truncation, direction="right")
    padding = tokenizer.padding or {}
    wanted = {"length": max_len, "direction": "right", "pad_type_id": 0, "pad_to_multiple_of": None}
    if any(padding.get(k) != v for k, v in wanted.items()):
        pad_token, pad_id = _pad_token(tokenizer)
        tokenizer.enable_padding(
            direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad_token, length=max_len
        )
    return tokenizer


def encode_pairs(
    tokenizer: Tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    *,
    max_len: int = 128,
) -> dict[str, np.ndarray]:
    """Tokenizes single sentences or sentence pairs into fixed-length id arrays.

    Pairs become ``[CLS] a [SEP] b [SEP]`` (segment ids 0 up to and including the
    first ``[SEP]``, 1 after it), as the tokenizer's post-processor says. Too long
    inputs are truncated longest-first (tokens are removed from the longer of the
    two texts, special tokens kept); all are padded on the right to ``max_len``.

    The tokenizer's truncation and padding are set in place by ``configure``.

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` (see ``load_tokenizer``).
      texts_a: ``N`` first texts (``str``; ``bytes`` are decoded as UTF-8).
      texts_b: ``N`` second texts, or ``None`` for single sentences.
      max_len: the length ``T`` of every output row, special tokens included.

    Returns:
      ``{"input_ids", "token_type_ids", "attention_mask"}``, each ``int32[N, T]``;
      ``attention_mask`` is 1 on real tokens and 0 on padding.
    """
    configure(tokenizer, max_len=max_len)
    texts_a = [_to_str(t) for t in texts_a]
    if texts_b is None:
        inputs = texts_a
    else:
        texts_b = [_to_str(t) for t in texts_b]
        if len(texts_a) != len(texts_b):
            raise ValueError(f"{len(texts_a)} texts_a but {len(texts_b)} texts_b.")
        inputs = list(zip(texts_a, texts_b, strict=True))
    encodings = tokenizer.encode_batch(inputs) if inputs else []

    def stack(field):
        rows = [getattr(e, field) for e in encodings]
        return np.asarray(rows, np.int32).reshape(len(rows), max_len)

    return {
        "input_ids": stack("ids"),
        "token_type_ids": stack("type_ids"),
        "attention_mask": stack("attention_mask"),
    }


def _to_str(text) -> str:
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)
