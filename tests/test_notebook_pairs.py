"""Each notebooks/NN_topic.py and its .ipynb hold the same cells (jupytext --diff exits 0 even
when they differ, so we compare the cell sources ourselves), and nbval's sanitizer hides no more
of their outputs than it must."""

import re
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


def test_sanitizer_hides_only_the_quick_runs_cpu_dependent_digits():
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((NOTEBOOKS / "nbval_sanitize.cfg").read_text())

    def sanitize(text):
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    # The quick run's scale on two CPUs compares equal; a change in its second decimal does not.
    for line in ["  latent scale: {} (1 / std of the latents)\n",
                 "latent scale, QUICK: {} | shipped: 0.4409\n"]:
        assert sanitize(line.format("0.7226")) == sanitize(line.format("0.7234"))
        assert sanitize(line.format("0.7226")) != sanitize(line.format("0.7326"))
    # The shipped model's scale, from its manifest, is compared in full.
    assert sanitize("latent scale: 0.4409\n") == "latent scale: 0.4409\n"
    assert "shipped: 0.4409" in sanitize("latent scale, QUICK: 0.7226 | shipped: 0.4409\n")
