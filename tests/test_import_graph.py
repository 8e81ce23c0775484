"""The package's import graph, read from the source with ``ast`` (nothing is imported).

* ``pmm_jax`` has no import cycle: inside ``pmm_jax/_src`` imports go one way, with
  ``numerics.py`` at the bottom.
* No module under ``pmm_jax/`` or ``tests/`` uses an underscore-private name of a
  *different* ``pmm_jax`` module (``from m import _x``, ``m._x``, ``setattr(m, "_x", v)``):
  what modules share is named without an underscore.

The helpers are in ``tests/import_graph.py`` (also used for ``experiments/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import find_cycle, import_graph, private_uses, python_files

REPO = Path(__file__).resolve().parent.parent
PMM_JAX = REPO / "pmm_jax"


# --- the package ------------------------------------------------------------------------


def test_pmm_jax_has_no_import_cycle():
    graph = import_graph(PMM_JAX)
    assert "pmm_jax._src.penalty" in graph  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in pmm_jax: " + " -> ".join(cycle)


def test_numerics_is_the_bottom_of_src():
    graph = import_graph(PMM_JAX)
    assert graph["pmm_jax._src.numerics"] == set()
    assert "pmm_jax._src.penalty" not in graph["pmm_jax._src.sharded"]
    assert "pmm_jax._src.numerics" in graph["pmm_jax._src.sharded"]


def test_no_private_names_across_modules():
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path in python_files(PMM_JAX, REPO / "tests")
        for line, name in private_uses(path, PMM_JAX)
    ]
    assert not offenders, "private names of other pmm_jax modules used:\n" + "\n".join(offenders)


# --- the helpers on a made-up package -------------------------------------------------


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import f\n__all__ = ['f']\n",
        "a.py": "from pkg import b\n\ndef f():\n    return b.g()\n\ndef _own():\n    return f()\n",
        "b.py": "def g():\n    from pkg.sub import c\n    return c._h()\n\n_B = 1\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import f as _f\n\ndef _h():\n    return _f\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_import_graph_reads_top_level_function_and_relative_imports(pkg):
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_private_uses_lists_each_offence_once(pkg, tmp_path):
    user = tmp_path / "user.py"
    user.write_text(
        "import pkg\n"
        "import pkg.sub.c as c\n"
        "from pkg import b as _mod\n"
        "from pkg.b import _B, g\n"
        "from pkg.sub import c as cc\n"
        "\n"
        "def test(monkeypatch):\n"
        "    from pkg.a import _own\n"
        "    monkeypatch.setattr(pkg.b, '_B', 2)\n"
        "    monkeypatch.setattr('pkg.a._own', None)\n"
        "    return pkg.sub.c._h(), c._h, _mod._B.real, cc.__name__, pkg.a.f, g\n"
    )
    assert private_uses(user, pkg) == [
        (4, "pkg.b._B"),
        (8, "pkg.a._own"),
        (9, "pkg.b._B"),
        (10, "pkg.a._own"),
        (11, "pkg.b._B"),
        (11, "pkg.sub.c._h"),
    ]
    # Inside the package: b uses c's private name; c its own (allowed) and a's public f.
    assert private_uses(pkg / "b.py", pkg) == [(3, "pkg.sub.c._h")]
    assert private_uses(pkg / "sub" / "c.py", pkg) == []
    assert private_uses(pkg / "a.py", pkg) == []
