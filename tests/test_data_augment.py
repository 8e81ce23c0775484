"""Tests for the on-device augmentation (experiments/data/augment.py).

The AutoAugment operations are checked against PIL (ImageOps / ImageEnhance /
Image.transform), which defines them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from experiments.data import augment

FILL = (128, 128, 128)


@functools.cache
def _photo(seed=0, size=32):
    """A smooth-ish uint8 image (upsampled noise plus a little grain), like a photo."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 200, (8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR), np.int32)
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def _ours(fn, img, *args):
    return np.asarray(jax.jit(fn)(jnp.asarray(img, jnp.float32), *args))


EXACT_OPS = {
    "equalize": (augment.equalize, ImageOps.equalize),
    "invert": (augment.invert, ImageOps.invert),
    "solarize128": (lambda im: augment.solarize(im, 128.0), lambda p: ImageOps.solarize(p, 128)),
    "solarize40": (lambda im: augment.solarize(im, 40.0), lambda p: ImageOps.solarize(p, 40)),
    "posterize5": (lambda im: augment.posterize(im, 5.0), lambda p: ImageOps.posterize(p, 5)),
    "posterize2": (lambda im: augment.posterize(im, 2.0), lambda p: ImageOps.posterize(p, 2)),
    "rotate30": (lambda im: augment.rotate(im, 30.0), lambda p: p.rotate(30, fillcolor=FILL)),
    "rotate-90": (lambda im: augment.rotate(im, -90.0), lambda p: p.rotate(-90, fillcolor=FILL)),
    "translate_x": (
        lambda im: augment.translate_x(im, 5.0),
        lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 5, 0, 1, 0), fillcolor=FILL),
    ),
    "translate_y": (
        lambda im: augment.translate_y(im, -7.0),
        lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 0, 0, 1, -7), fillcolor=FILL),
    ),
    # Ours shear about the centre (PIL's continuous centre is 16 for 32 pixels).
    "shear_x": (
        lambda im: augment.shear_x(im, 0.3),
        lambda p: p.transform(p.size, Image.AFFINE, (1, 0.3, -4.8, 0, 1, 0), fillcolor=FILL),
    ),
    "shear_y": (
        lambda im: augment.shear_y(im, -0.2),
        lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 3.2), fillcolor=FILL),
    ),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(EXACT_OPS))
def test_operations_match_pil_exactly(seed, name):
    ours, theirs = EXACT_OPS[name]
    img = _photo(seed)
    expected = np.asarray(theirs(Image.fromarray(img)), np.float32)
    np.testing.assert_array_equal(_ours(ours, img), expected)


ENHANCE = {
    "contrast": ImageEnhance.Contrast,
    "color": ImageEnhance.Color,
    "brightness": ImageEnhance.Brightness,
    "sharpness": ImageEnhance.Sharpness,
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("factor", [0.1, 0.5, 1.3, 1.9])
@pytest.mark.parametrize("name", sorted(ENHANCE))
def test_enhance_operations_match_pil_within_one_level(seed, factor, name):
    # PIL truncates its single-precision blend, so where the exact result is an
    # integer it can land one level lower (1.3 * 180 -> 233); ours does not.
    img = _photo(seed)
    expected = np.asarray(ENHANCE[name](Image.fromarray(img)).enhance(factor), np.float32)
    got = _ours(lambda im: getattr(augment, name)(im, factor), img)
    diff = np.abs(got - expected)
    assert diff.max() <= 1
    assert np.mean(diff > 0) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_contrast_matches_pil_within_one_level(seed):
    # PIL's lookup table is computed in floating point and truncated, so exact
    # quotients can land one level lower there.
    img = _photo(seed)
    expected = np.asarray(ImageOps.autocontrast(Image.fromarray(img)), np.float32)
    got = _ours(augment.auto_contrast, img)
    assert np.max(np.abs(got - expected)) <= 1
    assert got.min() == 0 and got.max() == 255


def test_constant_image_is_left_alone_by_contrast_ops():
    img = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(_ours(augment.auto_contrast, img), img)
    np.testing.assert_array_equal(_ours(augment.equalize, img), img)


@pytest.mark.parametrize("name", sorted(augment.AUTOAUGMENT_OPS))
def test_every_operation_keeps_shape_range_and_integrality(name):
    img = jnp.asarray(_photo(3), jnp.float32)
    fn = jax.jit(augment.AUTOAUGMENT_OPS[name])
    for level in (0.0, 4.0, 9.0):
        for sign in (-1.0, 1.0):
            out = np.asarray(fn(img, level, sign))
            assert out.shape == img.shape and out.dtype == np.float32
            assert out.min() >= 0 and out.max() <= 255
            np.testing.assert_array_equal(out, np.round(out))


@pytest.mark.parametrize(
    "name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Solarize", "Posterize"]
)
def test_magnitude_zero_is_the_identity(name):
    img = jnp.asarray(_photo(4), jnp.float32)
    np.testing.assert_array_equal(augment.AUTOAUGMENT_OPS[name](img, 0.0, 1.0), img)


