"""CIFAR-10/100 and ImageNet from tensorflow-datasets, read without TensorFlow.

Get a ``Dataset`` (``experiments/data/base.py``) by name::

    from experiments.data import images
    ds = images.get_dataset("cifar10", data_dir=None, crop_flip=True)
    ds = images.get_dataset("cifar100", autoaugment=True, cutout_size=8)
    ds = images.get_dataset("imagenet2012", data_dir="/data/tfds")

Reading: ``tfds.data_source(..., download=False)`` opens the prepared ArrayRecord
files (random access, no TensorFlow); ``grain`` reads them in the training
order, shards per host, batches and prefetches in threads (and optionally
worker processes). Nothing is
ever downloaded or built here: a dataset that is not prepared raises
``DatasetNotPreparedError`` at once, with the one-time command that prepares it
(``tfds build``, which needs TensorFlow for that step only)::

    pip install tensorflow            # once, for the build step only
    tfds build cifar10 --data_dir=DIR --file_format=array_record
    tfds build imagenet2012 --data_dir=DIR --file_format=array_record \\
        --manual_dir=DIR_WITH_ILSVRC2012_img_train.tar_AND_ILSVRC2012_img_val.tar

Decoding: tfds' NumPy path parses the stored ``tf.train.Example`` with protobuf and
decodes images with OpenCV if installed, else PIL. CIFAR images are decoded that
way; ImageNet JPEGs are read as raw bytes (``tfds.decode.SkipDecoding``) and
decoded here with PIL, using JPEG draft mode (DCT-domain downscaling) when the
crop is to be shrunk anyway.

Streams. Training: the documented order of ``experiments/data/order.py``, a
function of ``(seed, step)``: epoch ``e`` visits the records in the permutation
``order.permutation(seed, e, N)``, global batch ``j`` of the epoch is entries ``[j
B, (j + 1) B)`` of it (``B = global_batch_size``; the last ``N mod B`` entries are
dropped, so an epoch is ``N // B`` steps), and host ``p`` of ``P`` gets rows ``[p
b, (p + 1) b)`` of each global batch (``b = B / P``): the global stream does not
depend on the number of hosts, and the hosts' shards are disjoint and cover each
global batch. grain reads it through an explicit index sampler
(``order.TrainOrder``). Evaluation: the split in order, global batches padded at
the end with zero images, label 0 and ``mask`` False; every host gets the same
number of batches.

On the device. CIFAR also offers its splits as arrays (``Dataset.device_data``,
``on_device``): the whole dataset (~180 MB as uint8) is held on every device and
``experiments/data/feed.py`` gathers each batch there, in the same order, from the
step number alone -- the host pipeline above is then not used in training. It is
the default (``on_device="auto"``: when all splits fit ``DEVICE_BUDGET_BYTES``);
``on_device=False`` feeds from grain. ImageNet is always fed from grain.

Splits. CIFAR: with ``validation_size=5000`` (default, the paper's protocol) the
training stream is the first 45,000 images of tfds' ``train`` split and
``"validation"`` the last 5,000; ``validation_size=0`` trains on all 50,000 and
drops ``"validation"``. ``"test"`` is tfds' ``test`` split; ``"train"`` is the
training subset unaugmented (for training-error curves). ImageNet: ``train``
(1,281,167 images) and ``"validation"`` (the 50,000 ILSVRC2012 validation images,
the usual test set).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from experiments.data import augment, order
from experiments.data.base import (
    Batch,
    Dataset,
    DatasetNotPreparedError,
    DeviceData,
    wants_device_data,
)
from experiments.data.hosts import host_batch_size, host_batches

IMAGE_DATASETS = ("cifar10", "cifar100", "imagenet2012")

CIFAR = {
    "cifar10": (10, augment.CIFAR10_MEAN, augment.CIFAR10_STD),
    "cifar100": (100, augment.CIFAR100_MEAN, augment.CIFAR100_STD),
}


# --------------------------------------------------------------------------------------
# Opening tfds data sources


def _how_to_prepare(name: str, data_dir: str | None) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    manual = ""
    if name == "imagenet2012":
        manual = (
            " --manual_dir=DIR  # DIR holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
            " (from https://image-net.org)"
        )
    return (
        "Prepare it once, in ArrayRecord format (TensorFlow is needed for this step only):\n"
        "    pip install tensorflow\n"
        f"    tfds build {name}{where} --file_format=array_record{manual}\n"
        "A copy already built in TFRecord format can be converted instead with\n"
        "    tfds convert_format --dataset_version_dir=<dir>/<name>/<version> "
        "--out_file_format=array_record"
    )


def open_source(
    name: str, split: str, *, data_dir: str | None = None, decoders: Any = None
) -> Sequence[Any]:
    """``tfds.data_source`` that never downloads; ``DatasetNotPreparedError`` if absent.

    Args:
      name: tfds name, e.g. ``"cifar10"``.
      split: tfds split name, e.g. ``"train"``.
      data_dir: the tfds data directory (default: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      decoders: passed to ``tfds.data_source``.

    Returns:
      A random-access sequence of decoded records (dicts of numpy arrays).

    Raises:
      DatasetNotPreparedError: the dataset is not in ``data_dir`` in ArrayRecord
        format; the message says how to prepare it.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except Exception as err:  # tfds raises several types for "not there / wrong format"
        where = data_dir or "the default tfds data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        raise DatasetNotPreparedError(
            f"Cannot read tfds dataset {name!r} (split {split!r}) from {where} "
            f"without downloading: {type(err).__name__}: {err}\n{_how_to_prepare(name, data_dir)}"
        ) from err


