"""Helpers the notebooks call: which configuration to run, where figures go, how they are shown.

Environment variables (the test suite sets them; a reader running a notebook needs none):

    NIGHTJAR_NOTEBOOK_QUICK=1   run the tiny configuration (tiny-sim, a few cells: CI speed)
    NIGHTJAR_FIGURES_DIR=DIR    write each figure as DIR/<notebook>/<name>.png (default: runs/figures)
    NIGHTJAR_RUNS_DIR=DIR       parent folder of the runs a notebook starts (default: runs)

Default folders resolve against the working directory (a notebook's is its own folder), never the
installed package's checkout; configs are read from the package's checkout (`repo_path`).
    NIGHTJAR_STUDY_RUN=DIR      nightjar_study.ipynb: plot this finished run folder instead of running
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[2]


def quick_mode() -> bool:
    """True when NIGHTJAR_NOTEBOOK_QUICK asks for the tiny configuration."""
    return os.environ.get("NIGHTJAR_NOTEBOOK_QUICK", "").strip().lower() in ("1", "true", "yes")


def repo_path(relative: str) -> Path:
    """A path inside the repository (notebooks run with notebooks/ as their working directory)."""
    return REPO / relative


def runs_dir() -> Path:
    """Where a notebook's runs go: $NIGHTJAR_RUNS_DIR, else runs/ under the working directory."""
    return Path(os.environ.get("NIGHTJAR_RUNS_DIR") or Path.cwd() / "runs")


def figures_dir(notebook: str) -> Path:
    """Where a notebook's figures go (created): $NIGHTJAR_FIGURES_DIR/NOTEBOOK, else runs/figures/NOTEBOOK
    under the working directory."""
    path = Path(os.environ.get("NIGHTJAR_FIGURES_DIR") or Path.cwd() / "runs" / "figures") / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def show(fig: Figure, name: str, notebook: str = "notebook", dpi: int = 80):
    """Save `fig` as a small PNG under figures_dir(notebook), close it, and return it as an
    IPython image (the notebook displays it; the PNG is embedded in the saved notebook)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    (figures_dir(notebook) / f"{name}.png").write_bytes(data)
    return Image(data=data, format="png")


def execute_notebook(path: str | Path, env: dict[str, str] | None = None, timeout: int = 600, save: bool = False):
    """Run a notebook top to bottom in a fresh `python3` kernel (working directory: its folder) with
    `env` added to the environment and this checkout first on the kernel's PYTHONPATH. Returns the
    executed notebook; `save` writes it back in place (outputs included). Needs nbclient/ipykernel."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env or {})
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old.get("PYTHONPATH")) if p)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    if save:
        nbformat.write(nb, path)
    return nb


def png_outputs(nb) -> int:
    """How many PNG images a notebook's outputs hold."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))
