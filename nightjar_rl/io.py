"""Atomic file writes: results are either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def process_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success fsync it and rename it over `path`. The file
    keeps the mode a plain `open` would leave: an existing file's own, else 0666 less the umask (not the
    temp file's private 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~process_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            try:
                os.fchmod(fh.fileno(), mode)
            except OSError:  # a filesystem without modes (some network or FUSE mounts): keep the write
                pass
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


def read_yaml(path: Path, what: str, error: type[Exception] = ValueError):
    """Parse a YAML file (safe_load: no tags, no code), raising `error` with one line that says where a
    malformed file goes wrong."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not valid UTF-8 (byte {exc.start + 1})") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{what} {path}: not valid YAML ({problem}{where})") from None


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


# ---- signed manifests: files this user's nightjar-rl wrote, checked before they are loaded ----------------
KEY_ENV = "NIGHTJAR_RL_KEY_FILE"


def local_key() -> bytes:
    """This user's secret signing key, created on first use (mode 0600): the file named by
    $NIGHTJAR_RL_KEY_FILE, else $XDG_CONFIG_HOME/nightjar-rl/signing.key (~/.config by default)."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = Path(os.environ.get(KEY_ENV) or config / "nightjar-rl" / "signing.key")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_hex(32))
            os.link(tmp, path)  # atomic, and never over a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    return bytes.fromhex(path.read_text(encoding="utf-8").strip())


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(files: dict[str, str]) -> str:
    return hmac.new(local_key(), json.dumps(files, sort_keys=True).encode(), "sha256").hexdigest()


def signed_manifest(files: dict[str, str | Path]) -> dict:
    """A manifest of `files` ({name in the folder: where the content is now}): each file's sha256,
    signed with this user's key (`local_key`)."""
    hashes = {name: file_sha256(path) for name, path in files.items()}
    return {"files": hashes, "hmac": _signature(hashes)}


def check_signed_manifest(manifest_path: str | Path) -> list[Path]:
    """The files a manifest written by `signed_manifest` names (beside it), once its signature and
    every hash check out; ValueError in one line otherwise (unsigned, another key, a changed file)."""
    manifest_path = Path(manifest_path)
    data = read_json(manifest_path, "manifest")
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not isinstance(data.get("hmac"), str):
        raise ValueError(f"{manifest_path}: not a signed manifest")
    if not hmac.compare_digest(data["hmac"], _signature(files)):
        raise ValueError(f"{manifest_path}: not signed with this user's key (written elsewhere or edited)")
    paths = []
    for name, sha in files.items():
        path = manifest_path.parent / name
        if Path(name).name != name:
            raise ValueError(f"{manifest_path}: names a file outside its folder: {name!r}")
        if not path.is_file() or file_sha256(path) != sha:
            raise ValueError(f"{path}: missing or changed since it was written (sha256 differs from "
                             f"{manifest_path.name})")
        paths.append(path)
    return paths
