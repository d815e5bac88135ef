"""Atomic file output: write a temporary sibling, then rename it over the target."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
