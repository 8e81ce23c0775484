"""On-device image augmentation in pure JAX: crop+flip, Cutout, AutoAugment, normalization.

Every function here works on ONE image ``[H, W, C]`` with values in ``[0, 255]``
(uint8 or float) and a PRNG key, is jit-able and vmap-able, and is deterministic
for a fixed key. ``make_preprocess`` builds the ``Dataset.preprocess(rng, batch,
train)`` of ``experiments/data/base.py``: it splits ``rng`` into one key per
example and ``vmap``s the per-image pipeline over the batch.

The training pipeline for CIFAR, in the order of the AutoAugment paper (§4.1:
baseline augmentation, then the policy, then Cutout):

1. ``random_crop_flip``: zero-pad 4 pixels, random 32x32 crop, horizontal flip
   with probability 1/2 (He et al. 2016);
2. ``autoaugment`` (optional): one of the 25 sub-policies of AutoAugment's
   CIFAR-10 policy, uniformly at random;
3. ``normalize``: ``(x / 255 - mean) / std`` per channel;
4. ``cutout`` (optional): a ``size x size`` square, centred uniformly at random
   on the image (so possibly clipped by the border), set to 0 -- the channel mean
   after normalization, as in DeVries and Taylor's code.

AutoAugment operations are written here from their definitions (PIL's
``ImageOps`` / ``ImageEnhance`` semantics); the approximations are:

* geometric ops (ShearX/Y, TranslateX/Y, Rotate) use nearest-neighbour sampling
  (PIL's default) about the image centre, with gray fill 128 outside the image;
* each op rounds its result to integers in [0, 255], like PIL's uint8 images;
  PIL's blends use fixed-point arithmetic, so enhance ops can differ by one grey
  level;
* Sharpness smooths with PIL's 3x3 SMOOTH kernel and leaves border pixels
  unchanged;
* magnitude levels 0..9 map uniformly onto the paper's ranges (its appendix
  table): Shear ±0.3·m/9, Translate ±(150/331)·m/9 of the image size (the paper's
  ±150 pixels on 331-pixel images; 14.5 pixels at most on CIFAR, where the
  authors' CIFAR code used 10), Rotate ±30°·m/9, Solarize threshold 256·(1 - m/9),
  Posterize 8 - round(4·m/9) bits, Contrast/Color/Brightness/Sharpness factor
  0.1 + 1.8·m/9; the sign of geometric ops is random, as in the authors' code.

References:
  E. D. Cubuk, B. Zoph, D. Mané, V. Vasudevan, Q. V. Le, "AutoAugment: Learning
  Augmentation Strategies from Data", CVPR 2019.
  T. DeVries, G. W. Taylor, "Improved Regularization of Convolutional Neural
  Networks with Cutout", arXiv:1708.04552.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Per-channel statistics of the training images (values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FILL_VALUE = 128.0

# --------------------------------------------------------------------------------------
# Basic augmentation


def random_crop_flip(rng: jax.Array, image: jax.Array, *, padding: int = 4) -> jax.Array:
    """Zero-pads ``padding`` pixels, crops back to the input size, flips with p=1/2.

    Args:
      rng: a PRNG key.
      image: ``[H, W, C]``.
      padding: pixels of zero padding on each side.

    Returns:
      ``[H, W, C]``, same dtype as ``image``.
    """
    h, w, c = image.shape
    k_y, k_x, k_flip = jax.random.split(rng, 3)
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    oy = jax.random.randint(k_y, (), 0, 2 * padding + 1)
    ox = jax.random.randint(k_x, (), 0, 2 * padding + 1)
    out = jax.lax.dynamic_slice(padded, (oy, ox, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1, :], out)


def random_flip(rng: jax.Array, image: jax.Array) -> jax.Array:
    """Flips ``[H, W, C]`` horizontally with probability 1/2."""
    return jnp.where(jax.random.bernoulli(rng), image[:, ::-1, :], image)


def cutout(rng: jax.Array, image: jax.Array, size: int, *, fill: float = 0.0) -> jax.Array:
    """Sets a ``size x size`` square at a uniformly random centre to ``fill``.

    The centre is uniform over all pixels, so the square may be clipped by the
    border (DeVries and Taylor). Apply after normalization for ``fill=0`` to mean
    the channel mean.

    Args:
      rng: a PRNG key.
      image: ``[H, W, C]``.
      size: side of the square in pixels (16 for CIFAR-10, 8 for CIFAR-100 in the
        paper's recipes); 0 returns ``image`` unchanged.
      fill: the value written in the square.

    Returns:
      ``[H, W, C]``, same dtype as ``image``.
    """
    if size <= 0:
        return image
    h, w, _ = image.shape
    k_y, k_x = jax.random.split(rng)
    cy = jax.random.randint(k_y, (), 0, h)
    cx = jax.random.randint(k_x, (), 0, w)
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    y0 = cy - size // 2
    x0 = cx - size // 2
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return jnp.where(inside[:, :, None], jnp.asarray(fill, image.dtype), image)


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(image / 255 - mean) / std`` per channel, float32; works on any leading shape."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (jnp.asarray(image, jnp.float32) / 255.0 - mean) / std


# --------------------------------------------------------------------------------------
# AutoAugment operations: image float32 [H, W, C] in [0, 255] -> same.


def _to_pixels(x: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(x), 0.0, 255.0)


def _grayscale(image: jax.Array) -> jax.Array:
    """PIL's "L" conversion (its fixed-point ITU-R 601-2 luma), ``[H, W]``."""
    # Exact in float32: the sum stays below 2**24.
    weighted = image[..., 0] * 19595.0 + image[..., 1] * 38470.0 + image[..., 2] * 7471.0
    return jnp.floor((weighted + 32768.0) / 65536.0)


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL's ``Image.blend(degenerate, image, factor)``: factor 1 = ``image``.

    PIL truncates; the 1e-3 keeps exact integers from falling one level lower when
    XLA fuses the arithmetic differently (FMA) from one program to another.
    """
    blended = degenerate + factor * (image - degenerate)
    return jnp.clip(jnp.floor(blended + 1e-3), 0.0, 255.0)


def _affine(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """Samples ``image`` at ``matrix @ (x, y, 1)`` for each output pixel (centred coords).

    ``matrix`` is 2x3 and maps output coordinates, relative to the image centre, to
    input coordinates (PIL's ``Image.transform`` convention). Nearest neighbour;
    pixels that come from outside the image are ``FILL_VALUE``.
    """
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yo = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
    xo = jnp.arange(w, dtype=jnp.float32)[None, :] - cx
    # Nearest pixel, ties rounded up (PIL samples at pixel centres and floors).
    xi = jnp.floor(matrix[0, 0] * xo + matrix[0, 1] * yo + matrix[0, 2] + cx + 0.5)
    yi = jnp.floor(matrix[1, 0] * xo + matrix[1, 1] * yo + matrix[1, 2] + cy + 0.5)
    xi, yi = xi.astype(jnp.int32), yi.astype(jnp.int32)
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    sampled = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
    return jnp.where(valid[:, :, None], sampled, FILL_VALUE)


def shear_x(image: jax.Array, factor) -> jax.Array:
    """Horizontal shear: output ``(x, y)`` takes input ``(x + factor * y, y)``."""
    f = jnp.asarray(factor, jnp.float32)
    return _affine(image, jnp.array([[1.0, f, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(image: jax.Array, factor) -> jax.Array:
    """Vertical shear: output ``(x, y)`` takes input ``(x, y + factor * x)``."""
    f = jnp.asarray(factor, jnp.float32)
    return _affine(image, jnp.array([[1.0, 0.0, 0.0], [f, 1.0, 0.0]]))


def translate_x(image: jax.Array, pixels) -> jax.Array:
    """Output ``(x, y)`` takes input ``(x + pixels, y)``: content moves left."""
    p = jnp.asarray(pixels, jnp.float32)
    return _affine(image, jnp.array([[1.0, 0.0, p], [0.0, 1.0, 0.0]]))


def translate_y(image: jax.Array, pixels) -> jax.Array:
    """Output ``(x, y)`` takes input ``(x, y + pixels)``: content moves up."""
    p = jnp.asarray(pixels, jnp.float32)
    return _affine(image, jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, p]]))


def rotate(image: jax.Array, degrees) -> jax.Array:
    """Rotates about the centre; positive = counter-clockwise on screen (PIL)."""
    t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    c, s = jnp.cos(t), jnp.sin(t)
    # Rows go down on screen, so a counter-clockwise turn samples input = R(t) @ out.
    return _affine(image, jnp.array([[c, -s, 0.0], [s, c, 0.0]]))


def auto_contrast(image: jax.Array) -> jax.Array:
    """Per channel, stretches ``[min, max]`` linearly to ``[0, 255]`` (no cut-off)."""
    lo = jnp.min(image, axis=(0, 1), keepdims=True)
    hi = jnp.max(image, axis=(0, 1), keepdims=True)
    stretched = jnp.floor((image - lo) * 255.0 / jnp.maximum(hi - lo, 1.0) + 1e-3)
    return jnp.where(hi > lo, stretched, image)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    """PIL's ``ImageOps.equalize`` on one ``[H, W]`` channel of integral values."""
    values = channel.astype(jnp.int32)
    hist = jnp.bincount(values.ravel(), length=256)
    # PIL: step = (number of pixels - count of the brightest present value) // 255.
    step = (values.size - hist[jnp.max(values)]) // 255
    safe = jnp.maximum(step, 1)
    lut = (jnp.cumsum(hist) - hist + safe // 2) // safe
    lut = jnp.clip(lut, 0, 255).astype(jnp.float32)
    return jnp.where(step > 0, lut[values], channel)


def equalize(image: jax.Array) -> jax.Array:
    """Histogram equalization per channel (PIL's algorithm)."""
    return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], -1)


def invert(image: jax.Array) -> jax.Array:
    """``255 - image``."""
    return 255.0 - image


def solarize(image: jax.Array, threshold) -> jax.Array:
    """Inverts the pixels at or above ``threshold`` (256 leaves the image unchanged)."""
    return jnp.where(image < threshold, image, 255.0 - image)


def posterize(image: jax.Array, bits) -> jax.Array:
    """Keeps the ``bits`` most significant bits of each 8-bit value."""
    step = 2.0 ** (8 - jnp.asarray(bits, jnp.float32))
    return jnp.floor(image / step) * step


def contrast(image: jax.Array, factor) -> jax.Array:
    """Blends with the image's mean grey level (PIL ``ImageEnhance.Contrast``)."""
    mean = jnp.floor(jnp.mean(_grayscale(image)) + 0.5)
    return _blend(mean, image, factor)


def color(image: jax.Array, factor) -> jax.Array:
    """Blends with the grayscale image: 0 = gray, 1 = unchanged (``ImageEnhance.Color``)."""
    return _blend(_grayscale(image)[..., None], image, factor)


def brightness(image: jax.Array, factor) -> jax.Array:
    """Blends with black (``ImageEnhance.Brightness``)."""
    return _blend(jnp.zeros_like(image), image, factor)


def sharpness(image: jax.Array, factor) -> jax.Array:
    """Blends with a 3x3-smoothed image (``ImageEnhance.Sharpness``); borders are kept."""
    h, w, _ = image.shape
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    smooth = sum(
        kernel[dy, dx] * padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)
    )
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    interior = (ys > 0) & (ys < h - 1) & (xs > 0) & (xs < w - 1)
    degenerate = jnp.where(interior[:, :, None], _to_pixels(smooth), image)
    return _blend(degenerate, image, factor)


