"""Tests for the tfds + grain image pipelines (experiments/data/images.py).

No download and no TensorFlow: most tests run under ``tfds.testing.mock_data``
(which replaces the data source with random records, the same for every split);
a few write a small dataset in tfds' real on-disk ArrayRecord format (records are
serialized ``tf.train.Example`` protos with PNG / JPEG bytes), so that the real
reading and decoding path runs too.
"""

import io
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments.data import augment, images
from experiments.data.base import Dataset, DatasetNotPreparedError
from tests.mock_tfds import mock, take


def record_images(name, split, n):
    """The raw data source's images (under the mock: the same for every split)."""
    source = tfds.data_source(name, split=split, download=False)
    return [np.asarray(source[i]["image"]) for i in range(n)]


# --------------------------------------------------------------------------------------
# CIFAR under tfds.testing.mock_data


@pytest.mark.parametrize("name, k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_train_and_eval_batches(name, k):
    with mock(200):
        ds = images.get_dataset(name, validation_size=40)
        assert isinstance(ds, Dataset)
        assert (ds.name, ds.num_classes, ds.num_train) == (name, k, 160)
        assert ds.eval_splits == ("train", "validation", "test")
        assert ds.input_spec == {"x": ((32, 32, 3), "uint8")}
        for batch in take(ds.train_iter(0, 32, 0, 1), 7):  # runs past an epoch
            assert set(batch) == {"x", "y"}
            assert batch["x"].shape == (32, 32, 32, 3) and batch["x"].dtype == np.uint8
            assert batch["y"].shape == (32,) and batch["y"].dtype == np.int32
            assert batch["y"].min() >= 0 and batch["y"].max() < k
        batches = list(ds.eval_iter("test", 64, 0, 1))
        assert [b["x"].shape[0] for b in batches] == [64] * 4
        assert sum(int(b["mask"].sum()) for b in batches) == 200


def test_validation_is_the_last_5000_training_images():
    with mock(50_000):
        ds = images.get_dataset("cifar10")
        assert ds.num_train == 45_000 and ds.extra["validation_records"] == (45_000, 50_000)
        batches = list(ds.eval_iter("validation", 1000, 0, 1))
        got = np.concatenate([b["x"][b["mask"]] for b in batches])
        source = tfds.data_source("cifar10", split="train", download=False)
        expected = np.stack([source[i]["image"] for i in range(45_000, 50_000)])
        labels = np.concatenate([b["y"][b["mask"]] for b in batches])
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(45_000, 50_000)])


def test_training_epoch_covers_exactly_the_training_records():
    with mock(120):
        ds = images.get_dataset("cifar100", validation_size=20)
        records = {im.tobytes(): i for i, im in enumerate(record_images("cifar100", "train", 120))}
        assert len(records) == 120  # mock images are distinct
        batches = take(ds.train_iter(5, 20, 0, 1), 10)  # two epochs of 100
        epochs = []
        for e in range(2):
            x = np.concatenate([b["x"] for b in batches[5 * e : 5 * e + 5]])
            epochs.append([records[im.tobytes()] for im in x])
        assert sorted(epochs[0]) == list(range(100)) == sorted(epochs[1])
        assert epochs[0] != epochs[1]  # a new shuffle every epoch
        assert epochs[0] != list(range(100))


def test_full_training_set_without_validation():
    with mock(60):
        ds = images.get_dataset("cifar10", validation_size=0)
        assert ds.num_train == 60 and ds.eval_splits == ("train", "test")
        with pytest.raises(ValueError, match="validation"):
            ds.eval_iter("validation", 10, 0, 1)


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_get_disjoint_shards_of_each_global_batch(process_count):
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)
        single = take(ds.train_iter(3, 16, 0, 1), 8)
        hosts = [take(ds.train_iter(3, 16, p, process_count), 8) for p in range(process_count)]
        for step in range(8):
            assert all(h[step]["x"].shape[0] == 16 // process_count for h in hosts)
            for key in ("x", "y"):
                np.testing.assert_array_equal(
                    np.concatenate([h[step][key] for h in hosts]), single[step][key]
                )


def test_eval_is_padded_masked_and_sharded():
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)
        hosts = [list(ds.eval_iter("test", 32, p, 2)) for p in range(2)]
        assert [len(h) for h in hosts] == [4, 4]  # ceil(100 / 32) global batches
        rows = []
        for step in range(4):
            for h in hosts:
                assert h[step]["x"].shape == (16, 32, 32, 3)
                rows.append(h[step])
        mask = np.concatenate([r["mask"] for r in rows])
        x = np.concatenate([r["x"] for r in rows])
        y = np.concatenate([r["y"] for r in rows])
        assert mask.dtype == bool and mask[:100].all() and not mask[100:].any()
        np.testing.assert_array_equal(x[:100], np.stack(record_images("cifar10", "test", 100)))
        assert not x[100:].any() and not y[100:].any()
        # An exact multiple needs no padding.
        batches = list(ds.eval_iter("validation", 20, 0, 1))
        assert len(batches) == 1 and batches[0]["mask"].all()


