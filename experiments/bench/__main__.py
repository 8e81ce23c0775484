"""``python -m experiments.bench``: see ``experiments.bench.cli``."""

from experiments.bench.cli import main

main()
