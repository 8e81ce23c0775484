"""``experiments/`` imports one way: components -> config -> run -> entry points.

Every module of ``experiments`` belongs to one layer (:data:`LAYERS`); a module may
import modules of its own layer or of a lower one, never of a higher one, and the
modules import each other without a cycle (imports inside functions count). No
module under ``experiments/``, ``tests/`` or ``notebooks/`` uses an underscore-private
name of another ``experiments`` or ``pmm_jax`` module.
"""

from pathlib import Path

import pytest

from tests.import_graph import find_cycle, import_graph, private_uses, python_files

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"

# Lowest first. A module's layer is that of the longest prefix that names it.
LAYERS = (
    (  # components: they know no config object's meaning beyond the fields they read
        "experiments.models",
        "experiments.data",
        "experiments.evaluators",
        "experiments.optim",
        "experiments.objectives",
        "experiments.attacks",
    ),
    ("experiments.config", "experiments.configs"),  # the config
    ("experiments.run",),  # running a config
    (  # command-line entry points and tools
        "experiments.train",
        "experiments.sweep",
        "experiments.study",
        "experiments.study_report",
        "experiments.listing",
        "experiments.bench",
    ),
)


def _layer(module: str) -> int | None:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (
                best is None or len(p) > len(best[1])
            ):
                best = (i, p)
    return None if best is None else best[0]


@pytest.fixture(scope="module")
def graph():
    graph = import_graph(EXPERIMENTS)
    assert graph.pop("experiments") == set()  # the package's own __init__ imports nothing
    return graph


def test_every_module_has_a_layer(graph):
    assert "experiments.run.job" in graph  # the graph was read
    assert [m for m in graph if _layer(m) is None] == []


def test_no_module_imports_a_higher_layer(graph):
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if target != "experiments" and _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in experiments: " + " -> ".join(cycle)


def test_no_private_names_across_modules():
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path in python_files(EXPERIMENTS, REPO / "tests", REPO / "notebooks")
        for line, name in private_uses(path, EXPERIMENTS, REPO / "pmm_jax")
    ]
    assert not offenders, "private names of other modules used:\n" + "\n".join(offenders)
