"""Atomic file writes: results are either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_writer(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, fsync, then rename over it."""
    with atomic_writer(path) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed object) for each non-blank line; a bad line (not UTF-8, not JSON)
    raises `error` naming the file and the line."""
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def read_json(path: str | Path, what: str, error: type[Exception] = ValueError):
    """Parse a JSON file, raising `error` with one clear line when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid UTF-8 (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def check_writable(path: str | Path, what: str, folder: bool = False) -> None:
    """ValueError (one line naming `what`) unless `path` can be written as a file (or, with `folder`,
    created or filled as a folder): checked before any work starts, so nothing is lost at the end."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{what} {str(path)!r} is {'a file' if folder else 'a folder'}; "
                         f"expected {'a folder' if folder else 'a file path'}")
    base = path if folder and path.exists() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be created: {str(base)!r} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be written: {str(base)!r} is not writable")

