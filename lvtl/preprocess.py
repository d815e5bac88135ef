"""Preprocessing: label repair, relabelling, resampling to 1 mm and the cached 4D image-label pair.

Kernels (:func:`repair_labels`, :func:`relabel`, :func:`resample`) are pure functions on arrays.
:func:`preprocess_case` streams one case from DICOM to its cache phase by phase; the cache is a
folder per case holding ``image.npy`` (int16 HU, ``(t, z, y, x)``), ``label.npy`` (uint8, same
shape, zero at unlabelled phases), ``labelled.npy`` (bool, ``(t,)``) and ``meta.json``. It is
written under a temporary name and renamed into place, and reused while its inputs and settings
are unchanged.

The cache grid is aligned with the patient axes: array axis z runs inferior to superior, y
anterior to posterior and x right to left (LPS), whatever the scanner's orientation, so data from
head-first and feet-first patients look alike to a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lvtl.dicom import SeriesIndex, scan_series
from lvtl.errors import ConfigError, LabelError, LvtlError, PreprocessError
from lvtl.geometry import Geometry
from lvtl.nifti import read_volume
from lvtl.parallel import map_cases

log = logging.getLogger(__name__)

CACHE_SCHEMA = "lvtl.cache/1"
BLOOD_POOL, MYOCARDIUM = 1, 2
LABEL_FILE = re.compile(r"^phase_(\d+)\.nii(\.gz)?$")
# The canonical cache orientation: axis z -> +S, y -> +P, x -> +L (rows of a direction matrix).
CANONICAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
AIR_HU = -1024.0


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of preprocessing; part of the cache key."""

    spacing_mm: float = 1.0
    repair_radius: int = 5
    repair_mode: str = "2d"
    label_interp: str = "onehot"
    blood_pool_value: int = 1
    myocardium_value: int = 2

    def __post_init__(self) -> None:
        if not 0.1 <= self.spacing_mm <= 10.0:
            raise ConfigError(f"spacing must be between 0.1 and 10 mm, got {self.spacing_mm}")
        if not 0 <= self.repair_radius <= 50:
            raise ConfigError(f"repair radius must be 0 to 50 pixels, got {self.repair_radius}")
        _choose("repair mode", self.repair_mode, ("2d", "3d"))
        _choose("label interpolation", self.label_interp, ("onehot", "nearest"))
        if self.blood_pool_value == self.myocardium_value or 0 in (self.blood_pool_value,
                                                                    self.myocardium_value):
            raise ConfigError("blood pool and myocardium values must differ and be non-zero")

    def to_dict(self) -> dict:
        return asdict(self)


def _choose(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        close = [a for a in allowed if a[0] == value[:1]]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {what} {value!r}{hint}; choose one of: {', '.join(allowed)}")
    return value


# --------------------------------------------------------------------------- label kernels
def relabel(labels: np.ndarray, blood_pool_value: int = 1, myocardium_value: int = 2,
            source: str = "labels") -> np.ndarray:
    """Map input label values to 0 background, 1 blood pool, 2 myocardium (uint8).

    Any other value raises :class:`LabelError` naming ``source`` and the values found.
    """
    if labels.dtype == np.uint8:  # the common case: a histogram is much faster than unique
        # slice by slice: bincount converts to int64, eight times the memory of the volume
        counts = np.zeros(256, np.int64)
        for part in labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else [labels]:
            counts += np.bincount(part, minlength=256)
        values = np.flatnonzero(counts)
    else:
        values = np.unique(labels)
    allowed = {0, blood_pool_value, myocardium_value}
    unexpected = [v for v in values.tolist() if v not in allowed]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:5])
        raise LabelError(f"{source}: unexpected label values {shown} "
                         f"(expected {sorted(allowed)})")
    out = np.zeros(labels.shape, np.uint8)
    out[labels == blood_pool_value] = BLOOD_POOL
    out[labels == myocardium_value] = MYOCARDIUM
    return out


def _disk(radius: int, mode: str) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    if mode == "2d":
        yy, xx = np.meshgrid(r, r, indexing="ij")
        return (yy**2 + xx**2 <= radius**2)[None]
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius**2


