"""Input pipelines for the experiments.

Every dataset module exposes a ``Dataset``-like object (see ``experiments/data/base.py``)
with the number of classes, host-local numpy batches for training (infinite,
reshuffled every epoch, sharded per host), finite padded batches with a ``mask`` for
evaluation, and a jit-able on-device preprocessing/augmentation function.
"""
