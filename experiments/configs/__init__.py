"""Experiment configs: one file per experiment, each with ``get_config(variant="")``.

Loaded by ``experiments.config.files.load_config`` (``--config FILE.py:VARIANT``);
``common.py`` and the files starting with ``_`` hold shared code, not configs.
"""
