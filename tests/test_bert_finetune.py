"""A tiny random BERT fine-tuned with pmm_jax.pmm_loss on mocked GLUE batches."""

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import pmm_jax
from experiments.data import glue
from experiments.models.bert import BertClassifier
from tests.bert_helpers import tiny_config, tiny_tokenizer


@pytest.mark.parametrize("task", ["sst2", "rte"])
def test_bert_finetune_with_pmm_loss_decreases_the_loss(task):
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = glue.get_glue(task, tiny_tokenizer(), max_len=32, num_threads=1)
        batches = iter(ds.train_iter(0, 8, 0, 1))
        data = [next(batches) for _ in range(2)]  # one epoch, memorized below
    model = BertClassifier(tiny_config(), ds.num_classes)
    params = model.init(jax.random.key(0), data[0]["x"], train=False)["params"]
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, batch, rng):
        def loss_fn(params):
            logits, aux = model.apply(
                {"params": params}, batch["x"], train=True, rngs={"dropout": rng}
            )
            kernel = params["head"]["kernel"]
            return pmm_jax.pmm_loss(logits, batch["y"], aux["pre_logits"], kernel, alpha=1e-3)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, parts

    losses = []
    for step in range(40):
        batch = jax.tree.map(np.asarray, ds.preprocess(None, data[step % 2], True))
        params, opt_state, loss, parts = train_step(params, opt_state, batch, jax.random.key(step))
        losses.append(float(loss))
        assert np.isfinite(float(parts["penalty"])) and float(parts["radius"]) > 0
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
