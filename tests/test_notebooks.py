"""Every notebook executes top to bottom (quick mode: tiny-sim) and writes its figures."""

import time
from pathlib import Path

import pytest

pytest.importorskip("nbclient", reason="notebook execution needs nbclient (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="notebook execution needs ipykernel (pip install -e '.[dev]')")

from nightjar_rl.analysis.notebook import execute_notebook, png_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"quickstart": 3, "nightjar_study": 5, "anatomy": 5, "per_row_study": 4}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_executes_and_writes_figures(name, tmp_path):
    env = {"NIGHTJAR_NOTEBOOK_QUICK": "1", "NIGHTJAR_FIGURES_DIR": str(tmp_path / "figures"),
           "NIGHTJAR_RUNS_DIR": str(tmp_path / "runs"), "NIGHTJAR_STUDY_RUN": ""}
    start = time.perf_counter()
    nb = execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", env, timeout=120)
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert png_outputs(nb) >= FIGURES[name]
    pngs = sorted((tmp_path / "figures" / name).glob("*.png"))
    assert len(pngs) >= FIGURES[name] and all(p.stat().st_size > 2000 for p in pngs)
    assert elapsed < 60, f"{name}.ipynb took {elapsed:.0f} s in quick mode"


def test_committed_notebooks_have_outputs():
    import nbformat

    for name in FIGURES:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert png_outputs(nb) >= FIGURES[name], f"{name}.ipynb is committed without its figures"
