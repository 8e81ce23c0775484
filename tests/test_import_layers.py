"""``experiments/`` imports one way: components -> config -> run -> entry points.

Every module of ``experiments`` belongs to one layer (:data:`LAYERS`); a module
may import modules of its own layer or of a lower one, never of a higher one, and
the modules import each other without a cycle (imports inside functions count).
No module uses another module's underscore-private names.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
        "experiments.listing",
        "experiments.bench",
    ),
)


def _modules(package: str) -> dict[str, str]:
    """``{module name: file}`` of every module under ``package``."""
    out = {}
    base = os.path.join(ROOT, *package.split("."))
    for folder, _, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
            out[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return out


def _imports(module: str, path: str, known: set[str]) -> list[tuple[str, int, set[str]]]:
    """``(imported module, line, names taken from it)`` for every import of ``path``."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno, set()))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from package import module`
                    found.append((sub, node.lineno, set()))
                else:
                    found.append((base, node.lineno, {alias.name}))
    return [(m, line, names) for m, line, names in found if m in known]


def _layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (
                best is None or len(p) > len(best[1])
            ):
                best = (i, p)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_import_layers.py")
    return best[0]


@pytest.fixture(scope="module")
def graph():
    modules = _modules("experiments")
    modules.pop("experiments")  # the package's own __init__ (empty)
    known = set(modules)
    return {m: _imports(m, path, known) for m, path in modules.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        _layer(module)


def test_no_module_imports_a_higher_layer(graph):
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)}), line {line}"
        for module, imports in graph.items()
        for target, line, _ in imports
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph):
    edges = {m: sorted({t for t, _, _ in imports if t != m}) for m, imports in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges.get(m, ()):
            if state.get(t) == "open":
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_private_name_of_another_module(graph):
    """``from x import _y`` and ``x._y`` across modules (tests included)."""
    modules = _modules("experiments")
    known = set(modules)
    offenders = []
    files = {**modules, **{m: p for m, p in _modules("tests").items()}}
    for module, path in files.items():
        for target, line, names in _imports(module, path, known):
            for name in names:
                if name.startswith("_") and target != module:
                    offenders.append(f"{path}:{line} from {target} import {name}")
        with open(path) as f:
            tree = ast.parse(f.read())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in known and full != module:
                        aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offenders.append(f"{path}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(offenders)
