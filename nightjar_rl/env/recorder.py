"""Atomic table writes (CSV or Parquet by file suffix) for episode logs and experiment results."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

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


def append_rows(path: str | Path, rows: pd.DataFrame, replace: dict | None = None) -> pd.DataFrame:
    """Append `rows` to the table at `path` (created if missing), rewriting it atomically. With
    `replace` ({column: value}), existing rows matching it are dropped first: appending a unit of
    work again (after an interrupt between its append and its completion) never duplicates it."""
    path = Path(path)
    table = read_table(path) if path.exists() else None
    if table is not None and replace:
        stale = pd.Series(True, index=table.index)
        for column, value in replace.items():
            stale &= table[column] == value if column in table else False
        table = table[~stale]
    table = pd.concat([table, rows], ignore_index=True) if table is not None else rows
    write_table(table, path)
    return table


class TableAppender:
    """Appends rows to tables in batches: each table is rewritten (atomically, by `append_rows`) at most
    once every `every_s` seconds and once on close, also after an error or an interrupt. Appending
    every row as it comes rewrites a growing file each time (quadratic in the run's length).

    Tables are flushed in the order they were first given rows, so a table fed first (a cell's
    details) is never behind one fed after it (the record of finished cells a resume trusts)."""

    def __init__(self, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self._pending: dict[Path, list[pd.DataFrame]] = {}
        self._last = clock()

    def add(self, path: str | Path, rows: pd.DataFrame) -> None:
        self._pending.setdefault(Path(path), []).append(rows)
        if self.clock() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        for path, parts in self._pending.items():
            rows = [p for p in parts if not p.empty] or parts[:1]
            append_rows(path, pd.concat(rows, ignore_index=True) if len(rows) > 1 else rows[0])
        self._pending.clear()
        self._last = self.clock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