# --------------------------------------------------------------------------------------
# Generic grain pipelines over "load(i) -> example" with i in range(n)


def _derived_seeds(seed: int, count: int) -> list[int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(count)]


class _Pipeline:
    """Builds the train and eval iterators of one dataset from per-record loaders.

    ``load(i)`` returns ``{"x": uint8 array, "y": int32}`` for record ``i`` of the
    training stream (deterministic preprocessing); ``load_train(i, rng)`` the same
    with host-side random augmentation (ImageNet's crop), ``None`` for none.
    ``eval_sources`` maps split name -> ``(n, load)``.
    """

    def __init__(
        self,
        *,
        num_train: int,
        load_train: Callable[..., dict],
        random_train: bool,
        eval_sources: dict[str, tuple[int, Callable[[int], dict]]],
        pad_example: dict,
        num_threads: int,
        prefetch_batches: int,
        num_workers: int,
    ):
        if num_threads < 0 or prefetch_batches < 1 or num_workers < 0:
            raise ValueError(
                "need num_threads >= 0, prefetch_batches >= 1, num_workers >= 0; got "
                f"{num_threads}, {prefetch_batches}, {num_workers}."
            )
        self.num_train = num_train
        self.load_train = load_train
        self.random_train = random_train
        self.eval_sources = eval_sources
        self.pad_example = pad_example
        self.read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch_batches
        )
        self.num_workers = num_workers

    def _iterate(self, ds: grain.MapDataset) -> Iterator[Batch]:
        it = ds.to_iter_dataset(self.read_options)
        if self.num_workers:
            from absl import flags

            # grain's worker processes read absl flags; outside an absl app (a
            # notebook, a plain script) nothing has parsed them, so take defaults.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        return iter(it)

    def train_iter(
        self,
        seed: int,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        *,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """Infinite host-local training batches; see the module docstring."""
        host_batch_size(global_batch_size, process_index, process_count)  # checks first
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}.")
        _, map_seed = _derived_seeds(order.check_seed(seed), 2)
        ds = grain.MapDataset.source(order.TrainOrder(seed, self.num_train, global_batch_size))
        if self.random_train:
            ds = ds.random_map(self.load_train, seed=map_seed)
        else:
            ds = ds.map(self.load_train)
        ds = host_batches(ds, global_batch_size, process_index, process_count, drop_remainder=True)
        return self._iterate(ds[start_step:])

    def eval_iter(
        self, split: str, global_batch_size: int, process_index: int, process_count: int
    ) -> Iterator[Batch]:
        """The split once, in order, host-local batches, the last one padded (``mask``)."""
        if split not in self.eval_sources:
            raise ValueError(f"Unknown eval split {split!r}; this dataset has {self.eval_splits}.")
        host_batch_size(global_batch_size, process_index, process_count)  # checks first
        n, load = self.eval_sources[split]
        total = math.ceil(n / global_batch_size) * global_batch_size
        pad = self.pad_example

        def load_or_pad(i):
            if i < n:
                return {**load(i), "mask": np.bool_(True)}
            return {**pad, "mask": np.bool_(False)}

        ds = grain.MapDataset.range(total).map(load_or_pad)
        return self._iterate(host_batches(ds, global_batch_size, process_index, process_count))

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self.eval_sources)


def _example(image, label) -> dict:
    return {"x": np.asarray(image, np.uint8), "y": np.int32(label)}