def _per_slice(fn: Callable[[np.ndarray], np.ndarray], mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "3d":
        return fn(mask)
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = fn(mask[k]) if mask[k].any() else mask[k]
    return out


def repair_labels(labels: np.ndarray, radius: int = 5, mode: str = "2d") -> np.ndarray:
    """Repair flood-filled masks: close holes in the blood pool and gaps to the myocardium.

    Closing (dilation then erosion) by a disc of ``radius`` pixels in each slice (``mode='2d'``,
    as the contours were drawn) or a ball in voxels (``'3d'``), then filling enclosed holes.
    Labelled voxels keep their label. Unlabelled voxels inside the closed foreground become blood
    pool where the closed blood pool covers them, otherwise take the label of the nearest
    labelled voxel. Input and output use 0/1/2.
    """
    if radius <= 0:
        return labels.copy()
    _choose("repair mode", mode, ("2d", "3d"))
    se = _disk(radius, mode)
    pad = [(0, 0)] + [(radius, radius)] * 2 if mode == "2d" else [(radius, radius)] * 3
    blood = labels == BLOOD_POOL
    fg = blood | (labels == MYOCARDIUM)
    if not fg.any():
        return labels.copy()

    def close(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, pad)  # so the erosion does not eat objects at the border
        closed = ndimage.binary_closing(padded, se)
        return closed[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))]

    fill = ndimage.binary_fill_holes
    fg_c = _per_slice(fill, close(fg), mode)
    blood_c = _per_slice(fill, close(blood), mode) & fg_c
    out = labels.copy()
    gap = fg_c & ~fg
    out[gap & blood_c] = BLOOD_POOL
    rest = gap & ~blood_c
    if rest.any():
        if mode == "2d":
            for k in np.nonzero(rest.any(axis=(1, 2)))[0]:
                _nearest_fill(out[k], rest[k])
        else:
            _nearest_fill(out, rest)
    return out


def _nearest_fill(out: np.ndarray, where: np.ndarray) -> None:
    """Give the voxels ``where`` the label of their nearest labelled voxel (in place)."""
    labelled = out > 0
    labelled &= ~where
    if not labelled.any():
        return
    _, idx = ndimage.distance_transform_edt(~labelled, return_indices=True)
    out[where] = out[tuple(i[where] for i in idx)]


# --------------------------------------------------------------------------- resampling
def canonical_grid(src: Geometry, spacing_mm: float = 1.0) -> Geometry:
    """A patient-aligned grid of isotropic ``spacing_mm`` covering the source's extent."""
    corners = src.corners_lps()
    proj = corners @ CANONICAL.T  # coordinates along S, P, L for axes z, y, x
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    shape = np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1
    origin = CANONICAL.T @ lo
    return Geometry.make(shape, (spacing_mm,) * 3, origin, CANONICAL)


def _axis_map(src: Geometry, dst: Geometry) -> list[tuple[int, float, float]] | None:
    """If the grids' axes are parallel, for each destination axis: the source axis, and the
    source index as ``offset + step * i``. None for an oblique source."""
    ds, dd = src.direction_matrix, dst.direction_matrix
    out = []
    rel = np.asarray(dst.origin) - np.asarray(src.origin)
    for a in range(3):
        dots = ds @ dd[a]
        b = int(np.argmax(np.abs(dots)))
        if abs(abs(dots[b]) - 1.0) > 1e-5:
            return None
        sign = float(np.sign(dots[b]))
        offset = float(rel @ ds[b]) / src.spacing[b]
        step = sign * dst.spacing[a] / src.spacing[b]
        out.append((b, offset, step))
    if sorted(m[0] for m in out) != [0, 1, 2]:
        return None
    return out