def test_magnitude_mapping_spans_the_papers_ranges():
    img = jnp.asarray(_photo(5), jnp.float32)
    ops = augment.AUTOAUGMENT_OPS
    np.testing.assert_array_equal(ops["Solarize"](img, 9.0, 1.0), 255.0 - img)  # threshold 0
    np.testing.assert_array_equal(ops["Posterize"](img, 9.0, 1.0), augment.posterize(img, 4))
    np.testing.assert_array_equal(ops["Brightness"](img, 9.0, 1.0), augment.brightness(img, 1.9))
    np.testing.assert_array_equal(ops["Color"](img, 0.0, 1.0), augment.color(img, 0.1))
    np.testing.assert_array_equal(ops["Rotate"](img, 9.0, -1.0), augment.rotate(img, -30.0))
    # Translate by 150/331 of the width at level 9: round(14.5) = 15 pixels on CIFAR.
    np.testing.assert_array_equal(ops["TranslateX"](img, 9.0, 1.0), augment.translate_x(img, 15))


def test_cifar10_policy_table():
    policy = augment.CIFAR10_POLICY
    assert len(policy) == 25
    for sub in policy:
        assert len(sub) == 2
        for op, prob, level in sub:
            assert op in augment.AUTOAUGMENT_OPS
            assert 0.0 <= prob <= 1.0 and level in range(10)
    assert policy[0] == (("Invert", 0.1, 7), ("Contrast", 0.2, 6))
    assert policy[-1] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1))


def test_apply_op_dispatches_by_index():
    img = jnp.asarray(_photo(6), jnp.float32)
    apply_op = jax.jit(augment.apply_op)  # one program for every index
    for i, name in enumerate(augment.AUTOAUGMENT_OPS):
        np.testing.assert_array_equal(
            apply_op(img, i, 5.0, -1.0), jax.jit(augment.AUTOAUGMENT_OPS[name])(img, 5.0, -1.0)
        )


def test_autoaugment_is_deterministic_and_varied():
    img = jnp.asarray(_photo(7), jnp.uint8)
    fn = jax.jit(augment.autoaugment)
    a = fn(jax.random.key(0), img)
    assert a.shape == img.shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, fn(jax.random.key(0), img))
    outs = np.stack([np.asarray(fn(jax.random.key(s), img)) for s in range(40)])
    assert outs.min() >= 0 and outs.max() <= 255
    np.testing.assert_array_equal(outs, np.round(outs))
    changed = [not np.array_equal(o, img) for o in outs]
    assert 10 < sum(changed) < 40  # some draws apply nothing (probabilities < 1)
    # vmap over keys gives the per-image results.
    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.jit(jax.vmap(augment.autoaugment, in_axes=(0, None)))(keys, img)
    for k in range(4):
        np.testing.assert_array_equal(batched[k], fn(keys[k], img))


