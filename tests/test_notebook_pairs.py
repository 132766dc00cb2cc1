"""Each notebooks/NN_topic.py and its .ipynb hold the same cells (jupytext --diff exits 0 even
when they differ, so we compare the cell sources ourselves)."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_py_and_ipynb_are_in_sync(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run scripts/refresh_notebook.sh {source}"
    assert cells(jupytext.read(source)) == cells(jupytext.read(paired)), (
        f"{source.name} and {paired.name} differ: run scripts/refresh_notebook.sh {source}")


def test_every_ipynb_has_a_py_source():
    for notebook in NOTEBOOKS.glob("*.ipynb"):
        assert notebook.with_suffix(".py").exists(), notebook.name