# --------------------------------------------------------------------------------------
# AutoAugment policy


def _level(m):
    return m / 9.0


# name -> (image, level in 0..9, sign in {-1, +1}) -> image. Each result is integral.
AUTOAUGMENT_OPS: dict[str, Callable[[jax.Array, Any, Any], jax.Array]] = {
    "ShearX": lambda im, m, s: shear_x(im, s * 0.3 * _level(m)),
    "ShearY": lambda im, m, s: shear_y(im, s * 0.3 * _level(m)),
    "TranslateX": lambda im, m, s: translate_x(
        im, jnp.round(s * (150 / 331) * im.shape[1] * _level(m))
    ),
    "TranslateY": lambda im, m, s: translate_y(
        im, jnp.round(s * (150 / 331) * im.shape[0] * _level(m))
    ),
    "Rotate": lambda im, m, s: rotate(im, s * 30.0 * _level(m)),
    "AutoContrast": lambda im, m, s: auto_contrast(im),
    "Invert": lambda im, m, s: invert(im),
    "Equalize": lambda im, m, s: equalize(im),
    "Solarize": lambda im, m, s: solarize(im, 256.0 * (1.0 - _level(m))),
    "Posterize": lambda im, m, s: posterize(im, 8.0 - jnp.round(4.0 * _level(m))),
    "Contrast": lambda im, m, s: contrast(im, 0.1 + 1.8 * _level(m)),
    "Color": lambda im, m, s: color(im, 0.1 + 1.8 * _level(m)),
    "Brightness": lambda im, m, s: brightness(im, 0.1 + 1.8 * _level(m)),
    "Sharpness": lambda im, m, s: sharpness(im, 0.1 + 1.8 * _level(m)),
}

