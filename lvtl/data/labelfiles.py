"""A case's label files, in the formats hospitals contour with, onto the series' phases.

``labels/`` of a case holds per labelled phase one file in any of:

* **NIfTI** (``.nii``, ``.nii.gz``: ITK-SNAP, lvtl's own) and **NRRD** (``.nrrd``, ``.nhdr``),
  label maps with the site's blood pool and myocardium values;
* **3D Slicer segmentations** (``.seg.nrrd``): segments by name, layered or overlapping;
* **DICOM SEG** (highdicom, 3D Slicer, OHIF): segments by label or coded property type;
* **DICOM RTSTRUCT**: closed planar endocardial and epicardial contours, filled (inside the
  endocardium: blood pool; between endocardium and epicardium: myocardium).

**Which phase** a file labels: DICOM SEG and RTSTRUCT say it by the images they reference
(every referenced image must be in one phase of the chosen series); other files by their name:
``phase_NN`` (NN the 0-based phase in cardiac order) or a percentage of the R-R interval
(``70%``, ``p70``), matched to the series' phases (exactly when the series names its phases by
percentage, else the nearest of evenly spaced phases). A phase labelled twice is an error.

**Geometry is checked, not trusted**: a DICOM label's frame of reference must be the series';
a label on the phase's grid is taken as it is; one on a compatible grid (same orientation,
inside the series' extent: e.g. a SEG covering only the heart, or a coarser label map) is
placed onto the phase's grid by nearest neighbour (exactly, where it is a sub-grid); any other
is refused. Every refusal is one line naming the file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom

from lvtl.data.repair import relabel
from lvtl.errors import LabelError, choose, first_line
from lvtl.io.dicom import SeriesIndex, scan_series
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import read_geometry, read_volume, write_volume
from lvtl.io.nrrd import nrrd_geometry, nrrd_labelmap, read_nrrd
from lvtl.io.rtstruct import (
    ENDO_PATTERNS,
    EPI_PATTERNS,
    RTSTRUCT_SOP_CLASS,
    labels_from_rtstruct,
    read_rtstruct,
)
from lvtl.io.seg import write_seg
from lvtl.io.seg_read import RoleMapping, check_frame_of_reference, read_seg, seg_labelmap
from lvtl.labels import BLOOD_POOL, MYOCARDIUM, label_file_name

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PHASE_NAME = re.compile(r"(?:^|[^a-z])phase[_ -]?(\d{1,3})(?![\d])", re.I)
_PERCENT_NAME = re.compile(r"(?:^|[^\d.])(?:p(\d{1,2}(?:\.\d+)?)(?![\d%])|(\d{1,2}(?:\.\d+)?)\s?%)",
                           re.I)
_PERCENT_TAGS = ("NominalPercentageOfCardiacPhase", "PhaseInDescription")


class LabelFormat(StrEnum):
    """The label file formats lvtl reads."""

    NIFTI = "nifti"
    NRRD = "nrrd"
    SLICER_SEG = "seg.nrrd"
    DICOM_SEG = "dicom-seg"
    RTSTRUCT = "rtstruct"


@dataclass(frozen=True)
class LabelFile:
    """One label file of a case and the phase (0-based) it labels."""

    path: Path
    format: LabelFormat
    phase: int
    phase_from: str  # "file name", "percentage in the file name" or "referenced images"

    def name(self, case_dir: Path) -> str:
        """The file's name relative to the case's parent (what errors show)."""
        try:
            return str(self.path.relative_to(case_dir.parent))
        except ValueError:
            return str(self.path)


def _dicom_sop_class(path: Path) -> str | None:
    """The SOP class of a DICOM file (None for a file that is not DICOM)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return None
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise LabelError(f"{path}: unreadable DICOM ({first_line(e)})") from e
    return str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")


