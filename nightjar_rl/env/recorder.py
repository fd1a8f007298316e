"""Atomic table writes (CSV or Parquet by file suffix) for episode logs and experiment results."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to `path` (.csv or .parquet) via a temporary file and an atomic rename."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"table path must end in .csv or .parquet, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def append_rows(path: str | Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Append `rows` to the table at `path` (created if missing), rewriting it atomically."""
    path = Path(path)
    table = pd.concat([read_table(path), rows], ignore_index=True) if path.exists() else rows
    write_table(table, path)
    return table