def test_random_crop_flip_is_a_padded_window():
    img = jnp.asarray(_photo(8), jnp.uint8)
    padded = np.pad(np.asarray(img), ((4, 4), (4, 4), (0, 0)))
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            window = padded[dy : dy + 32, dx : dx + 32]
            candidates[window.tobytes()] = (dy, dx, False)
            candidates[window[:, ::-1].tobytes()] = (dy, dx, True)
    fn = jax.jit(augment.random_crop_flip)
    seen = set()
    for s in range(30):
        out = np.asarray(fn(jax.random.key(s), img))
        assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
        seen.add(candidates[out.tobytes()])
    assert len(seen) > 20 and {f for _, _, f in seen} == {False, True}
    np.testing.assert_array_equal(fn(jax.random.key(3), img), fn(jax.random.key(3), img))


def test_cutout_zeroes_one_clipped_square():
    img = jnp.ones((32, 32, 3), jnp.float32)
    fn = jax.jit(augment.cutout, static_argnums=2)
    sizes = []
    for s in range(50):
        out = np.asarray(fn(jax.random.key(s), img, 16))
        zero = out[..., 0] == 0
        assert np.all(zero == (out == 0).all(-1))  # all channels together
        rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
        assert zero.sum() == len(rows) * len(cols)  # a rectangle...
        assert len(rows) <= 16 and len(cols) <= 16  # ...inside a 16x16 square
        assert len(rows) >= 8 and len(cols) >= 8  # the centre is on the image
        sizes.append(zero.sum())
    assert max(sizes) == 256 and min(sizes) < 256
    np.testing.assert_array_equal(augment.cutout(jax.random.key(0), img, 0), img)


def test_normalize():
    x = jnp.asarray([[[0, 255, 51]]], jnp.uint8)
    out = augment.normalize(x, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    np.testing.assert_allclose(out, [[[-1.0, 2.0, 0.0]]], atol=1e-6)
    assert out.dtype == jnp.float32


def _batch(n=8):
    rng = np.random.default_rng(0)
    return {
        "x": jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
        "y": jnp.arange(n, dtype=jnp.int32),
        "mask": jnp.ones(n, bool),
    }


@pytest.mark.parametrize(
    "options",
    [
        dict(crop_flip=True),
        dict(crop_flip=True, cutout_size=16),
        dict(crop_flip=True, autoaugment=True, cutout_size=8),
        dict(flip=True),
    ],
)
def test_preprocess_train_and_eval(options):
    mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD
    preprocess = jax.jit(augment.make_preprocess(mean=mean, std=std, **options), static_argnums=2)
    batch = _batch()
    out = preprocess(jax.random.key(0), batch, True)
    assert set(out) == {"x", "y", "mask"}
    np.testing.assert_array_equal(out["y"], batch["y"])
    assert out["x"].shape == (8, 32, 32, 3) and out["x"].dtype == jnp.float32
    lo = (0.0 - np.asarray(mean)) / np.asarray(std)
    hi = (1.0 - np.asarray(mean)) / np.asarray(std)
    assert np.all(out["x"] >= lo - 1e-5) and np.all(out["x"] <= hi + 1e-5)
    np.testing.assert_array_equal(out["x"], preprocess(jax.random.key(0), batch, True)["x"])
    assert not np.array_equal(out["x"], preprocess(jax.random.key(1), batch, True)["x"])
    # Examples are augmented independently.
    assert not np.array_equal(out["x"][0], augment.normalize(batch["x"][0], mean, std))
    evaluated = preprocess(jax.random.key(0), batch, False)
    np.testing.assert_allclose(
        evaluated["x"], augment.normalize(batch["x"], mean, std), rtol=1e-6, atol=1e-6
    )


def test_preprocess_rejects_negative_sizes():
    with pytest.raises(ValueError, match="cutout_size"):
        augment.make_preprocess(mean=(0, 0, 0), std=(1, 1, 1), cutout_size=-1)