def test_train_stream_is_deterministic_in_the_seed_and_resumable():
    with mock(100):
        ds = images.get_dataset("cifar10", validation_size=20)
        a = take(ds.train_iter(7, 16, 0, 1), 9)
        b = take(ds.train_iter(7, 16, 0, 1), 9)
        c = take(ds.train_iter(8, 16, 0, 1), 9)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["x"], y["x"])
        assert not all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, c, strict=True))
        resumed = take(ds.train_iter(7, 16, 0, 1, start_step=6), 3)
        for x, y in zip(a[6:], resumed, strict=True):
            np.testing.assert_array_equal(x["x"], y["x"])
            np.testing.assert_array_equal(x["y"], y["y"])


def test_dataset_preprocess_runs_on_device():
    with mock(50):
        ds = images.get_dataset(
            "cifar100",
            validation_size=10,
            autoaugment=True,
            cutout_size=8,
        )
        batch = next(ds.train_iter(0, 8, 0, 1))
        preprocess = jax.jit(ds.preprocess, static_argnums=2)
        out = preprocess(jax.random.key(0), batch, True)
        assert out["x"].shape == (8, 32, 32, 3) and out["x"].dtype == np.float32
        np.testing.assert_array_equal(out["y"], batch["y"])
        evaluated = preprocess(jax.random.key(0), batch, False)
        np.testing.assert_allclose(
            evaluated["x"],
            augment.normalize(batch["x"], augment.CIFAR100_MEAN, augment.CIFAR100_STD),
            rtol=1e-6,
            atol=1e-6,
        )


def test_bad_arguments():
    with mock(50):
        with pytest.raises(ValueError, match="validation_size"):
            images.get_dataset("cifar10", validation_size=50)
        with pytest.raises(ValueError, match="Unknown image dataset"):
            images.get_dataset("mnist")
        ds = images.get_dataset("cifar10", validation_size=10)
        with pytest.raises(ValueError, match="multiple of"):
            ds.train_iter(0, 10, 0, 4)
        with pytest.raises(ValueError, match="process_index"):
            ds.train_iter(0, 8, 4, 4)
        with pytest.raises(ValueError, match="seed"):
            ds.train_iter(-1, 8, 0, 1)
        with pytest.raises(ValueError, match="Unknown eval split"):
            ds.eval_iter("dev", 8, 0, 1)


# --------------------------------------------------------------------------------------
# ImageNet under the mock (tfds decodes; the mock cannot encode JPEGs without TF)


def test_imagenet_under_mock():
    with mock(30):
        ds = images.get_dataset("imagenet2012", raw_jpeg=False, image_size=32, resize_size=36)
        assert (ds.num_classes, ds.num_train, ds.eval_splits) == (1000, 30, ("validation",))
        assert ds.input_spec == {"x": ((32, 32, 3), "uint8")}
        a = take(ds.train_iter(0, 8, 0, 1), 5)
        b = take(ds.train_iter(0, 8, 1, 2), 5)
        for x, y in zip(a, b, strict=True):
            assert x["x"].shape == (8, 32, 32, 3) and x["x"].dtype == np.uint8
            np.testing.assert_array_equal(x["x"][4:], y["x"])  # host 1: rows 4..7
        batches = list(ds.eval_iter("validation", 8, 0, 1))
        assert len(batches) == 4 and sum(int(b["mask"].sum()) for b in batches) == 30
        out = jax.jit(ds.preprocess, static_argnums=2)(jax.random.key(0), a[0], True)
        assert out["x"].dtype == np.float32


# --------------------------------------------------------------------------------------
# Host-side ImageNet transforms


def _smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_sample_crop_box():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = images.sample_crop_box(rng, 500, 375)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        assert 0.079 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # No box of a valid aspect ratio can be drawn in a 1000x10 image: centred fallback.
    left, top, right, bottom = images.sample_crop_box(rng, 1000, 10)
    assert (top, bottom) == (0, 10) and right - left == round(10 * 4 / 3)
    assert left == (1000 - (right - left)) // 2


def test_imagenet_transforms_on_jpeg_bytes_and_arrays():
    array = _smooth_image(300, 400)
    data = _jpeg(array)
    train = images.imagenet_train_transform(data, np.random.default_rng(1), image_size=64)
    assert train.shape == (64, 64, 3) and train.dtype == np.uint8
    again = images.imagenet_train_transform(data, np.random.default_rng(1), image_size=64)
    np.testing.assert_array_equal(train, again)
    from_array = images.imagenet_train_transform(array, np.random.default_rng(1), image_size=64)
    assert np.abs(train.astype(int) - from_array).mean() < 4  # JPEG loss and draft scaling
    crop = images.imagenet_eval_transform(data, image_size=224, resize_size=256)
    assert crop.shape == (224, 224, 3)
    expected = np.asarray(
        Image.fromarray(array).resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    )
    assert np.abs(crop.astype(int) - expected).mean() < 4


