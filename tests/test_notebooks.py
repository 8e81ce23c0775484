"""Executes every notebook in notebooks/ top to bottom; any cell error fails its test.

Each notebook runs in a fresh kernel of *this* interpreter (so it sees this checkout's
pmm_jax and experiments/, and notebook 03's XLA flags take effect before JAX starts), with
the working directory set to notebooks/, as when a user opens it there. The kernel is
registered under the name ``python3`` in a temporary Jupyter data directory that comes
first on ``JUPYTER_PATH``, so a missing or stale ``python3`` kernel spec elsewhere (a user
one that points at another Python) does not matter.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # each notebook takes well under 3 minutes on a 2-core CPU


def test_notebooks_are_found():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_quickstart",
        "02_margins_mnist1d",
        "03_custom_training_loop",
    ], names


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name} cell {i} has outputs; strip them before committing"
                )


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A ``python3`` kernel spec for this interpreter and a clean environment for it."""
    data_dir = tmp_path / "jupyter"
    kernelspec.write_kernel_spec(data_dir / "kernels" / "python3")  # argv: sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # The test session's 8 fake devices (conftest.py) are not the notebooks' business:
    # 01 and 02 run on one device as for a user, 03 sets its own flags and threads.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("PJRT_NPROC", raising=False)
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's frozen-modules note
    return data_dir


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s ({sys.executable})")
