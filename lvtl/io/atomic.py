"""Atomic file output: write a temporary sibling, then rename it over the target.

A reader (or a rerun after a crash) sees the old file or the new one, never half of one. The
temporary name keeps the target's suffixes, so writers that choose a format by file name
(NIfTI, PNG) still do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``, on an
    error it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{''.join(path.suffixes)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (with its times and mode)."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``final`` (which may exist): the old folder
    is moved aside first and removed only once the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