def _interp_axis(arr: np.ndarray, axis: int, coords: np.ndarray, fill: float,
                 order: int) -> np.ndarray:
    """Interpolate ``arr`` along ``axis`` at fractional indices ``coords`` (linear or nearest).
    Positions more than half a voxel outside the array get ``fill``."""
    n = arr.shape[axis]
    outside = (coords < -0.5) | (coords > n - 0.5)
    if order == 0:
        idx = np.clip(np.rint(coords).astype(np.intp), 0, n - 1)
        out = np.take(arr, idx, axis=axis)
    else:
        c = np.clip(coords, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
        w = (c - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, n - 1)
        shape = [1] * arr.ndim
        shape[axis] = len(coords)
        w = w.reshape(shape)
        lo = np.take(arr, i0, axis=axis)
        out = np.take(arr, i1, axis=axis)
        out -= lo  # in place: one temporary of the output's size, not three
        out *= w
        out += lo
        del lo
    if outside.any():
        sl = [slice(None)] * arr.ndim
        sl[axis] = outside
        out[tuple(sl)] = fill
    return out


def resample(arr: np.ndarray, src: Geometry, dst: Geometry, *, order: int = 1,
             fill: float = AIR_HU) -> np.ndarray:
    """Resample a ``(z, y, x)`` (or ``(c, z, y, x)``) array from ``src`` to ``dst`` geometry.

    ``order`` 1 is linear, 0 nearest. When the axes are parallel (any flips and permutations)
    it runs as three separable 1D passes; an oblique source uses ``scipy.ndimage`` with the full
    affine. Points outside the source get ``fill``.
    """
    if arr.shape[-3:] != src.shape:
        raise ValueError(f"array shape {arr.shape} does not match geometry {src.shape}")
    lead = arr.ndim - 3
    amap = _axis_map(src, dst)
    if amap is None:
        return _resample_affine(arr, src, dst, order, fill)
    # Bring source axes into destination order, then interpolate axis by axis, starting with
    # the axis that shrinks most.
    perm = list(range(lead)) + [lead + m[0] for m in amap]
    work = arr.transpose(perm)
    if order == 1 and work.dtype != np.float32:
        work = work.astype(np.float32)
    sizes = [dst.shape[a] / src.shape[amap[a][0]] for a in range(3)]
    for a in sorted(range(3), key=lambda a: sizes[a]):
        _, offset, step = amap[a]
        coords = offset + step * np.arange(dst.shape[a])
        work = _interp_axis(work, lead + a, coords, fill, order)
    return np.ascontiguousarray(work)


def resample_phase(index: SeriesIndex, t: int, dst: Geometry, fill: float = AIR_HU
                   ) -> np.ndarray:
    """Phase ``t`` of a series resampled (linear) to ``dst``, read slice by slice.

    With axes parallel to ``dst`` each slice is resampled in-plane as it is read and only the
    in-plane-resampled stack is kept, so memory stays far below one full-resolution phase.
    An oblique series is read whole and resampled with the full affine.
    """
    src = index.geometry
    amap = _axis_map(src, dst)
    if amap is None:
        return resample(index.read_phase(t), src, dst, order=1, fill=fill)
    feeds = {m[0]: a for a, m in enumerate(amap)}  # source axis -> destination axis
    axes = [feeds[0], feeds[1], feeds[2]]
    coords = [amap[a][1] + amap[a][2] * np.arange(dst.shape[a]) for a in axes]
    stack = np.empty((src.shape[0], dst.shape[axes[1]], dst.shape[axes[2]]), np.float32)
    first = 0 if dst.shape[axes[1]] / src.shape[1] <= dst.shape[axes[2]] / src.shape[2] else 1
    for k, sl in enumerate(index.iter_slices(t)):
        for ax in (first, 1 - first):
            sl = _interp_axis(sl, ax, coords[1 + ax], fill, 1)
        stack[k] = sl
    out = _interp_axis(stack, 0, coords[0], fill, 1)
    return np.ascontiguousarray(out.transpose(np.argsort(axes)))


def _resample_affine(arr: np.ndarray, src: Geometry, dst: Geometry, order: int,
                     fill: float) -> np.ndarray:
    m = src.lps_to_index() @ dst.index_to_lps()
    if arr.ndim == 3:
        return ndimage.affine_transform(arr.astype(np.float32, copy=False), m[:3, :3], m[:3, 3],
                                        output_shape=dst.shape, order=order, cval=fill)
    return np.stack([_resample_affine(a, src, dst, order, fill) for a in arr])


def resample_labels(labels: np.ndarray, src: Geometry, dst: Geometry,
                    mode: str = "onehot") -> np.ndarray:
    """Resample a 0/1/2 label map: nearest neighbour, or linear on the one-hot channels then
    arg-max (``'onehot'``, smoother boundaries)."""
    _choose("label interpolation", mode, ("onehot", "nearest"))
    if mode == "nearest":
        return resample(labels, src, dst, order=0, fill=0).astype(np.uint8)
    onehot = np.stack([labels == k for k in (0, 1, 2)]).astype(np.float32)
    probs = resample(onehot, src, dst, order=1, fill=0.0)
    probs[0] = np.where(probs.sum(axis=0) == 0, 1.0, probs[0])
    return np.argmax(probs, axis=0).astype(np.uint8)


# --------------------------------------------------------------------------- cases
@dataclass
class CaseResult:
    """Outcome of preprocessing one case."""

    case_id: str
    status: str  # "written", "cached" or "failed"
    reason: str = ""
    cache: str = ""
    seconds: float = 0.0
    labelled: list[int] = field(default_factory=list)


def find_cases(root: str | Path) -> list[Path]:
    """Case folders under ``root``: each holds a ``dicom/`` folder. ``root`` itself counts."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")
    if (root / "dicom").is_dir():
        return [root]
    cases = sorted(p for p in root.iterdir() if p.is_dir() and (p / "dicom").is_dir())
    if not cases:
        raise ConfigError(f"{root}: no case folders (folders holding a dicom/ folder)")
    return cases


def iter_labels(case_dir: Path, index: SeriesIndex, config: PreprocessConfig):
    """Yield ``(phase, labels)`` for each label file of a case, checked and relabelled to
    0/1/2 on the image geometry, one at a time."""
    folder = case_dir / "labels"
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        m = LABEL_FILE.match(path.name)
        if not m:
            if not path.name.startswith("."):
                log.warning("%s: not a label file name (phase_NN.nii.gz), skipped", path)
            continue
        name = f"{case_dir.name}/labels/{path.name}"
        phase = int(m.group(1))
        if phase >= index.n_phases:
            raise LabelError(f"{name}: phase {phase} but the series has {index.n_phases} "
                             f"phases (0 to {index.n_phases - 1})")
        arr, geom = read_volume(path)
        if arr.dtype.kind == "f":
            if not np.array_equal(arr, np.rint(arr)):
                raise LabelError(f"{name}: label values are not integers")
            arr = arr.astype(np.int64)
        diffs = index.geometry.differences(geom, tol_mm=0.01, tol_dir=1e-3)
        if diffs:
            raise LabelError(f"{name}: geometry does not match the image series "
                             f"({'; '.join(diffs)})")
        lab = relabel(arr, config.blood_pool_value, config.myocardium_value, source=name)
        missing = [n for n, v in (("blood pool", BLOOD_POOL), ("myocardium", MYOCARDIUM))
                   if not (lab == v).any()]
        if missing:
            raise LabelError(f"{name}: empty label, no {' and no '.join(missing)} "
                             f"in a labelled phase")
        yield phase, lab


def load_labels(case_dir: Path, index: SeriesIndex, config: PreprocessConfig
                ) -> dict[int, np.ndarray]:
    """Checked label maps (0/1/2, image geometry) of the labelled phases of a case."""
    return dict(iter_labels(case_dir, index, config))


def _label_box(lab: np.ndarray, config: PreprocessConfig) -> tuple[slice, ...]:
    """The labels' bounding box with room for the repair's closing."""
    r = config.repair_radius + 2
    margin = (r if config.repair_mode == "3d" else 2, r, r)
    nz = [np.flatnonzero(lab.any(axis=tuple(j for j in range(3) if j != a))) for a in range(3)]
    return tuple(slice(max(int(i[0]) - m, 0), min(int(i[-1]) + m + 1, n))
                 for i, m, n in zip(nz, margin, lab.shape, strict=True))


def _dst_box(sub: Geometry, dst: Geometry) -> tuple[slice, ...]:
    """The part of ``dst`` that the source box ``sub`` covers."""
    idx = (dst.lps_to_index() @ np.c_[sub.corners_lps(), np.ones(8)].T)[:3]
    lo = np.maximum(np.floor(idx.min(axis=1) - 1).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=1) + 1).astype(int) + 1, dst.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


class _NpyWriter:
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

    def __enter__(self) -> _NpyWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()
        if exc[0] is None and self.count != self.shape[0]:
            raise PreprocessError(f"{self.path}: wrote {self.count} of {self.shape[0]} slices")


def _fingerprint(case_dir: Path, config: PreprocessConfig) -> str:
    h = hashlib.sha256()
    h.update(CACHE_SCHEMA.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for sub in ("dicom", "labels"):
        folder = case_dir / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(case_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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


def preprocess_case(case_dir: str | Path, out_root: str | Path,
                    config: PreprocessConfig | None = None, *, force: bool = False) -> CaseResult:
    """DICOM and labels of one case to its cached 1 mm 4D pair under ``out_root/<case>``."""
    config = config or PreprocessConfig()
    case_dir, out_root = Path(case_dir), Path(out_root)
    t0 = time.perf_counter()
    case_id = case_dir.name
    final = out_root / case_id
    key = _fingerprint(case_dir, config)
    if not force and cached(final, key):
        meta = json.loads((final / "meta.json").read_text())
        return CaseResult(case_id, "cached", cache=str(final), labelled=meta["labelled_phases"])
    index = scan_series(case_dir / "dicom")
    # Labels first (fail fast on a bad file), kept only as crops around the heart.
    crops: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
    for t, lab_t in iter_labels(case_dir, index, config):
        box = _label_box(lab_t, config)
        crops[t] = (box, lab_t[box].copy())
        del lab_t
    if not crops:
        log.warning("%s: no labels; the cache holds images only", case_id)
    dst = canonical_grid(index.geometry, config.spacing_mm)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{case_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        shape4 = (index.n_phases, *dst.shape)
        volumes: dict[int, dict] = {}
        with (_NpyWriter(tmp / "image.npy", np.int16, shape4) as img,
              _NpyWriter(tmp / "label.npy", np.uint8, shape4) as lab):
            hu_min, hu_max = _write_phases(index, dst, crops, config, img, lab, volumes)
        labelled = np.zeros(index.n_phases, bool)
        labelled[list(volumes)] = True
        np.save(tmp / "labelled.npy", labelled)
        ed = max(volumes, key=lambda t: volumes[t]["blood_pool_ml"]) if volumes else None
        es = min(volumes, key=lambda t: volumes[t]["blood_pool_ml"]) if volumes else None
        meta = {
            "schema": CACHE_SCHEMA,
            "case_id": case_id,
            "key": key,
            "config": config.to_dict(),
            "geometry": dst.to_dict(),
            "source_geometry": index.geometry.to_dict(),
            "source_orientation": index.geometry.axis_codes(),
            "series_uid": index.series_uid,
            "phase_tag": index.phase_tag,
            "phase_keys": index.phase_keys,
            "n_phases": index.n_phases,
            "labelled_phases": sorted(volumes),
            "ed_phase": ed,
            "es_phase": es,
            "volumes": {str(k): v for k, v in sorted(volumes.items())},
            "hu_range": [hu_min, hu_max],
            "skipped_files": index.skipped,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CaseResult(case_id, "written", cache=str(final), labelled=sorted(volumes),
                      seconds=time.perf_counter() - t0)


def _write_phases(index: SeriesIndex, dst: Geometry, crops: dict, config: PreprocessConfig,
                  img: _NpyWriter, lab: _NpyWriter, volumes: dict) -> tuple[float, float]:
    """Stream every phase: resample the image, repair and resample its labels, append both.
    Fills ``volumes`` per labelled phase; returns the HU range of the resampled images."""
    vox_ml = config.spacing_mm**3 / 1000.0
    hu_min, hu_max = np.inf, -np.inf
    for t in range(index.n_phases):
        res = resample_phase(index, t, dst, fill=AIR_HU)
        hu_min, hu_max = min(hu_min, float(res.min())), max(hu_max, float(res.max()))
        np.rint(res, out=res)
        np.clip(res, -32768, 32767, out=res)
        img.append(res.astype(np.int16))
        del res
        out_t = np.zeros(dst.shape, np.uint8)
        if t in crops:
            box, sub = crops.pop(t)
            sub_geom = index.geometry.crop(box)
            repaired = repair_labels(sub, config.repair_radius, config.repair_mode)
            dbox = _dst_box(sub_geom, dst)
            out_t[dbox] = resample_labels(repaired, sub_geom, dst.crop(dbox),
                                          config.label_interp)
            volumes[t] = {"blood_pool_ml": float((out_t == BLOOD_POOL).sum() * vox_ml),
                          "myocardium_ml": float((out_t == MYOCARDIUM).sum() * vox_ml)}
        lab.append(out_t)
    return hu_min, hu_max


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def _run_case(args: tuple) -> CaseResult:
    case_dir, out_root, config, force = args
    try:
        return preprocess_case(case_dir, out_root, config, force=force)
    except LvtlError as e:
        return CaseResult(Path(case_dir).name, "failed", reason=str(e))
    except Exception as e:  # one bad case must not stop the others
        log.debug("case %s failed", case_dir, exc_info=True)
        return CaseResult(Path(case_dir).name, "failed",
                          reason=f"{Path(case_dir).name}: {type(e).__name__}: {e}")


def preprocess_site(root: str | Path, out_root: str | Path,
                    config: PreprocessConfig | None = None, *, workers: int = 1,
                    force: bool = False, progress: bool = False) -> list[CaseResult]:
    """Preprocess every case under ``root``; failed cases are reported, the others go on."""
    config = config or PreprocessConfig()
    cases = find_cases(root)
    jobs = [(c, out_root, config, force) for c in cases]
    results = map_cases(_run_case, jobs, workers=workers, desc="preprocess", progress=progress)
    for r in results:
        if r.status == "failed":
            log.error("%s", r.reason)
    return results
