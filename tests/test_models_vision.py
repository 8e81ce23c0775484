"""Tests for the image models: sizes, the (logits, aux) contract, dtypes, BatchNorm, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.models import get_model
from experiments.models.common import count_params, param_count
from experiments.models.mobilenet import MobileNetV1
from experiments.models.resnet_cifar import CifarResNet
from experiments.models.vgg import VGG16BN
from experiments.models.wrn import WideResNet

CIFAR = (1, 32, 32, 3)
IMAGENET = (1, 224, 224, 3)


# Exact counts of these implementations, and the papers' rounded figures.
@pytest.mark.parametrize(
    "model, shape, expected, paper",
    [
        (CifarResNet(20), CIFAR, 269_722, 0.27e6),
        (CifarResNet(44), CIFAR, 658_586, 0.66e6),
        (CifarResNet(110), CIFAR, 1_727_962, 1.7e6),
        (VGG16BN(), CIFAR, 14_724_042, 14.7e6),
        (VGG16BN(100), CIFAR, 14_770_212, 14.8e6),
        (WideResNet(28, 10, 100), CIFAR, 36_536_884, 36.5e6),
        (WideResNet(28, 10, 10), CIFAR, 36_479_194, 36.5e6),
        (MobileNetV1(), IMAGENET, 4_231_976, 4.2e6),
        (MobileNetV1(width_multiplier=0.5), IMAGENET, 1_331_592, 1.3e6),
    ],
    ids=[
        "resnet20",
        "resnet44",
        "resnet110",
        "vgg16bn",
        "vgg16bn-100",
        "wrn28-10",
        "wrn28-10-k10",
        "mobilenet1.0",
        "mobilenet0.5",
    ],
)
def test_full_size_parameter_counts(model, shape, expected, paper):
    n = count_params(model, shape)
    assert isinstance(n, int)
    assert n == expected
    assert abs(n - paper) / paper < 0.025


@pytest.mark.parametrize(
    "model, shape, dim",
    [
        (CifarResNet(56, num_classes=100), CIFAR, 64),
        (VGG16BN(10), CIFAR, 512),
        (VGG16BN(10, mlp_dims=(256, 128)), CIFAR, 128),
        (WideResNet(28, 10, 100), CIFAR, 640),
        (MobileNetV1(), IMAGENET, 1024),
        (MobileNetV1(num_classes=10, width_multiplier=0.5), IMAGENET, 512),
    ],
)
def test_full_size_output_shapes(model, shape, dim):
    x = jax.ShapeDtypeStruct((4, *shape[1:]), jnp.float32)

    def apply(x):
        variables = model.init(jax.random.key(0), x, train=False)
        return model.apply(variables, x, train=False)

    logits, aux = jax.eval_shape(apply, x)
    assert logits.shape == (4, model.num_classes) and logits.dtype == jnp.float32
    assert aux["pre_logits"].shape == (4, dim)


# Tiny variants that run for real on a CPU in well under a second each.
TINY = {
    "resnet": lambda **kw: CifarResNet(8, num_classes=7, width=4, **kw),
    "vgg": lambda **kw: VGG16BN(7, width_multiplier=1 / 16, **kw),
    "vgg_mlp": lambda **kw: VGG16BN(
        7, mlp_dims=(8,), dropout_rate=0.5, width_multiplier=1 / 16, **kw
    ),
    "wrn": lambda **kw: WideResNet(10, 1, 7, dropout_rate=0.3, **kw),
    "mobilenet": lambda **kw: MobileNetV1(7, width_multiplier=1 / 16, dropout_rate=0.2, **kw),
}


@functools.cache
def _images(n=6):
    return jnp.asarray(np.random.default_rng(0).normal(size=(n, 32, 32, 3)), jnp.float32)


@functools.cache
def _init(name, dtype=jnp.float32):
    model = TINY[name](dtype=dtype)
    variables = model.init(jax.random.key(1), _images(), train=False)
    return model, variables


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_are_pre_logits_times_head(name):
    model, variables = _init(name)
    logits, aux = model.apply(variables, _images(), train=False)
    head = variables["params"]["head"]
    assert head["kernel"].shape == (aux["pre_logits"].shape[1], 7)
    expected = aux["pre_logits"] @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert logits.shape == (6, 7)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_mode_updates_batch_stats_and_uses_dropout(name):
    model, variables = _init(name)
    x = _images()

    def train_apply(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    (logits, aux), updates = train_apply(jax.random.key(2))
    assert set(updates) == {"batch_stats"}
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert len(old) == len(new) > 0
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    assert np.all(np.isfinite(logits))
    # Same rng, same result; the head contract holds in train mode too.
    (again, _), _ = train_apply(jax.random.key(2))
    np.testing.assert_array_equal(logits, again)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        logits, aux["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )
    if name in ("wrn", "vgg_mlp", "mobilenet"):  # these have dropout > 0
        (other, _), _ = train_apply(jax.random.key(3))
        assert not np.allclose(logits, other)
    # Train and eval modes differ (batch statistics vs running averages).
    eval_logits, _ = model.apply(variables, x, train=False)
    assert not np.allclose(logits, eval_logits)


@pytest.mark.parametrize("name", ["resnet", "wrn", "mobilenet"])
def test_bfloat16_compute_float32_params(name):
    model, variables = _init(name, jnp.bfloat16)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32
    (logits, aux), state = model.apply(
        variables,
        _images(),
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    assert logits.dtype == jnp.float32 and aux["pre_logits"].dtype == jnp.float32
    stem = state["intermediates"]["stem_conv"]["__call__"][0]
    assert stem.dtype == jnp.bfloat16
    ref_model, ref_variables = _init(name)
    ref_logits, _ = ref_model.apply(ref_variables, _images(), train=False)
    np.testing.assert_allclose(logits, ref_logits, rtol=0.1, atol=0.1)


def test_uint8_input_is_cast():
    model, variables = _init("resnet")
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)), jnp.uint8)
    logits, _ = model.apply(variables, x, train=False)
    np.testing.assert_allclose(
        logits, model.apply(variables, x.astype(jnp.float32), train=False)[0], rtol=1e-6
    )


def test_bn_axis_name_averages_statistics_over_devices():
    devices = jax.local_devices()[:4]
    if len(devices) < 4:
        pytest.skip("needs 4 devices")
    model, variables = _init("resnet")
    x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 32, 32, 3)), jnp.float32)
    _, whole = model.apply(variables, x, train=True, mutable=["batch_stats"])
    mapped = CifarResNet(8, num_classes=7, width=4, bn_axis_name="batch")

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, 0), devices=devices)
    def per_device(variables, x):
        return mapped.apply(variables, x, train=True, mutable=["batch_stats"])[1]

    sharded = per_device(variables, x.reshape(4, 2, 32, 32, 3))
    for a, b in zip(
        jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(sharded), strict=True
    ):
        for replica in range(4):
            np.testing.assert_allclose(b[replica], a, rtol=1e-4, atol=1e-5)


def test_registry_builds_the_vision_models():
    assert isinstance(get_model("resnet_cifar", depth=20), CifarResNet)
    assert isinstance(get_model("vgg16_bn", num_classes=100), VGG16BN)
    assert isinstance(get_model("wrn", depth=16, widen_factor=2), WideResNet)
    assert isinstance(get_model("mobilenet_v1", width_multiplier=0.5), MobileNetV1)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: CifarResNet(21), "6n \\+ 2"),
        (lambda: CifarResNet(2), "6n \\+ 2"),
        (lambda: CifarResNet(20.0), "6n \\+ 2"),
        (lambda: CifarResNet(20, num_classes=0), "num_classes"),
        (lambda: WideResNet(depth=27), "6n \\+ 4"),
        (lambda: WideResNet(widen_factor=0), "widen_factor"),
        (lambda: WideResNet(dropout_rate=1.0), "dropout_rate"),
        (lambda: VGG16BN(mlp_dims=(0,)), "mlp_dims"),
        (lambda: VGG16BN(width_multiplier=0), "width_multiplier"),
        (lambda: MobileNetV1(width_multiplier=-1.0), "width_multiplier"),
        (lambda: MobileNetV1(num_classes=-3), "num_classes"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_raise_clear_errors():
    model, variables = _init("resnet")
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        model.apply(variables, jnp.zeros((32, 32, 3)), train=False)
    vgg = VGG16BN(width_multiplier=1 / 16)
    with pytest.raises(ValueError, match="at least 32x32"):
        vgg.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)


def test_param_count_of_arrays_and_shapes_agree():
    """The one parameter counter: real params and eval_shape'd ones count the same."""
    model = CifarResNet(20)
    params = model.init(jax.random.key(0), jnp.zeros(CIFAR), train=False)["params"]
    assert param_count(params) == count_params(model, CIFAR) == 269722
    assert param_count(jax.eval_shape(lambda: params)) == 269722
