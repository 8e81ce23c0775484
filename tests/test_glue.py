"""Tests for experiments/data/glue.py, offline.

Two sources of data: ``tfds.testing.mock_data`` (random examples, any task), and
a real array_record preparation of glue/sst2 from small TSV files (tfds's own
GLUE code with the download replaced), which is the path real runs read.
"""

import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.data import glue
from experiments.data.base import DatasetNotPreparedError
from experiments.data.registry import dataset_info
from tests.bert_helpers import tiny_tokenizer

TRAIN = [f"ex{i}" for i in range(10)]
VALIDATION = ["good", "bad", "the movie", "a man", "food"]


def _tsv(rows):
    return "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(rows))


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    """glue/sst2 prepared as array_record from TSV files (labels: row index % 2)."""
    raw = tmp_path_factory.mktemp("raw")
    (raw / "SST-2").mkdir()
    (raw / "SST-2" / "train.tsv").write_text(_tsv(TRAIN))
    (raw / "SST-2" / "dev.tsv").write_text(_tsv(VALIDATION))
    (raw / "SST-2" / "test.tsv").write_text("index\tsentence\n0\tunlabeled\n")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    download = mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(raw)
    )
    with download:
        glue.prepare("sst2", data_dir)
    return data_dir


def _texts(tok, batch):
    return [tok.decode(row.tolist()) for row in batch["x"]["input_ids"]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_glue_not_prepared_fails_at_once_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as info:
        glue.get_glue("mrpc", tiny_tokenizer(), data_dir=str(tmp_path))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "glue/mrpc is not prepared" in message
    assert f"python -m experiments.data.glue --tasks mrpc --data_dir {tmp_path}" in message
    assert "tfds build glue/mrpc --file_format=array_record" in message
    assert not (tmp_path / "downloads").exists()  # nothing was fetched
    with pytest.raises(ValueError, match="Unknown GLUE task 'cola'"):
        glue.get_glue("cola", tiny_tokenizer(), data_dir=str(tmp_path))


def test_glue_prepared_sst2_dataset(sst2_dir):
    tok = tiny_tokenizer()
    ds = glue.get_glue("sst2", tok, max_len=8, data_dir=sst2_dir, num_threads=2)
    assert (ds.name, ds.num_classes, ds.num_train, ds.eval_splits) == (
        "glue/sst2",
        2,
        10,
        ("validation",),
    )
    assert ds.input_spec == {
        "x": {k: ((8,), "int32") for k in ("input_ids", "token_type_ids", "attention_mask")}
    }
    assert ds.extra["metrics"] == ("accuracy",)
    batch = next(ds.train_iter(0, 4, 0, 1))
    assert set(batch) == {"x", "y"} and batch["y"].dtype == np.int32
    assert all(v.shape == (4, 8) and v.dtype == np.int32 for v in batch["x"].values())
    for text, label in zip(_texts(tok, batch), batch["y"], strict=True):
        assert label == TRAIN.index(text) % 2  # text and label of the same example
    assert ds.preprocess(None, batch, True) is batch


def test_glue_train_iter_shards_and_reshuffles_every_epoch(sst2_dir):
    tok = tiny_tokenizer()
    ds = glue.get_glue("sst2", tok, max_len=8, data_dir=sst2_dir, num_threads=2)
    streams = []
    for host in (0, 1):
        batches = _take(ds.train_iter(7, 2, host, 2), 5)  # 1 row per host per batch
        streams.append([t for b in batches for t in _texts(tok, b)])
    # One epoch of each host's shard: disjoint halves of the split.
    assert len(set(streams[0])) == len(set(streams[1])) == 5
    assert sorted(streams[0] + streams[1]) == sorted(TRAIN)
    tok_stream = lambda it, n: [t for b in _take(it, n) for t in _texts(tok, b)]
    two_epochs = tok_stream(ds.train_iter(7, 4, 0, 1), 5)
    assert sorted(two_epochs[:10]) == sorted(two_epochs[10:]) == sorted(TRAIN)
    assert two_epochs[:10] != two_epochs[10:]  # a new permutation every epoch
    assert tok_stream(ds.train_iter(7, 4, 0, 1), 5) == two_epochs  # deterministic
    assert tok_stream(ds.train_iter(8, 4, 0, 1), 5) != two_epochs
    resumed = tok_stream(ds.train_iter(7, 4, 0, 1, start_step=3), 2)
    assert resumed == two_epochs[12:]
    with pytest.raises(ValueError, match="does not split over 2 processes"):
        ds.train_iter(0, 5, 0, 2)


def test_glue_eval_iter_pads_and_covers_the_split_once(sst2_dir):
    tok = tiny_tokenizer()
    ds = glue.get_glue("sst2", tok, max_len=8, data_dir=sst2_dir, num_threads=2)
    seen = []
    for host in (0, 1):
        batches = list(ds.eval_iter("validation", 4, host, 2))
        assert len(batches) == 2  # ceil(5 / 4), the same on every host
        for b in batches:
            assert b["mask"].dtype == bool and b["mask"].shape == (2,)
            for text, label, real in zip(_texts(tok, b), b["y"], b["mask"], strict=True):
                if real:
                    assert label == VALIDATION.index(text) % 2
                    seen.append(text)
    assert sorted(seen) == sorted(VALIDATION)
    with pytest.raises(ValueError, match="not 'test'"):
        ds.eval_iter("test", 4, 0, 1)


def _concat(batches):
    """Hosts' batches -> one global batch (rows in process order)."""
    x = {k: np.concatenate([b["x"][k] for b in batches]) for k in batches[0]["x"]}
    rest = {k: np.concatenate([b[k] for b in batches]) for k in batches[0] if k != "x"}
    return {"x": x, **rest}


def _assert_same_batch(got, want):
    assert set(got) == set(want)
    for k in want["x"]:
        np.testing.assert_array_equal(got["x"][k], want["x"][k])
    for k in set(want) - {"x"}:
        np.testing.assert_array_equal(got[k], want[k])


def test_glue_global_stream_does_not_depend_on_the_host_count():
    """1 host and 2 simulated hosts see the same global batches in the same order,
    across epochs and when resuming (the whole split is shuffled, then split by host)."""
    tok = tiny_tokenizer()
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = glue.get_glue("mrpc", tok, max_len=16, num_threads=1)
        single = _take(ds.train_iter(3, 4, 0, 1), 7)  # 28 rows: across two epochs
        hosts = [_take(ds.train_iter(3, 4, p, 2), 7) for p in range(2)]
        for step in range(7):
            assert all(h[step]["y"].shape == (2,) for h in hosts)
            _assert_same_batch(_concat([h[step] for h in hosts]), single[step])
        resumed = [_take(ds.train_iter(3, 4, p, 2, start_step=5), 2) for p in range(2)]
        for step in range(2):
            _assert_same_batch(_concat([r[step] for r in resumed]), single[5 + step])
        one = list(ds.eval_iter("validation", 8, 0, 1))
        two = [list(ds.eval_iter("validation", 8, p, 2)) for p in range(2)]
        assert len(one) == len(two[0]) == len(two[1]) == 2
        for step in range(2):
            _assert_same_batch(_concat([h[step] for h in two]), one[step])


def test_glue_pair_tasks_with_mock_data():
    tok = tiny_tokenizer()
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        mnli = glue.get_glue("mnli", tok, max_len=24, num_threads=1)
        assert mnli.num_classes == 3 and mnli.num_train == 6
        assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
        batch = next(mnli.train_iter(0, 4, 0, 1))
        assert (batch["x"]["token_type_ids"] == 1).any(axis=1).all()  # a second segment
        assert set(np.unique(batch["y"])) <= {0, 1, 2}
        batches = list(mnli.eval_iter("validation_mismatched", 4, 0, 1))
        assert [b["mask"].sum() for b in batches] == [4, 2]
        qqp = glue.get_glue("qqp", tok, max_len=24, num_threads=1)
        assert qqp.extra["metrics"] == ("accuracy", "f1")
        assert next(qqp.train_iter(0, 2, 0, 1))["x"]["input_ids"].shape == (2, 24)


@pytest.mark.parametrize("task", list(glue.GLUE_TASKS))
def test_dataset_info_is_what_the_dataset_says(task):
    """The configs' classes and shapes come from dataset_info, without data or tokenizer."""
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        for kwargs in ({}, {"max_len": 24}):  # the loader's default max_len, and another
            ds = glue.get_glue(task, tiny_tokenizer(), num_threads=1, **kwargs)
            info = dataset_info(f"glue/{task}", tokenizer="", data_dir=None, **kwargs)
            assert info == (ds.num_classes, ds.input_spec)
    with pytest.raises(ValueError, match="Unknown GLUE task 'cola'"):
        dataset_info("glue/cola")
