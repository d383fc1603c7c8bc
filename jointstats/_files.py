"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The lowest layer (standard library only), so every package can use it."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


def _temp_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique per process and call (same folder: rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp_name(name: str) -> bool:
    """True for a temporary file this module makes (a writer that died may leave one)."""
    return name.startswith(".") and name.endswith(".tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (pandas, SQLite,
    Arrow); renamed over ``path`` when the block ends, removed if it raises. The file is created
    by the writer, with the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, *, mode: int | None = None,
                 fsync: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename.

    ``mode``: the new file's permissions exactly (umask aside), e.g. 0o600 for a key; default
    the usual ones. ``fsync``: the data is on disk before the rename (off for caches)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
