"""Tests for find_head and pmm_penalty_from_params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict

import pmm_jax
from tests.test_penalty import make_batch


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        feats = nn.relu(nn.Dense(6, name="body")(x))
        return nn.Dense(4, name="head")(feats), feats


def _linen():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)), jnp.float32)
    variables = Net().init(jax.random.key(0), x)
    return variables, x


@pytest.mark.parametrize(
    "path", ["head", "params/head", ("params", "head"), ["params", "head"], "/params/head/"]
)
def test_find_head_paths_in_linen_variables(path):
    variables, _ = _linen()
    kernel, bias = pmm_jax.find_head(variables, path)
    np.testing.assert_array_equal(kernel, variables["params"]["head"]["kernel"])
    np.testing.assert_array_equal(bias, variables["params"]["head"]["bias"])


def test_find_head_in_params_and_frozendict():
    variables, _ = _linen()
    kernel, _ = pmm_jax.find_head(variables["params"])
    assert kernel.shape == (6, 4)
    kernel, _ = pmm_jax.find_head(FrozenDict(variables))
    assert kernel.shape == (6, 4)


def test_find_head_in_nnx_state():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.body = nnx.Linear(3, 5, rngs=rngs)
            self.classifier = nnx.Linear(5, 7, rngs=rngs)

    model = Model(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    kernel, bias = pmm_jax.find_head(state, "classifier")
    assert kernel.shape == (5, 7) and bias.shape == (7,)
    np.testing.assert_array_equal(kernel, model.classifier.kernel[...])


def test_find_head_without_bias():
    kernel, bias = pmm_jax.find_head({"fc": {"kernel": jnp.ones((3, 2))}}, "fc")
    assert bias is None and kernel.shape == (3, 2)


def test_wrong_path_lists_existing_paths():
    variables, _ = _linen()
    with pytest.raises(pmm_jax.HeadNotFoundError, match="params/head") as err:
        pmm_jax.find_head(variables, "classifier")
    assert "params/body" in str(err.value) and "'classifier'" in str(err.value)
    with pytest.raises(ValueError, match="`head`"):
        pmm_jax.find_head(variables, "")
    with pytest.raises(ValueError, match="rank 2"):
        pmm_jax.find_head({"head": {"kernel": jnp.ones((2, 3, 4))}})


def test_penalty_from_params_equals_penalty():
    variables, x = _linen()
    logits, feats = Net().apply(variables, x)
    labels = jnp.arange(10) % 4
    kernel = variables["params"]["head"]["kernel"]
    want = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    got = pmm_jax.pmm_penalty_from_params(variables, feats, labels)  # logits recomputed
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = pmm_jax.pmm_penalty_from_params(variables["params"], feats, labels, logits=logits)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_penalty_from_params_gradient_reaches_head_kernel_only():
    variables, x = _linen()
    labels = jnp.arange(10) % 4

    def f(params):
        _, feats = Net().apply({"params": params}, x)
        return jnp.sum(pmm_jax.pmm_penalty_from_params(params, feats, labels))

    grads = jax.grad(f)(variables["params"])
    assert np.any(np.asarray(grads["head"]["kernel"]) != 0)
    np.testing.assert_array_equal(grads["head"]["bias"], 0.0)  # the bias is not penalized
    assert np.any(np.asarray(grads["body"]["kernel"]) != 0)  # through the radius


def test_penalty_from_params_checks_shapes():
    _logits, labels, feats, kernel = make_batch(0, 4, 3, 5)
    with pytest.raises(ValueError, match="kernel"):
        pmm_jax.pmm_penalty_from_params({"head": {"kernel": kernel}}, feats[:, :2], labels)
