"""The case cache: one folder per preprocessed case, read back memory-mapped.

A cache folder holds ``image.npy`` (int16 HU, ``(t, z, y, x)``), ``label.npy`` (uint8, same
shape, zero at unlabelled phases), ``labelled.npy`` (bool, ``(t,)``) and ``meta.json``.
:func:`load_site_cases` gives a study or training run every usable case of a site, optionally
at a coarser grid (:func:`downsample`, a demo-scale study on a CPU).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lvtl.errors import ConfigError, PreprocessError
from lvtl.io.geometry import Geometry

log = logging.getLogger(__name__)

CACHE_SCHEMA = "lvtl.cache/1"


class NpyWriter:
    """Writes a ``.npy`` file one leading-axis slice at a time (flat memory, no memmap)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape, self.count = path, np.dtype(dtype), shape, 0
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                      "fortran_order": False, "shape": shape})

    def append(self, arr: np.ndarray) -> None:
        if arr.shape != self.shape[1:] or arr.dtype != self.dtype:
            raise ValueError(f"{self.path}: got {arr.dtype}{arr.shape}, expected "
                             f"{self.dtype}{self.shape[1:]}")
        self.fh.write(np.ascontiguousarray(arr).tobytes())
        self.count += 1

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()
        if exc[0] is None and self.count != self.shape[0]:
            raise PreprocessError(f"{self.path}: wrote {self.count} of {self.shape[0]} slices")


def cached(cache_dir: Path, key: str | None = None) -> bool:
    """True when ``cache_dir`` holds a complete cache (with ``key``, when given)."""
    meta = cache_dir / "meta.json"
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return m.get("schema") == CACHE_SCHEMA and (key is None or m.get("key") == key)


@dataclass
class CachedCase:
    """A preprocessed case read back from its cache (arrays memory-mapped)."""

    case_id: str
    image: np.ndarray  # (t, z, y, x) int16 HU
    label: np.ndarray  # (t, z, y, x) uint8
    labelled: np.ndarray  # (t,) bool
    geometry: Geometry
    meta: dict


def load_cached(cache_dir: str | Path) -> CachedCase:
    """Open a case cache written by :func:`preprocess_case`."""
    cache_dir = Path(cache_dir)
    if not cached(cache_dir):
        raise PreprocessError(f"{cache_dir}: not a complete lvtl cache")
    meta = json.loads((cache_dir / "meta.json").read_text())
    return CachedCase(
        case_id=meta["case_id"],
        image=np.load(cache_dir / "image.npy", mmap_mode="r"),
        label=np.load(cache_dir / "label.npy", mmap_mode="r"),
        labelled=np.load(cache_dir / "labelled.npy"),
        geometry=Geometry.from_dict(meta["geometry"]),
        meta=meta,
    )


def downsample(case, factor: int):
    """The case at ``factor`` times the cache's spacing (a demo-scale study on a CPU): image
    by block means, labels by taking every ``factor``-th voxel."""
    if factor == 1:
        return case

    img = np.asarray(case.image, np.float32)
    t, *shape = img.shape
    new = [n // factor for n in shape]
    img = img[:, :new[0] * factor, :new[1] * factor, :new[2] * factor]
    img = img.reshape(t, new[0], factor, new[1], factor, new[2], factor).mean(axis=(2, 4, 6))
    lab = np.asarray(case.label)[:, ::factor, ::factor, ::factor][:, :new[0], :new[1], :new[2]]
    return replace(case, image=np.round(img).astype(np.int16), label=np.ascontiguousarray(lab))


def load_site_cases(cache_root: str | Path, factor: int = 1):
    """Every complete cache under ``cache_root`` with a labelled phase (others are reported
    and left out), optionally downsampled; returns ``(cases, excluded)``."""
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        raise ConfigError(f"{cache_root}: no such cache folder")
    cases, skipped = [], {}
    for d in sorted(p for p in cache_root.iterdir() if p.is_dir()):
        if not cached(d):
            continue
        c = load_cached(d)
        if not bool(np.asarray(c.labelled).any()):
            skipped[c.case_id] = "no labelled phase"
            log.warning("%s: no labelled phase; excluded from the study", c.case_id)
            continue
        cases.append(downsample(c, factor))
    return cases, skipped