# The policy found on reduced CIFAR-10 (Cubuk et al., appendix): 25 sub-policies of
# two (operation, probability, magnitude level) each. The paper used it for CIFAR-100
# too.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

_OP_NAMES = tuple(AUTOAUGMENT_OPS)
_OP_FNS = tuple(AUTOAUGMENT_OPS.values())


def _policy_arrays(policy):
    ops = np.array([[_OP_NAMES.index(op) for op, _, _ in sub] for sub in policy], np.int32)
    probs = np.array([[p for _, p, _ in sub] for sub in policy], np.float32)
    levels = np.array([[m for _, _, m in sub] for sub in policy], np.float32)
    return ops, probs, levels


def apply_op(image: jax.Array, op_index, level, sign) -> jax.Array:
    """Applies ``AUTOAUGMENT_OPS``' ``op_index``-th operation (a traced index is fine)."""
    branches = [lambda im, m, s, fn=fn: fn(im, m, s) for fn in _OP_FNS]
    return jax.lax.switch(op_index, branches, image, level, sign)


def autoaugment(rng: jax.Array, image: jax.Array, *, policy=CIFAR10_POLICY) -> jax.Array:
    """Applies one uniformly drawn sub-policy of ``policy`` to one image.

    Each of the sub-policy's two operations is applied with its probability, with
    a random sign for the geometric ones.

    Args:
      rng: a PRNG key.
      image: ``[H, W, 3]`` with values in ``[0, 255]`` (uint8 or float).
      policy: a table like ``CIFAR10_POLICY``.

    Returns:
      float32 ``[H, W, 3]`` with integral values in ``[0, 255]``.
    """
    ops, probs, levels = _policy_arrays(policy)
    image = jnp.asarray(image, jnp.float32)
    k_sub, *k_ops = jax.random.split(rng, 1 + ops.shape[1])
    sub = jax.random.randint(k_sub, (), 0, ops.shape[0])
    for j, key in enumerate(k_ops):
        k_apply, k_sign = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0)
        out = apply_op(image, jnp.asarray(ops)[sub, j], jnp.asarray(levels)[sub, j], sign)
        image = jnp.where(jax.random.uniform(k_apply) < jnp.asarray(probs)[sub, j], out, image)
    return image


