"""Reading a package's import graph from its source with ``ast`` (nothing is imported).

:func:`package_modules`, :func:`module_imports`, :func:`import_graph`,
:func:`find_cycle` and :func:`private_uses` take the package's directory; used by
``tests/test_import_graph.py`` (``pmm_jax``) and ``tests/test_import_layers.py``
(``experiments``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    package_dir = Path(package_dir)
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def module_name(path: Path, package_dirs: Iterable[Path]) -> str | None:
    """The dotted name of ``path`` if it lies in one of the packages, else ``None``."""
    path = Path(path).resolve()
    for package_dir in package_dirs:
        for name, file in package_modules(package_dir).items():
            if file.resolve() == path:
                return name
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(node: ast.ImportFrom, importer: str | None, is_package: bool) -> str:
    """The absolute module of ``from <module> import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    if importer is None:
        raise ValueError(f"a relative import outside a known package, line {node.lineno}")
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(tree: ast.AST, modules: dict[str, Path], importer: str | None, is_package: bool):
    """Yields ``(line, bound name or None, module, imported name or None)`` of every import.

    ``module`` is the module imported from; ``imported name`` the name taken from it when
    that name is not itself a module (``from m import f``), else ``None``. Imports at any
    depth (inside functions too) count.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                target = alias.name if alias.asname else alias.name.split(".")[0]
                yield node.lineno, bound, target, None
                if alias.asname is None and alias.name != target:
                    yield node.lineno, None, alias.name, None  # the module it also imports
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, is_package)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:
                    yield node.lineno, alias.asname or alias.name, full, None
                else:
                    yield node.lineno, alias.asname or alias.name, source, alias.name


def module_imports(path: Path, package_dir: Path) -> set[str]:
    """The modules of the package (``package_dir``) that the file at ``path`` imports."""
    modules = package_modules(package_dir)
    importer = module_name(path, [package_dir])
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    is_package = Path(path).name == "__init__.py"
    return {
        module
        for _, _, module, _ in _imports(tree, modules, importer, is_package)
        if module in modules and module != importer
    }


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` (top-level and in functions)."""
    return {
        name: module_imports(path, package_dir)
        for name, path in package_modules(package_dir).items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _chain(node: ast.Attribute) -> tuple[ast.expr, list[str]]:
    """``a.b.c`` -> (the ``a`` node, ``["b", "c"]``)."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def private_uses(path: Path, *package_dirs: Path) -> list[tuple[int, str]]:
    """``(line, "module._name")`` for each use in ``path`` of an underscore-private name
    of a module of the packages (``package_dirs``) other than ``path``'s own module.

    Uses: ``from m import _x``; ``m._x`` where ``m`` is bound to a module of the packages
    (``import m``, ``import m as a``, ``from pkg import m``, also ``pkg.m._x``);
    ``setattr(m, "_x", ...)``, ``getattr(m, "_x")``, ``monkeypatch.setattr(m, "_x", ...)``
    and a dotted string ``"pkg.m._x"`` passed to a call. Dunder names are not private.
    Names are resolved over the whole file (an import inside a function counts
    everywhere), which is enough for code that does not rebind module names.
    """
    modules: dict[str, Path] = {}
    for package_dir in package_dirs:
        modules.update(package_modules(package_dir))
    importer = module_name(path, package_dirs)
    is_package = Path(path).name == "__init__.py"
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    bound: dict[str, str] = {}
    for line, name, module, imported in _imports(tree, modules, importer, is_package):
        if imported is None:
            if name is not None and module in modules:
                bound[name] = module
        elif module in modules and module != importer and _is_private(imported):
            found.append((line, f"{module}.{imported}"))

    def resolve(base: str, attrs: Iterable[str], line: int) -> None:
        module = base
        for attr in attrs:
            if f"{module}.{attr}" in modules:
                module = f"{module}.{attr}"
                continue
            if _is_private(attr) and module != importer:
                found.append((line, f"{module}.{attr}"))
            return

    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            base, attrs = _chain(node)
            if isinstance(base, ast.Name) and base.id in bound:
                resolve(bound[base.id], attrs, node.lineno)
        elif isinstance(node, ast.Call):
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant):
                first = args[0]
                if isinstance(first, ast.Attribute):
                    first, attrs = _chain(first)
                else:
                    attrs = []
                if (
                    isinstance(first, ast.Name)
                    and first.id in bound
                    and isinstance(args[1].value, str)
                ):
                    module = ".".join([bound[first.id], *attrs])
                    if module in modules:
                        resolve(module, [args[1].value], node.lineno)
            for arg in args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    *head, last = arg.value.split(".")
                    if head and ".".join(head) in modules:
                        resolve(".".join(head), [last], node.lineno)
    return sorted(set(found))


def python_files(*dirs: Path) -> Iterator[Path]:
    for directory in dirs:
        yield from sorted(Path(directory).rglob("*.py"))