# --------------------------------------------------------------------------------------
# Real on-disk tfds datasets (ArrayRecord), written here without TensorFlow


def write_tfds_dataset(data_dir, name, splits, file_format="array_record"):
    """Writes ``splits`` (split -> list of feature dicts with encoded images) as tfds would."""
    from array_record.python import array_record_module
    from tensorflow_datasets.core import example_serializer, naming
    from tensorflow_datasets.core import splits as splits_lib

    builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format=file_format)
    os.makedirs(builder.data_dir, exist_ok=True)
    serializer = example_serializer.ExampleSerializer(builder.info.features.get_serialized_info())
    infos = []
    for split, examples in splits.items():
        template = naming.ShardedFileTemplate(
            data_dir=builder.data_dir,
            dataset_name=name,
            split=split,
            filetype_suffix=file_format,
        )
        path = os.fspath(template.sharded_filepath(shard_index=0, num_shards=1))
        if file_format == "array_record":
            writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
            for example in examples:
                writer.write(serializer.serialize_example(example))
            writer.close()
        else:
            open(path, "wb").close()
        infos.append(
            splits_lib.SplitInfo(
                name=split,
                shard_lengths=[len(examples)],
                num_bytes=os.path.getsize(path),
                filename_template=template,
            )
        )
    builder.info.set_splits(splits_lib.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_cifar_files_are_read_and_decoded_without_tensorflow(tmp_path):
    rng = np.random.default_rng(0)
    pictures = {"train": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)}
    pictures["test"] = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    write_tfds_dataset(
        tmp_path,
        "cifar10",
        {
            split: [
                {"id": f"{split}_{i}".encode(), "image": _png(im), "label": i % 10}
                for i, im in enumerate(arrays)
            ]
            for split, arrays in pictures.items()
        },
    )
    ds = images.get_dataset("cifar10", data_dir=os.fspath(tmp_path), validation_size=10)
    assert ds.num_train == 20
    source = tfds.data_source("cifar10", split="train", data_dir=os.fspath(tmp_path))
    assert [source[i]["id"] for i in range(20, 30)] == [
        f"train_{i}".encode() for i in range(20, 30)
    ]
    (val,) = ds.eval_iter("validation", 16, 0, 1)
    np.testing.assert_array_equal(val["x"][:10], pictures["train"][20:])
    np.testing.assert_array_equal(val["y"][:10], np.arange(20, 30) % 10)
    assert val["mask"].sum() == 10
    train = np.concatenate([b["x"] for b in take(ds.train_iter(0, 10, 0, 1), 2)])
    assert sorted(im.tobytes() for im in train) == sorted(
        im.tobytes() for im in pictures["train"][:20]
    )
    (test,) = ds.eval_iter("test", 8, 0, 1)
    np.testing.assert_array_equal(test["x"][:7], pictures["test"])


def test_real_imagenet_jpegs_are_decoded_with_pil(tmp_path):
    sizes = [(60, 80), (90, 70), (64, 64), (50, 120)]
    arrays = [_smooth_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    examples = [
        {"file_name": f"n0_{i}.JPEG".encode(), "image": _jpeg(a), "label": 7 * i}
        for i, a in enumerate(arrays)
    ]
    write_tfds_dataset(tmp_path, "imagenet2012", {"train": examples, "validation": examples[:3]})
    ds = images.get_dataset(
        "imagenet2012", data_dir=os.fspath(tmp_path), image_size=48, resize_size=56
    )
    assert ds.num_train == 4
    (batch,) = take(ds.train_iter(0, 4, 0, 1), 1)
    assert batch["x"].shape == (4, 48, 48, 3) and sorted(batch["y"]) == [0, 7, 14, 21]
    (val,) = ds.eval_iter("validation", 4, 0, 1)
    assert list(val["mask"]) == [True, True, True, False]
    for i in range(3):
        expected = images.imagenet_eval_transform(arrays[i], image_size=48, resize_size=56)
        assert np.abs(val["x"][i].astype(int) - expected).mean() < 4


# --------------------------------------------------------------------------------------
# Not prepared: fail at once with the command that prepares the data


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet2012"])
def test_missing_dataset_fails_at_once_with_instructions(tmp_path, name):
    with pytest.raises(DatasetNotPreparedError) as info:
        images.get_dataset(name, data_dir=os.fspath(tmp_path))
    message = str(info.value)
    assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message
    assert "pip install tensorflow" in message
    if name == "imagenet2012":
        assert "--manual_dir" in message and "ILSVRC2012_img_train.tar" in message


def test_tfrecord_copy_is_reported_as_not_prepared(tmp_path):
    write_tfds_dataset(tmp_path, "cifar10", {"train": [], "test": []}, file_format="tfrecord")
    with pytest.raises(DatasetNotPreparedError, match="convert_format"):
        images.get_dataset("cifar10", data_dir=os.fspath(tmp_path))
