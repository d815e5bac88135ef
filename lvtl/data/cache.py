"""The case cache: one folder per preprocessed case, read back memory-mapped.

A cache folder holds ``image.npy`` (int16 HU, ``(t, z, y, x)``), ``label.npy`` (uint8, same
shape, zero at unlabelled phases), ``labelled.npy`` (bool, ``(t,)``) and ``meta.json``.
:func:`load_site_cases` gives a study or training run every usable case of a site, optionally
at a coarser grid (:func:`downsample`, a demo-scale study on a CPU).

The coarse grid of :func:`downsample` at factor ``f``: along each axis of ``n`` cache voxels
it has ``n // f`` voxels, and coarse voxel ``i`` holds the label of cache voxel ``f * i``
(the same voxel centre; :func:`coarse_coordinates`), so the last ``n - f * (n // f - 1) - 1``
cache voxels lie beyond the last coarse centre. The coarse image is the mean of the block of
cache voxels ``f * i`` to ``f * i + f - 1`` (the remainder ``n % f`` is cut off), centred
``(f - 1) / 2`` cache voxels further on than the label it is trained against (half a voxel at
``f = 2``): a model trained on such cases predicts the labels at the label centres, and that
is where :func:`lvtl.model.infer.upsample_proba` places its output on the cache grid.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lvtl.errors import ConfigError, PreprocessError, first_line
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


#: The files of a cache folder.
CACHE_FILES = ("meta.json", "image.npy", "label.npy", "labelled.npy")
#: The problem :func:`cache_problem` names for an intact cache made with another key.
OTHER_KEY = "made from other inputs or settings"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | str:
    """Shape and dtype of a ``.npy`` file from its header (the data is not read), or what is
    wrong with it: missing, unreadable, Fortran order or shorter than its header says."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                return f"{path.name}: unsupported .npy version {version}"
            shape, fortran, dtype = reader(fh)
            offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return f"{path.name} missing"
    except (OSError, ValueError) as e:  # numpy raises ValueError on a damaged header
        return f"{path.name}: unreadable .npy header ({first_line(e)})"
    if fortran:
        return f"{path.name}: Fortran order"
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        return f"{path.name} truncated ({size} of {need} bytes)"
    return tuple(int(n) for n in shape), dtype


