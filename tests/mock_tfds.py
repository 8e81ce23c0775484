"""Helpers of the tests that read image datasets under ``tfds.testing.mock_data``."""

import contextlib

import tensorflow_datasets as tfds


@contextlib.contextmanager
def mock(num_examples):
    """tfds' mock data (random records, no download, no TensorFlow) with ``num_examples``
    records per split."""
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=num_examples):
        yield


def take(iterator, n):
    """The next ``n`` items of ``iterator``."""
    return [next(iterator) for _ in range(n)]
