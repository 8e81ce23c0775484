"""A tiny model and data for the training tests (contract: (logits, aux))."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from pmm_jax import training


class ToyNet(nn.Module):
    num_classes: int = 5
    width: int = 16
    dropout_rate: float = 0.0
    batch_norm: bool = True
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        h = nn.Dense(self.width, use_bias=not self.batch_norm, name="body")(x)
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name)(h)
        h = nn.relu(h)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(self.num_classes, name="head")(h), {"pre_logits": h}


def toy_data(n=64, dim=6, k=5, seed=0, big_row=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, k, n).astype(np.int32)
    if big_row is not None:  # one example with a far larger feature norm
        x[big_row] *= 8.0
    return {"x": x, "y": y}


def toy_state(model=None, *, seed=0, lr=0.1, dim=6):
    model = model or ToyNet()
    tx = optax.sgd(lr, momentum=0.9)
    return training.create_train_state(model, tx, jnp.zeros((2, dim)), seed=seed)