def format_of(path: Path) -> LabelFormat | None:
    """A label file's format from its name (and for DICOM its SOP class); None: not a label
    file."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return LabelFormat.NIFTI
    if name.endswith(".seg.nrrd"):
        return LabelFormat.SLICER_SEG
    if name.endswith((".nrrd", ".nhdr")):
        return LabelFormat.NRRD
    sop = _dicom_sop_class(path)
    if sop == SEG_SOP_CLASS:
        return LabelFormat.DICOM_SEG
    if sop == RTSTRUCT_SOP_CLASS:
        return LabelFormat.RTSTRUCT
    if sop is not None:
        raise LabelError(f"{path}: a DICOM file that is neither a SEG nor an RTSTRUCT "
                         f"(SOP class {sop or 'missing'})")
    return None


def phase_of_percent(percent: float, index: SeriesIndex) -> int | None:
    """The phase at ``percent`` of the R-R interval (None when no phase is there)."""
    if index.phase_tag in _PERCENT_TAGS:
        hits = [t for t, k in enumerate(index.phase_keys) if abs(k - percent) < 0.5]
        return hits[0] if hits else None
    t = percent / 100.0 * index.n_phases
    return int(round(t)) % index.n_phases if abs(t - round(t)) < 0.25 else None


def _phase_from_name(path: Path, index: SeriesIndex) -> tuple[int, str] | None:
    stem = path.name
    m = _PHASE_NAME.search(stem)
    if m:
        return int(m.group(1)), "file name"
    m = _PERCENT_NAME.search(stem)
    if m:
        pct = float(m.group(1) or m.group(2))
        t = phase_of_percent(pct, index)
        if t is None:
            raise LabelError(f"{path}: no phase of the series at {pct:g}% (phases at "
                             f"{', '.join(f'{k:g}' for k in index.phase_keys[:8])}"
                             f"{' ...' if index.n_phases > 8 else ''})")
        return t, "percentage in the file name"
    return None


def _phase_from_references(path: Path, fmt: LabelFormat, index: SeriesIndex) -> int | None:
    """The phase whose images the file references; None when the references do not tell
    (none, or only an Enhanced CT object holding every phase without frame numbers)."""
    if fmt is LabelFormat.DICOM_SEG:
        refs = [(uid, None) for uid in read_seg(path).referenced_sop_uids]
    else:
        rt = read_rtstruct(path)
        refs = list(rt.referenced_images) or [(uid, None) for uid in rt.referenced_sop_uids]
    phases_of: dict[str, set[int]] = {}
    by_frame: dict[tuple[str, int], int] = {}
    for t, ph in enumerate(index.phases):
        for sl in ph:
            phases_of.setdefault(sl.sop_uid, set()).add(t)
            by_frame[(sl.sop_uid, sl.frame + 1)] = t
    found: set[int] = set()
    for uid, frame in refs:
        if uid not in phases_of:
            raise LabelError(f"{path}: references images that are not in the series "
                             f"{index.series_uid} (another series or study)")
        if frame and (uid, int(frame)) in by_frame:
            found.add(by_frame[(uid, int(frame))])
        elif len(phases_of[uid]) == 1:
            found |= phases_of[uid]
    if len(found) > 1:
        raise LabelError(f"{path}: references images of {len(found)} phases "
                         f"({', '.join(str(p) for p in sorted(found))}); one file per phase")
    return found.pop() if found else None


def find_label_files(case_dir: str | Path, index: SeriesIndex) -> list[LabelFile]:
    """The label files in ``case_dir/labels`` with their phases, in phase order. Files that are
    not label files are skipped with a warning; a file whose phase cannot be told, is not in
    the series, or is labelled twice raises :class:`LabelError` naming it."""
    case_dir = Path(case_dir)
    folder = case_dir / "labels"
    if not folder.is_dir():
        return []
    found: dict[int, LabelFile] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith("."):
            continue
        rel = path.relative_to(case_dir.parent)
        fmt = format_of(path)
        if fmt is None:
            log.warning("%s: not a label file (NIfTI, NRRD, .seg.nrrd, DICOM SEG or "
                        "RTSTRUCT), skipped", path)
            continue
        got = None
        if fmt in (LabelFormat.DICOM_SEG, LabelFormat.RTSTRUCT):
            t = _phase_from_references(path, fmt, index)
            got = None if t is None else (t, "referenced images")
        # a file that references no images (a SEG on its own cropped grid) says it by name
        got = got or _phase_from_name(path, index)
        if got is None:
            raise LabelError(f"{rel}: says no phase: it references no images of the series "
                             "and its name has no phase_NN or percentage (70%, p70)")
        phase, how = got
        if not 0 <= phase < index.n_phases:
            raise LabelError(f"{rel}: phase {phase} but the series has {index.n_phases} "
                             f"phases (0 to {index.n_phases - 1})")
        if phase in found:
            raise LabelError(f"{rel}: phase {phase} is labelled twice (also by "
                             f"{found[phase].path.name})")
        found[phase] = LabelFile(path, fmt, phase, how)
    return [found[t] for t in sorted(found)]


def check_fits(geometry: Geometry, target: Geometry, name: str) -> bool:
    """Whether a label on ``geometry`` is on ``target``'s grid (True) or on a compatible one
    (False: same orientation, inside the target's extent); otherwise :class:`LabelError`
    naming ``name`` and the differences. Needs the header only."""
    diffs = target.differences(geometry, tol_mm=0.01, tol_dir=1e-3)
    if not diffs:
        return True
    why = f"{name}: geometry does not match the image series ({'; '.join(diffs)})"
    if np.abs(geometry.direction_matrix - target.direction_matrix).max() > 1e-3:
        raise LabelError(f"{why}: another orientation")
    m = target.lps_to_index() @ geometry.index_to_lps()
    ends = np.array([m[:3, 3], (m @ np.array([*(np.array(geometry.shape) - 1), 1.0]))[:3]])
    lo, hi = ends.min(axis=0), ends.max(axis=0)
    if (lo < -0.5 - 1e-3).any() or (hi > np.array(target.shape) - 0.5 + 1e-3).any():
        raise LabelError(f"{why}: it extends beyond the series")
    return False


def onto_phase(arr: np.ndarray, geometry: Geometry, target: Geometry, name: str
               ) -> np.ndarray:
    """A label array on ``geometry`` placed onto ``target``: as it is when the grids match;
    by nearest neighbour when :func:`check_fits` finds the grid compatible (exact for a
    sub-grid: same spacing, whole-voxel offset; voxels of the target outside the label's
    grid are background)."""
    if check_fits(geometry, target, name):
        return arr
    inv = geometry.lps_to_index() @ target.index_to_lps()
    out = np.zeros(target.shape, arr.dtype)
    grids = np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij", sparse=True)
    idx = [np.rint(inv[a, 0] * grids[0] + inv[a, 1] * grids[1] + inv[a, 2] * grids[2]
                   + inv[a, 3]).astype(np.int64) for a in range(3)]
    inside = np.ones(target.shape, bool)
    for a in range(3):
        inside &= (idx[a] >= 0) & (idx[a] < geometry.shape[a])
    out[inside] = arr[tuple(np.broadcast_to(i, target.shape)[inside] for i in idx)]
    return out


@dataclass(frozen=True)
class LabelMapping:
    """How a site's label files name their labels: label-map values, RTSTRUCT ROI name
    patterns (endocardium, epicardium) and segment patterns (SEG, .seg.nrrd; see
    :class:`lvtl.io.seg_read.RoleMapping`). Patterns are case-insensitive globs."""

    blood_pool_value: int = BLOOD_POOL
    myocardium_value: int = MYOCARDIUM
    endo_rois: tuple[str, ...] = ENDO_PATTERNS
    epi_rois: tuple[str, ...] = EPI_PATTERNS
    segments: RoleMapping = RoleMapping()


def _label_map(lf: LabelFile, index: SeriesIndex, mapping: LabelMapping, name: str
               ) -> tuple[np.ndarray, Geometry, bool]:
    """``(array, its geometry, already 0/1/2)`` of one label file as its format holds it."""
    if lf.format is LabelFormat.NIFTI:
        # the header first: another grid, or a header claiming gigabytes, is refused unread
        check_fits(read_geometry(lf.path), index.geometry, name)
        arr, geometry = read_volume(lf.path)
        return arr, geometry, False
    if lf.format in (LabelFormat.NRRD, LabelFormat.SLICER_SEG):
        labels = read_nrrd(lf.path)
        if not labels.segments:
            check_fits(nrrd_geometry(lf.path), index.geometry, name)
            return labels.array, labels.geometry, False
        arr, geometry = nrrd_labelmap(labels, mapping.segments)
        return arr, geometry, True
    phase = index.phases[lf.phase]
    series_for = phase[0].frame_of_reference if phase else ""
    if lf.format is LabelFormat.DICOM_SEG:
        seg = read_seg(lf.path)
        check_frame_of_reference(seg, series_for, lf.path)
        arr, geometry = seg_labelmap(seg, mapping.segments)
        return arr, geometry, True
    arr = labels_from_rtstruct(lf.path, index.geometry, series_for,
                               sop_uids_of_phase={sl.sop_uid for sl in phase},
                               series_uid=phase[0].series_uid if phase else None,
                               endo=mapping.endo_rois, epi=mapping.epi_rois)
    return arr, index.geometry, True


def read_label_file(lf: LabelFile, index: SeriesIndex, mapping: LabelMapping | None = None,
                    *, name: str | None = None) -> np.ndarray:
    """One label file as a 0/1/2 ``uint8`` map on the series' grid (phase ``lf.phase``),
    checked: geometry (see :func:`onto_phase`), values or names (``mapping``), both labels
    present. Raises :class:`LabelError` naming the file (as ``name``, default its path)."""
    mapping = mapping or LabelMapping()
    name = name or str(lf.path)
    try:
        arr, geometry, mapped = _label_map(lf, index, mapping, name)
    except LabelError as e:  # the readers name the file by its path: show it as ``name``
        msg = str(e)
        if not msg.startswith(name):
            msg = (msg.replace(str(lf.path), name, 1) if str(lf.path) in msg
                   else f"{name}: {msg}")
        raise LabelError(msg) from None
    if arr.ndim != 3:
        raise LabelError(f"{name}: a label map must be 3D, this one is {arr.ndim}D")
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.rint(arr)):
            raise LabelError(f"{name}: label values are not integers")
        arr = arr.astype(np.int64)
    lab = (arr.astype(np.uint8) if mapped
           else relabel(arr, mapping.blood_pool_value, mapping.myocardium_value, source=name))
    lab = onto_phase(lab, geometry, index.geometry, name)
    missing = [n for n, v in (("blood pool", BLOOD_POOL), ("myocardium", MYOCARDIUM))
               if not (lab == v).any()]
    if missing:
        raise LabelError(f"{name}: empty label, no {' and no '.join(missing)} "
                         f"in a labelled phase")
    return lab


class OutputFormat(StrEnum):
    """What ``lvtl labels convert`` writes."""

    NIFTI = "nifti"
    SEG = "seg"


def convert_labels(case_dir: str | Path, out: str | Path, to: OutputFormat | str,
                   series: str | None = None, mapping: LabelMapping | None = None
                   ) -> list[tuple[int, Path]]:
    """Every label file of a case, as lvtl reads it, written to ``out`` as NIfTI
    (``phase_NN.nii.gz`` on the series' grid) or DICOM SEG (``phase_NN.dcm`` referencing the
    phase's images): for a site to check in its own viewer what lvtl read. ``series`` chooses
    the case's series (:func:`lvtl.io.dicom.choose`). Stops at the first unreadable file
    (naming it); nothing is written into the case. Returns ``(phase, path)``."""
    case_dir, out = Path(case_dir), Path(out)
    to = choose(OutputFormat, to, "output format")
    if out.resolve().is_relative_to(case_dir.resolve()):
        raise LabelError(f"{out}: the output must not be inside the case folder {case_dir}")
    index = scan_series(case_dir / "dicom", series)
    written = []
    for lf in find_label_files(case_dir, index):
        lab = read_label_file(lf, index, mapping, name=lf.name(case_dir))
        if to is OutputFormat.NIFTI:
            path = write_volume(out / label_file_name(lf.phase), lab, index.geometry)
        else:
            path = write_seg(out / label_file_name(lf.phase, ".dcm"), lab, index, lf.phase)
        written.append((lf.phase, Path(path)))
    return written
