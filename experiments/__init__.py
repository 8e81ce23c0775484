"""Experiments built on pmm_jax: models, data, training CLI, benchmarks."""
