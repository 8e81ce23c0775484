"""Tests for experiments/models/bert.py and bert_import.py (tiny random models, CPU)."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from experiments.models import get_model
from experiments.models.bert import ACTIVATIONS, BertClassifier, BertConfig, BertEncoder
from experiments.models.bert_import import (
    CheckpointMismatchError,
    hf_name_map,
    load_hf_params,
    read_hf_checkpoint,
)
from tests.bert_helpers import (
    fake_hf_state_dict,
    hf_config_json,
    init_params,
    load_hf_bert,
    max_abs_diff,
    random_inputs,
    tiny_config,
    write_checkpoint,
)

# --------------------------------------------------------------------------- model


def test_bert_classifier_follows_the_model_contract():
    cfg = tiny_config()
    model = get_model("bert", config=cfg, num_classes=3)
    x = random_inputs(cfg)
    params = init_params(model, x)
    assert params["head"]["kernel"].shape == (cfg.hidden_size, 3)
    for train in (False, True):
        logits, aux = model.apply(
            {"params": params}, x, train=train, rngs={"dropout": jax.random.key(1)}
        )
        assert logits.shape == (3, 3) and aux["pre_logits"].shape == (3, cfg.hidden_size)
        assert aux["hidden_states"].shape == (3, 12, cfg.hidden_size)
        expected = aux["pre_logits"] @ params["head"]["kernel"] + params["head"]["bias"]
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    # Evaluation: no dropout, pre_logits is the pooler output.
    _, aux = model.apply({"params": params}, x, train=False)
    np.testing.assert_array_equal(aux["pre_logits"], aux["pooled"])


def test_bert_dropout_uses_the_dropout_rng():
    cfg = tiny_config()
    model = BertClassifier(cfg, 2)
    x = random_inputs(cfg)
    params = init_params(model, x)

    def run(seed):
        return model.apply(
            {"params": params}, x, train=True, rngs={"dropout": jax.random.key(seed)}
        )[0]

    np.testing.assert_array_equal(run(0), run(0))
    assert max_abs_diff(run(0), run(1)) > 1e-4
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, x, train=True)


def test_bert_padding_leaves_real_tokens_unchanged():
    cfg = tiny_config()
    encoder = BertEncoder(cfg)
    x = random_inputs(cfg, batch=1, length=7)
    x = {k: np.ones_like(v) if k == "attention_mask" else v for k, v in x.items()}
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in x.items()}
    params = encoder.init(jax.random.key(0), *padded.values(), train=False)["params"]
    short = encoder.apply({"params": params}, *x.values(), train=False)
    long = encoder.apply({"params": params}, *padded.values(), train=False)
    np.testing.assert_allclose(long[:, :7], short, atol=1e-5)
    # Without the mask, the padding would be attended to.
    unmasked = dict(padded, attention_mask=np.ones_like(padded["attention_mask"]))
    assert (
        max_abs_diff(
            encoder.apply({"params": params}, *unmasked.values(), train=False)[:, :7], short
        )
        > 1e-3
    )


def test_bert_bf16_compute_keeps_float32_params():
    cfg = tiny_config()
    x = random_inputs(cfg)
    params = init_params(BertClassifier(cfg, 2), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits32, _ = BertClassifier(cfg, 2).apply({"params": params}, x, train=False)
    logits16, aux = BertClassifier(cfg, 2, dtype=jnp.bfloat16).apply(
        {"params": params}, x, train=False
    )
    assert logits16.dtype == jnp.bfloat16 and aux["hidden_states"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits16, np.float32), logits32, atol=0.05)
    init16 = BertClassifier(cfg, 2, dtype=jnp.bfloat16).init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init16))


def test_bert_activation_is_exact_erf_gelu():
    x = jnp.linspace(-4.0, 4.0, 41)
    exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.asarray(x)])
    np.testing.assert_allclose(ACTIVATIONS["gelu"](x), exact, atol=1e-6)
    assert max_abs_diff(ACTIVATIONS["gelu_new"](x), exact) > 1e-4  # the tanh form differs


def test_bert_rejects_too_long_inputs():
    cfg = tiny_config(max_position_embeddings=8)
    x = random_inputs(cfg, length=9)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        init_params(BertClassifier(cfg, 2), x)


def test_bert_config_fromhf_config_json(tmp_path):
    cfg = tiny_config(hidden_dropout=0.2)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(cfg, classifier_dropout=0.3)))
    loaded = BertConfig.from_hf_config(tmp_path)
    assert loaded == tiny_config(hidden_dropout=0.2, classifier_dropout=0.3)
    assert BertConfig.from_hf_config(tmp_path / "config.json") == loaded

    (tmp_path / "config.json").write_text(
        json.dumps(hf_config_json(cfg, position_embedding_type="relative_key"))
    )
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig.from_hf_config(tmp_path)
    with pytest.raises(ValueError, match="hidden_act"):
        tiny_config(hidden_act="swish")
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(num_heads=5)


def test_bert_modules_do_not_import_tensorflow():
    code = (
        "import sys, pmm_jax, experiments.models.bert, experiments.models.bert_import, "
        "experiments.data.text, experiments.data.glue\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- import


def test_bert_import_maps_every_hf_weight_with_transposes():
    cfg = tiny_config()
    model = BertClassifier(cfg, 3)
    x = random_inputs(cfg)
    fresh = init_params(model, x)
    state = fake_hf_state_dict(cfg)  # with the "bert." prefix, as BertFor* saves it
    state["classifier.weight"] = np.ones((3, cfg.hidden_size), np.float32)
    state["classifier.bias"] = np.arange(3, dtype=np.float32)
    params, report = load_hf_params(state, fresh, config=cfg)

    enc, p = params["encoder"], "bert."
    np.testing.assert_array_equal(
        enc["embeddings"]["word_embeddings"]["embedding"],
        state[p + "embeddings.word_embeddings.weight"],
    )
    np.testing.assert_array_equal(
        enc["layer_1"]["attention"]["query"]["kernel"],
        state[p + "encoder.layer.1.attention.self.query.weight"].T,
    )
    np.testing.assert_array_equal(
        enc["layer_0"]["output"]["kernel"], state[p + "encoder.layer.0.output.dense.weight"].T
    )
    assert enc["layer_0"]["output"]["kernel"].shape == (cfg.intermediate_size, cfg.hidden_size)
    np.testing.assert_array_equal(
        enc["layer_1"]["attention_norm"]["scale"],
        state[p + "encoder.layer.1.attention.output.LayerNorm.weight"],
    )
    np.testing.assert_array_equal(params["pooler"]["kernel"], state[p + "pooler.dense.weight"].T)
    np.testing.assert_array_equal(params["head"]["bias"], [0, 1, 2])
    # Every param replaced, none left from the fresh init; the tree is unchanged.
    assert jax.tree.structure(params) == jax.tree.structure(fresh)
    for new, old in zip(jax.tree.leaves(params), jax.tree.leaves(fresh), strict=True):
        assert new.shape == old.shape and new.dtype == jnp.float32
        assert not np.array_equal(new, old)
    assert report.ignored == ["bert.embeddings.position_ids"] and report.initialized == []
    assert len(report.loaded) == len(hf_name_map(cfg)) == len(state) - 1
    logits, _ = model.apply({"params": params}, x, train=False)
    assert np.isfinite(logits).all()


def test_bert_import_without_prefix_pooler_or_head_keeps_fresh_init():
    cfg = tiny_config()
    fresh = init_params(BertClassifier(cfg, 2), random_inputs(cfg))
    state = {k: v for k, v in fake_hf_state_dict(cfg, prefix="").items() if "pooler" not in k}
    state["cls.predictions.bias"] = np.zeros(cfg.vocab_size, np.float32)  # MLM head
    params, report = load_hf_params(state, fresh, config=cfg)
    assert sorted(report.initialized) == [
        "head/bias",
        "head/kernel",
        "pooler/bias",
        "pooler/kernel",
    ]
    assert sorted(report.ignored) == ["cls.predictions.bias", "embeddings.position_ids"]
    np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
    np.testing.assert_array_equal(params["pooler"]["kernel"], fresh["pooler"]["kernel"])
    assert "cls.predictions.bias" in str(report)


def test_bert_import_reports_missing_unexpected_and_misshapen_weights():
    cfg = tiny_config()
    fresh = init_params(BertClassifier(cfg, 2), random_inputs(cfg))
    state = fake_hf_state_dict(cfg)
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.2.output.dense.bias"] = np.zeros(cfg.hidden_size, np.float32)
    state["bert.embeddings.word_embeddings.weight"] = np.zeros((7, cfg.hidden_size), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        load_hf_params(state, fresh, config=cfg)
    message = str(info.value)
    assert "missing weights (1, names without 'bert.'): ['encoder.layer.1.output.dense.bias']" in (
        message
    )
    assert "unexpected keys (1): ['bert.encoder.layer.2.output.dense.bias']" in message
    assert "bert.embeddings.word_embeddings.weight: checkpoint (7, 32)" in message
    assert f"({cfg.vocab_size}, 32)" in message

    # The pooler may be absent, but not half of it.
    state = fake_hf_state_dict(cfg)
    del state["bert.pooler.dense.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"\['pooler\.dense\.bias'\]"):
        load_hf_params(state, fresh, config=cfg)

    # A checkpoint of another family: nothing matches, and the error says so.
    with pytest.raises(CheckpointMismatchError, match="BERT-family"):
        load_hf_params(
            {"roberta.embeddings.word_embeddings.weight": np.zeros(3)}, fresh, config=cfg
        )


def test_bert_import_rejects_a_weight_given_twice():
    cfg = tiny_config(num_layers=1)
    fresh = init_params(BertClassifier(cfg, 2), random_inputs(cfg))
    state = fake_hf_state_dict(cfg)
    state["pooler.dense.bias"] = state["bert.pooler.dense.bias"]  # with and without "bert."
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\)"):
        load_hf_params(state, fresh, config=cfg)


def test_bert_import_head_of_another_task():
    cfg = tiny_config()
    fresh = init_params(BertClassifier(cfg, 2), random_inputs(cfg))
    state = fake_hf_state_dict(cfg)
    state["classifier.weight"] = np.zeros((3, cfg.hidden_size), np.float32)  # an MNLI head
    state["classifier.bias"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.weight"):
        load_hf_params(state, fresh, config=cfg)
    params, report = load_hf_params(state, fresh, config=cfg, load_head=False)
    assert {"classifier.weight", "classifier.bias"} <= set(report.ignored)
    np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])


def test_bert_import_accepts_tf1_layer_norm_names():
    cfg = tiny_config(num_layers=1)
    fresh = init_params(BertClassifier(cfg, 2), random_inputs(cfg))
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in fake_hf_state_dict(cfg).items()
    }
    params, _ = load_hf_params(state, fresh, config=cfg)
    np.testing.assert_array_equal(
        params["encoder"]["embeddings"]["layer_norm"]["scale"],
        state["bert.embeddings.LayerNorm.gamma"],
    )


def test_bert_load_hf_bert_from_a_safetensors_directory(tmp_path):
    cfg = tiny_config()
    state = fake_hf_state_dict(cfg)
    write_checkpoint(tmp_path / "ckpt", cfg, state)
    model, params, report = load_hf_bert(tmp_path / "ckpt", 4, seed=3)
    assert model.config == cfg and model.num_classes == 4
    assert report.initialized == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(
        params["encoder"]["embeddings"]["token_type_embeddings"]["embedding"],
        state["bert.embeddings.token_type_embeddings.weight"],
    )
    logits, _ = model.apply({"params": params}, random_inputs(cfg), train=False)
    assert logits.shape == (3, 4)
    model16, params16, _ = load_hf_bert(tmp_path / "ckpt", 4, seed=3, dtype=jnp.bfloat16)
    assert model16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(params16["head"]["kernel"], params["head"]["kernel"])


def test_bert_read_hf_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"No model\.safetensors"):
        read_hf_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(ImportError, match="needs PyTorch"):
        read_hf_checkpoint(tmp_path)


def test_bert_read_pytorch_model_bin(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = tiny_config(num_layers=1)
    state = fake_hf_state_dict(cfg)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    read = read_hf_checkpoint(tmp_path)
    assert sorted(read) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(read[k], v)


def test_bert_read_sharded_safetensors(tmp_path):
    state = fake_hf_state_dict(tiny_config(num_layers=1))
    keys = sorted(state)
    save_file({k: state[k] for k in keys[:5]}, str(tmp_path / "a.safetensors"))
    save_file({k: state[k] for k in keys[5:]}, str(tmp_path / "b.safetensors"))
    index = {
        "weight_map": {k: ("a" if i < 5 else "b") + ".safetensors" for i, k in enumerate(keys)}
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    read = read_hf_checkpoint(tmp_path)
    assert sorted(read) == keys
    np.testing.assert_array_equal(read[keys[-1]], state[keys[-1]])


def test_bert_family_load_fills_every_seed_and_keeps_the_heads(tmp_path, capsys):
    """experiments.models.load_pretrained -> bert_import.load: the checkpoint into each
    copy of seed-stacked params (read once); the heads stay as initialized."""
    from experiments import models

    cfg = tiny_config()
    state = fake_hf_state_dict(cfg)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state)
    model = BertClassifier(cfg, 3)
    seeds = [init_params(model, random_inputs(cfg), seed=s) for s in (0, 1)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *seeds)
    loaded = models.load_pretrained("bert", stacked, str(ckpt), model=model, stacked=True)
    want = state["bert.embeddings.word_embeddings.weight"]
    for i in range(2):
        got = loaded["encoder"]["embeddings"]["word_embeddings"]["embedding"][i]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(loaded["head"]["kernel"][i], seeds[i]["head"]["kernel"])
    assert f"[pretrained] {ckpt}: loaded" in capsys.readouterr().out
    one = models.load_pretrained("bert", seeds[0], str(ckpt), model=model)
    embedding = one["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(embedding, want)
    with pytest.raises(ValueError, match=r"Unknown pretrained\.kind"):
        models.load_pretrained("bert", seeds[0], str(ckpt), model=model, kind="timm")
    with pytest.raises(ValueError, match="'cnn1d' has no pretrained weights"):
        models.load_pretrained("cnn1d", seeds[0], str(ckpt), model=model)