def _read_all(n: int, load: Callable[[int], dict], read_options: grain.ReadOptions) -> Batch:
    """``{"x", "y"}`` of records ``load(0), ..., load(n - 1)`` stacked (grain's threads)."""
    parts = list(grain.MapDataset.range(n).map(load).batch(1024).to_iter_dataset(read_options))
    return {key: np.concatenate([p[key] for p in parts]) for key in ("x", "y")}


# --------------------------------------------------------------------------------------
# CIFAR


def _cifar_nbytes(n_all: int, n_test: int) -> int:
    """Bytes of CIFAR's tables on the device: uint8 32x32x3 images, int32 labels."""
    return (n_all + n_test) * (32 * 32 * 3 + 4)


def _cifar_device_data(
    load_train, load_test, *, n_all: int, n_test: int, num_train: int, num_threads: int
) -> DeviceData:
    """Two tables, tfds' ``train`` (training stream, ``"train"`` and ``"validation"``
    splits) and ``test``, read when the trainer first needs them."""
    threads = max(num_threads, 1)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
    splits = {"train": ("train", 0, num_train)}
    if num_train < n_all:
        splits["validation"] = ("train", num_train, n_all)
    splits["test"] = ("test", 0, n_test)
    return DeviceData(
        load=lambda: {
            "train": _read_all(n_all, load_train, read),
            "test": _read_all(n_test, load_test, read),
        },
        train=("train", 0, num_train),
        eval=splits,
        nbytes=_cifar_nbytes(n_all, n_test),
    )


def cifar(
    name: str = "cifar10",
    *,
    data_dir: str | None = None,
    validation_size: int = 5000,
    crop_flip: bool = True,
    cutout_size: int = 0,
    autoaugment: bool = False,
    num_threads: int = 4,
    prefetch_batches: int = 8,
    num_workers: int = 0,
    on_device: bool | str = "auto",
) -> Dataset:
    """CIFAR-10 or CIFAR-100 as a ``Dataset``.

    Args:
      name: ``"cifar10"`` or ``"cifar100"``.
      data_dir: tfds data directory (default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      validation_size: the last ``validation_size`` images of tfds' ``train`` split
        form ``"validation"`` and are left out of training (5000 in the paper); 0
        trains on all of ``train`` and offers no ``"validation"``.
      crop_flip: training augmentation: pad 4, random 32x32 crop, horizontal flip.
      cutout_size: Cutout square side for training (DeVries and Taylor's: 16 for
        CIFAR-10, 8 for CIFAR-100, in the AutoAugment rows); 0 = none.
      autoaugment: apply AutoAugment's CIFAR-10 policy in training.
      num_threads: grain reader threads per process.
      prefetch_batches: batches prefetched per process.
      num_workers: grain worker processes (``mp_prefetch``); 0 = none.
      on_device: offer the splits as ``device_data`` (held whole on every device,
        batches gathered there: ``experiments/data/feed.py``): ``"auto"`` (when
        they fit ``DEVICE_BUDGET_BYTES``; CIFAR does, ~180 MB), ``True`` or
        ``False`` (fed from grain). The batches are the same either way.

    Returns:
      A ``Dataset`` with ``x: uint8[b, 32, 32, 3]``, ``y: int32[b]``; its
      ``preprocess`` runs the augmentation and normalization on the device. The
      records are read when first needed (``device_data`` as a whole, once).

    Raises:
      DatasetNotPreparedError: if the dataset is not prepared (at once).
      ValueError: for an unknown name or a bad ``validation_size``.
    """
    if name not in CIFAR:
        raise ValueError(f"cifar() takes {sorted(CIFAR)}, got {name!r}.")
    num_classes, mean, std = CIFAR[name]
    train_source = open_source(name, "train", data_dir=data_dir)
    test_source = open_source(name, "test", data_dir=data_dir)
    n_all = len(train_source)
    if isinstance(validation_size, bool) or not 0 <= validation_size < n_all:
        raise ValueError(
            f"validation_size must be in [0, {n_all}) for {name}, got {validation_size!r}."
        )
    num_train = n_all - validation_size

    def load(source, offset, i):
        record = source[offset + i]
        return _example(record["image"], record["label"])

    eval_sources = {"train": (num_train, functools.partial(load, train_source, 0))}
    if validation_size:
        eval_sources["validation"] = (
            validation_size,
            functools.partial(load, train_source, num_train),
        )
    eval_sources["test"] = (len(test_source), functools.partial(load, test_source, 0))
    device_data = None
    if wants_device_data(on_device, _cifar_nbytes(n_all, len(test_source))):
        device_data = _cifar_device_data(
            functools.partial(load, train_source, 0),
            functools.partial(load, test_source, 0),
            n_all=n_all,
            n_test=len(test_source),
            num_train=num_train,
            num_threads=num_threads,
        )

    pipeline = _Pipeline(
        num_train=num_train,
        load_train=functools.partial(load, train_source, 0),
        random_train=False,
        eval_sources=eval_sources,
        pad_example=_example(np.zeros((32, 32, 3), np.uint8), 0),
        num_threads=num_threads,
        prefetch_batches=prefetch_batches,
        num_workers=num_workers,
    )
    return Dataset(
        name=name,
        num_classes=num_classes,
        num_train=num_train,
        input_spec={"x": ((32, 32, 3), "uint8")},
        train_iter=pipeline.train_iter,
        eval_iter=pipeline.eval_iter,
        eval_splits=pipeline.eval_splits,
        preprocess=augment.make_preprocess(
            mean=mean,
            std=std,
            crop_flip=crop_flip,
            autoaugment=autoaugment,
            cutout_size=cutout_size,
        ),
        extra={
            "mean": mean,
            "std": std,
            # Records of tfds' "train" split that form each of our splits.
            "train_records": (0, num_train),
            "validation_records": (num_train, n_all),
        },
        device_data=device_data,
    )