_autoaugment = autoaugment  # make_preprocess's flag of the same name shadows it

# --------------------------------------------------------------------------------------
# Dataset.preprocess


def make_preprocess(
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_flip: bool = False,
    flip: bool = False,
    crop_padding: int = 4,
    autoaugment: bool = False,
    cutout_size: int = 0,
) -> Callable[[jax.Array, dict, bool], dict]:
    """Builds ``preprocess(rng, batch, train) -> batch`` for ``Dataset.preprocess``.

    ``batch["x"]`` is ``uint8[B, H, W, C]``; the result's ``"x"`` is normalized
    float32 ``[B, H, W, C]``; other keys pass through. ``train=False`` only
    normalizes; ``train=True`` runs, per example, crop+flip (or flip only) ->
    AutoAugment -> normalize -> Cutout, each as configured.

    Args:
      mean, std: per-channel statistics in [0, 1] units.
      crop_flip: pad-``crop_padding`` random crop and horizontal flip.
      flip: horizontal flip only (ignored when ``crop_flip``).
      crop_padding: padding of the random crop.
      autoaugment: apply ``autoaugment`` (the CIFAR-10 policy).
      cutout_size: side of the Cutout square; 0 for none.

    Returns:
      The preprocess function (pure, jit-able).
    """
    if cutout_size < 0 or crop_padding < 0:
        raise ValueError(
            f"cutout_size and crop_padding must be >= 0, got {cutout_size}, {crop_padding}."
        )
    mean = tuple(float(v) for v in mean)
    std = tuple(float(v) for v in std)

    def one_image(rng, image):
        k_crop, k_aa, k_cut = jax.random.split(rng, 3)
        if crop_flip:
            image = random_crop_flip(k_crop, image, padding=crop_padding)
        elif flip:
            image = random_flip(k_crop, image)
        if autoaugment:
            image = _autoaugment(k_aa, image)
        image = normalize(image, mean, std)
        return cutout(k_cut, image, cutout_size)

    def preprocess(rng, batch, train):
        x = batch["x"]
        if train:
            keys = jax.random.split(rng, x.shape[0])
            x = jax.vmap(one_image)(keys, x)
        else:
            x = normalize(x, mean, std)
        return {**batch, "x": x}

    return preprocess


__all__ = [
    "AUTOAUGMENT_OPS",
    "CIFAR10_POLICY",
    "apply_op",
    "auto_contrast",
    "autoaugment",
    "brightness",
    "color",
    "contrast",
    "cutout",
    "equalize",
    "invert",
    "make_preprocess",
    "normalize",
    "posterize",
    "random_crop_flip",
    "random_flip",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]