def cache_problem(cache_dir: Path, key: str | None = None) -> str | None:
    """What is wrong with the cache in ``cache_dir`` (None when it is complete, and made with
    ``key`` when given): ``meta.json`` is read, and each array's shape and dtype from its
    ``.npy`` header are checked against it and the file sizes; the arrays are not read."""
    cache_dir = Path(cache_dir)
    try:
        m = json.loads((cache_dir / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json missing"
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({first_line(e)})"
    if not isinstance(m, dict) or m.get("schema") != CACHE_SCHEMA:
        found = m.get("schema") if isinstance(m, dict) else None
        return f"cache schema {found!r}, expected {CACHE_SCHEMA!r}"
    try:
        grid = tuple(int(n) for n in m["geometry"]["shape"])
        n_phases = m.get("n_phases")
        n_phases = None if n_phases is None else int(n_phases)
    except (KeyError, TypeError, ValueError):
        return "meta.json: no valid geometry"
    if len(grid) != 3:
        return "meta.json: no valid geometry"
    headers = {}
    for name in ("image.npy", "label.npy", "labelled.npy"):
        h = _npy_header(cache_dir / name)
        if isinstance(h, str):
            return h
        headers[name] = h
    t = headers["image.npy"][0][0] if n_phases is None and headers["image.npy"][0] else n_phases
    expected = {"image.npy": ((t, *grid), np.dtype(np.int16)),
                "label.npy": ((t, *grid), np.dtype(np.uint8)),
                "labelled.npy": ((t,), np.dtype(bool))}
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = headers[name]
        if got_shape != shape or got_dtype != dtype:
            return (f"{name} holds {got_dtype} {list(got_shape)}, meta.json says "
                    f"{dtype} {list(shape)}")
    if "labelled_phases" in m:
        try:
            labelled = np.load(cache_dir / "labelled.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            return f"labelled.npy unreadable ({first_line(e)})"
        if np.flatnonzero(labelled).tolist() != list(m["labelled_phases"]):
            return "labelled.npy disagrees with meta.json's labelled phases"
    if key is not None and m.get("key") != key:
        return OTHER_KEY
    return None


def cached(cache_dir: Path, key: str | None = None) -> bool:
    """True when ``cache_dir`` holds a complete cache (with ``key``, when given): see
    :func:`cache_problem`."""
    return cache_problem(cache_dir, key) is None


@dataclass
class CachedCase:
    """A preprocessed case read back from its cache (arrays memory-mapped)."""

    case_id: str
    image: np.ndarray  # (t, z, y, x) int16 HU
    label: np.ndarray  # (t, z, y, x) uint8
    labelled: np.ndarray  # (t,) bool
    geometry: Geometry  # of the cache grid (a downsampled case keeps it)
    meta: dict
    factor: int = 1  # the arrays are at this multiple of the cache grid (:func:`downsample`)
    native_label: np.ndarray | None = None  # the cache grid's labels when ``factor`` > 1
    _foreground: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def foreground(self, t: int) -> np.ndarray:
        """The ``(z, y, x)`` indices of phase ``t``'s labelled voxels, in ``np.argwhere``'s
        order; found once per phase (a training crop centred on the foreground needs them, and
        a full-volume scan per crop took most of the crop's time)."""
        if t not in self._foreground:
            self._foreground[t] = np.argwhere(self.label[t] > 0)
        return self._foreground[t]


def load_cached(cache_dir: str | Path) -> CachedCase:
    """Open a case cache written by :func:`preprocess_case`."""
    cache_dir = Path(cache_dir)
    opened = _open(cache_dir)
    if isinstance(opened, str):
        raise PreprocessError(f"{cache_dir}: not a complete lvtl cache ({opened}); run "
                              "lvtl preprocess again")
    return opened


def _open(cache_dir: Path) -> CachedCase | str:
    """The case in ``cache_dir``, checked once (:func:`cache_problem`), or what is wrong."""
    problem = cache_problem(cache_dir)
    if problem is not None:
        return problem
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        return CachedCase(
            case_id=meta["case_id"],
            image=np.load(cache_dir / "image.npy", mmap_mode="r"),
            label=np.load(cache_dir / "label.npy", mmap_mode="r"),
            labelled=np.load(cache_dir / "labelled.npy"),
            geometry=Geometry.from_dict(meta["geometry"]),
            meta=meta,
        )
    except (OSError, ValueError, KeyError) as e:  # changed since the check
        return first_line(e)


def coarse_coordinates(n: int, factor: int) -> np.ndarray:
    """Where the centres of ``n`` cache voxels along one axis lie on the grid of
    :func:`downsample` at ``factor``, in coarse voxel units: ``j / factor`` for cache voxel
    ``j`` (coarse voxel ``i`` is cache voxel ``factor * i``). Values above ``n // factor - 1``
    lie beyond the last coarse voxel."""
    return np.arange(int(n), dtype=np.float64) / int(factor)


def downsample(case, factor: int):
    """The case at ``factor`` times the cache's spacing (a demo-scale study on a CPU): image
    by block means, labels by taking every ``factor``-th voxel (the grids: see the module's
    notes). The case keeps its cache-grid ``geometry`` and records ``factor`` and the cache
    grid's labels (``native_label``, not copied) for an evaluation on the cache grid."""
    if factor == 1:
        return case

    img = np.asarray(case.image, np.float32)
    t, *shape = img.shape
    new = [n // factor for n in shape]
    img = img[:, :new[0] * factor, :new[1] * factor, :new[2] * factor]
    img = img.reshape(t, new[0], factor, new[1], factor, new[2], factor).mean(axis=(2, 4, 6))
    lab = np.asarray(case.label)[:, ::factor, ::factor, ::factor][:, :new[0], :new[1], :new[2]]
    return replace(case, image=np.round(img).astype(np.int16), label=np.ascontiguousarray(lab),
                   factor=factor, native_label=case.label)


def load_site_cases(cache_root: str | Path, factor: int = 1):
    """Every complete cache under ``cache_root`` with a labelled phase, optionally downsampled;
    returns ``(cases, excluded)``. A damaged cache (see :func:`cache_problem`) or one without
    a labelled phase is left out with a warning and named in ``excluded`` (case -> why);
    hidden folders (a run's temporaries) and folders holding no cache file are passed over."""
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        raise ConfigError(f"{cache_root}: no such cache folder")
    cases, skipped = [], {}
    for d in sorted(cache_root.iterdir()):
        if d.name.startswith("."):
            continue
        try:
            if not d.is_dir() or not any((d / f).exists() for f in CACHE_FILES):
                continue
        except OSError:
            pass  # an unreadable entry: cache_problem says what is wrong
        c = _open(d)
        if isinstance(c, str):
            skipped[d.name] = f"damaged cache: {c}"
            log.warning("%s: damaged cache (%s); excluded, run lvtl preprocess again",
                        d.name, c)
            continue
        if not bool(np.asarray(c.labelled).any()):
            skipped[c.case_id] = "no labelled phase"
            log.warning("%s: no labelled phase; excluded from the study", c.case_id)
            continue
        cases.append(downsample(c, factor))
    return cases, skipped