# --------------------------------------------------------------------------------------
# ImageNet: host-side decode and crop (PIL), device-side normalization


def _open_image(image: Any, target: tuple[int, int] | None = None):
    """A PIL RGB image from JPEG bytes or a decoded array.

    With JPEG bytes and ``target=(w, h)``, JPEG draft mode decodes at the smallest
    1/1, 1/2, 1/4 or 1/8 scale that keeps at least ``target`` pixels.
    """
    from PIL import Image

    if isinstance(image, (bytes, np.bytes_, bytearray)):
        img = Image.open(io.BytesIO(bytes(image)))
        if target is not None and img.format == "JPEG":
            img.draft("RGB", (max(1, target[0]), max(1, target[1])))
    else:
        img = Image.fromarray(np.asarray(image, np.uint8))
    return img.convert("RGB")


def _image_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of JPEG bytes (header only) or of an ``[H, W, C]`` array."""
    from PIL import Image

    if isinstance(image, (bytes, np.bytes_, bytearray)):
        with Image.open(io.BytesIO(bytes(image))) as img:
            return img.size
    shape = np.shape(image)
    return shape[1], shape[0]


def sample_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Inception-style crop box ``(left, top, right, bottom)`` of an image.

    Draws an area fraction uniformly from ``area_range`` and an aspect ratio
    log-uniformly from ``aspect_range`` until the box fits (``attempts`` tries),
    else falls back to the largest centred box of a valid aspect ratio.
    """
    area = width * height
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        target = rng.uniform(*area_range) * area
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < aspect_range[0]:
        w, h = width, round(width / aspect_range[0])
    elif ratio > aspect_range[1]:
        w, h = round(height * aspect_range[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _crop_resize(image: Any, box, size: int):
    """Crops ``box`` (original pixel coords) and resizes it to ``size x size``."""
    from PIL import Image

    width, height = _image_size(image)
    left, top, right, bottom = box
    scale = max(size / (right - left), size / (bottom - top))
    img = _open_image(image, (math.ceil(width * scale), math.ceil(height * scale)))
    fx, fy = img.size[0] / width, img.size[1] / height  # < 1 after draft
    return img.resize(
        (size, size), Image.BILINEAR, box=(left * fx, top * fy, right * fx, bottom * fy)
    )


def imagenet_train_transform(
    image: Any, rng: np.random.Generator, *, image_size: int = 224, area_range=(0.08, 1.0)
) -> np.ndarray:
    """Random-resized crop (Inception) to ``image_size`` and a random horizontal flip.

    Args:
      image: JPEG bytes or a decoded ``uint8[H, W, 3]`` array.
      rng: numpy generator (grain's per-element generator).
      image_size: output side.
      area_range: range of the crop's area fraction.

    Returns:
      ``uint8[image_size, image_size, 3]``.
    """
    width, height = _image_size(image)
    box = sample_crop_box(rng, width, height, area_range=area_range)
    out = np.asarray(_crop_resize(image, box, image_size), np.uint8)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def imagenet_eval_transform(
    image: Any, *, image_size: int = 224, resize_size: int = 256
) -> np.ndarray:
    """Resizes the shorter side to ``resize_size`` and crops the centre ``image_size``.

    Done as one crop-and-resize: the centre square of side ``image_size /
    resize_size`` times the shorter side, resized to ``image_size``.

    Returns:
      ``uint8[image_size, image_size, 3]``.
    """
    width, height = _image_size(image)
    # The centre square of side image_size / resize_size of the shorter side.
    side = min(width, height) * image_size / resize_size
    left, top = (width - side) / 2, (height - side) / 2
    return np.asarray(
        _crop_resize(image, (left, top, left + side, top + side), image_size), np.uint8
    )


def imagenet(
    *,
    data_dir: str | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    area_range: tuple[float, float] = (0.08, 1.0),
    raw_jpeg: bool = True,
    num_threads: int = 16,
    prefetch_batches: int = 4,
    num_workers: int = 0,
    on_device: bool | str = "auto",
) -> Dataset:
    """ImageNet (ILSVRC2012, tfds ``imagenet2012``) as a ``Dataset``.

    Training: Inception-style random-resized crop (area ``area_range``, aspect
    3/4..4/3) to ``image_size`` and a horizontal flip, on the host (PIL, bilinear);
    evaluation (``"validation"``): shorter side to ``resize_size``, centre crop
    ``image_size``. ``preprocess`` normalizes on the device with the ImageNet mean
    and std.

    Args:
      data_dir: tfds data directory; the build needs ``--manual_dir`` (see the
        module docstring).
      image_size: side of the model input.
      resize_size: evaluation resize of the shorter side (256 for 224).
      area_range: area fraction range of the training crop.
      raw_jpeg: read JPEG bytes (``tfds.decode.SkipDecoding``) and decode them
        here with PIL in draft mode (faster); ``False`` lets tfds decode the full
        image (needed with ``tfds.testing.mock_data``, which cannot encode
        images without TensorFlow).
      num_threads: grain reader threads per process.
      prefetch_batches: batches prefetched per process.
      num_workers: grain worker processes (``mp_prefetch``); decoding JPEGs is
        CPU-bound, so use several on a real run.
      on_device: ``"auto"`` or ``False``: ImageNet is always fed from grain (its
        random crops are cut from the full-size JPEGs on the host); ``True`` is
        refused.

    Returns:
      A ``Dataset`` with ``x: uint8[b, image_size, image_size, 3]``.

    Raises:
      DatasetNotPreparedError: if the dataset is not prepared (at once).
    """
    if not 0 < image_size <= resize_size:
        raise ValueError(f"need 0 < image_size <= resize_size, got {image_size}, {resize_size}.")
    if wants_device_data(on_device, 0) and on_device != "auto":
        raise ValueError(
            "ImageNet cannot be held on the device (its training crops are cut from the "
            'full-size JPEGs on the host); use on_device=False or "auto".'
        )
    import tensorflow_datasets as tfds

    decoders = {"image": tfds.decode.SkipDecoding()} if raw_jpeg else None
    train_source = open_source("imagenet2012", "train", data_dir=data_dir, decoders=decoders)
    val_source = open_source("imagenet2012", "validation", data_dir=data_dir, decoders=decoders)

    def load_train(i, rng):
        record = train_source[i]
        image = imagenet_train_transform(
            record["image"], rng, image_size=image_size, area_range=area_range
        )
        return _example(image, record["label"])

    def load_eval(i):
        record = val_source[i]
        image = imagenet_eval_transform(
            record["image"], image_size=image_size, resize_size=resize_size
        )
        return _example(image, record["label"])

    pipeline = _Pipeline(
        num_train=len(train_source),
        load_train=load_train,
        random_train=True,
        eval_sources={"validation": (len(val_source), load_eval)},
        pad_example=_example(np.zeros((image_size, image_size, 3), np.uint8), 0),
        num_threads=num_threads,
        prefetch_batches=prefetch_batches,
        num_workers=num_workers,
    )
    mean, std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
    return Dataset(
        name="imagenet2012",
        num_classes=1000,
        num_train=len(train_source),
        input_spec={"x": ((image_size, image_size, 3), "uint8")},
        train_iter=pipeline.train_iter,
        eval_iter=pipeline.eval_iter,
        eval_splits=pipeline.eval_splits,
        preprocess=augment.make_preprocess(mean=mean, std=std),
        extra={"mean": mean, "std": std},
    )


def get_dataset(name: str, **kwargs) -> Dataset:
    """The ``Dataset`` called ``name`` (one of ``IMAGE_DATASETS``), built with ``kwargs``.

    ``cifar10`` / ``cifar100`` take ``cifar``'s options, ``imagenet2012``
    ``imagenet``'s.
    """
    if name in CIFAR:
        return cifar(name, **kwargs)
    if name == "imagenet2012":
        return imagenet(**kwargs)
    raise ValueError(f"Unknown image dataset {name!r}; known: {IMAGE_DATASETS}.")
