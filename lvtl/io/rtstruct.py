"""DICOM RTSTRUCT label files: endocardial and epicardial contours in, label maps out, and back.

An RT Structure Set (SOP class ``1.2.840.10008.5.1.4.1.1.481.3``) holds regions of interest
(ROIs), each a list of contours in patient coordinates (LPS, mm) of its frame of reference.
Cardiac tools, treatment-planning systems and many clinical viewers export the LV as two ROIs,
the endocardium and the epicardium, drawn as closed planar contours slice by slice; lvtl fills
them as the paper's sites did: inside the endocardium is blood pool (label 1), inside the
epicardium and not inside the endocardium myocardium (label 2).

- :func:`read_rtstruct` reads a file into an :class:`RTStruct` (frame of reference, the
  referenced series and images, the ROIs' contours); every problem is one
  :class:`~lvtl.errors.LabelError` line naming the file.
- :func:`map_rois` chooses the endocardium and epicardium ROIs by case-insensitive glob
  patterns of their names (:data:`ENDO_PATTERNS`, :data:`EPI_PATTERNS` by default).
- :func:`rasterise` fills contours on an image grid (a fraction of each voxel inside, float32).
- :func:`labels_from_rtstruct` does all of it for one phase, with the checks (frame of
  reference, referenced images, contours inside the grid).
- :func:`write_rtstruct` writes endocardial and epicardial contours as an RTSTRUCT that
  references a phase's images (the synthetic sites' labels, as a contouring tool gives them).

**Filling** (see ``docs/labels-rtstruct.md``). Contours are grouped into stacks of parallel
planes. A stack whose every contour lies in an image slice (its slice index constant within
:data:`IN_SLICE_TOL` of a whole slice) is filled slice by slice: each slice's contours by the
even-odd rule (a contour inside another is a hole, one inside a hole an island), sampled
``supersample x supersample`` times per pixel by a vectorised scanline fill; the pixel's value
is the fraction of its samples inside. Any other stack (short-axis or oblique contours, or
axial ones between the image slices) is filled in patient space: each voxel belongs to the
nearest contour plane if it lies within half the spacing of the stack's planes (half the voxel's
extent along the normal for a single plane), and is inside if its projection onto that plane
is inside the plane's contours (even-odd, ``matplotlib.path``); voxels on the surface of that
region are sampled ``supersample`` times along each axis. :func:`labels_from_rtstruct` keeps a
voxel whose fraction is at least 0.5 (``supersample=1`` tests the voxel centre only). Slices
without contours are not filled: nothing is interpolated between contours.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
)
from scipy import ndimage

from lvtl.errors import LabelError, first_line
from lvtl.io.atomic import atomic_path
from lvtl.io.dicom_iod import UID_ROOT, ds_num, item, new_uid
from lvtl.io.dicom_scan import SliceHeader
from lvtl.io.geometry import Geometry
from lvtl.labels import BLOOD_POOL, MYOCARDIUM

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = str(RTStructureSetStorage)
CLOSED_PLANAR = "CLOSED_PLANAR"

#: Default name patterns (case-insensitive globs) of the endocardium and epicardium ROIs.
ENDO_PATTERNS = ("endo*", "lv endo*", "*endocard*", "lv blood*", "lv cavity*")
EPI_PATTERNS = ("epi*", "lv epi*", "*epicard*")

#: Samples per voxel edge of the sub-voxel fill (fraction of a voxel inside, kept at >= 0.5).
SUPERSAMPLE = 4
#: A contour lies in an image slice when its slice index is within this of a whole slice.
IN_SLICE_TOL = 0.01
#: Largest distance (mm) of a closed planar contour's points from its plane (DS rounding).
PLANAR_TOL_MM = 0.1
#: Contours whose normals differ by less than this angle (degrees) are one stack of planes.
PARALLEL_DEG = 1.0
#: How far (voxels) a contour point may lie beyond the image grid's outer voxel faces.
GRID_TOL = 0.01

_CONTOUR_DATA = 0x30060050
_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # what RT Referenced Study Sequence items name
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                  "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
_SHOWN = 12  # ROI names listed in an error, at most


class Contour(NamedTuple):
    """One contour of an ROI: points ``(n, 3)`` LPS mm, its geometric type (``CLOSED_PLANAR``,
    ``OPEN_PLANAR``, ``OPEN_NONPLANAR`` or ``POINT``) and the SOP instance UIDs of the images
    it was drawn on (ContourImageSequence; may be empty)."""

    points: np.ndarray
    geometric_type: str = CLOSED_PLANAR
    referenced_sop_uids: tuple[str, ...] = ()


@dataclass
class RTStruct:
    """What lvtl reads of an RTSTRUCT file.

    ``frame_of_reference`` is the structure set's (its first Referenced Frame of Reference, or
    the first ROI's); ``roi_frames`` each ROI's own. ``series_uids`` and
    ``referenced_sop_uids`` are the image series and images it references (RT Referenced
    Series and the contours' Contour Image Sequences, in file order, without repeats);
    ``referenced_images`` the same images as ``(SOP instance UID, frame number)`` pairs, the
    1-based frame number of a multi-frame image (None for a single-frame one). ``rois`` maps
    each ROI's name to its contours (a repeated name gets ``#<ROI number>``).
    """

    path: Path
    frame_of_reference: str
    series_uids: tuple[str, ...]
    referenced_sop_uids: tuple[str, ...]
    rois: dict[str, list[Contour]]
    roi_frames: dict[str, str]
    referenced_images: tuple[tuple[str, int | None], ...] = ()


# --------------------------------------------------------------------------- reading
def read_rtstruct(path: str | Path) -> RTStruct:
    """Read an RTSTRUCT file. Closed planar contours are checked (at least 3 points, an area,
    planar within :data:`PLANAR_TOL_MM`); contours of other types are kept with their type
    (real files hold isocentre points) and refused only where they are to be filled. A file
    that is not an RTSTRUCT, holds no contour or a malformed one raises
    :class:`~lvtl.errors.LabelError`, one line naming the file and the problem."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)  # some tools write no preamble
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise LabelError(f"{path}: unreadable DICOM ({first_line(e)})") from e
    sop, modality = str(ds.get("SOPClassUID", "")), str(ds.get("Modality", ""))
    if sop != RTSTRUCT_SOP_CLASS and modality != "RTSTRUCT":
        raise LabelError(f"{path}: not a DICOM RTSTRUCT (SOP class {sop or 'missing'}, "
                         f"modality {modality or 'missing'})")
    try:
        return _parse(ds, path)
    except LabelError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed attribute anywhere in the file
        raise LabelError(f"{path}: malformed RTSTRUCT ({first_line(e)})") from e


def _parse(ds: Dataset, path: Path) -> RTStruct:
    frames, series, images = [], [], []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.append(str(fr.get("FrameOfReferenceUID", "")))
        for study in fr.get("RTReferencedStudySequence", []):
            for ser in study.get("RTReferencedSeriesSequence", []):
                series.append(str(ser.get("SeriesInstanceUID", "")))
                images += _images(ser)
    names: dict[int, str] = {}
    roi_frames: dict[str, str] = {}
    for roi in ds.get("StructureSetROISequence", []):
        number = int(roi.ROINumber)
        name = str(roi.get("ROIName", "") or f"ROI {number}").strip()
        if name in roi_frames:
            name = f"{name}#{number}"
        names[number] = name
        roi_frames[name] = str(roi.get("ReferencedFrameOfReferenceUID", ""))
    rois: dict[str, list[Contour]] = {name: [] for name in roi_frames}
    for rc in ds.get("ROIContourSequence", []):
        number = int(rc.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        contours = rois.setdefault(name, [])
        for c in rc.get("ContourSequence", []):
            where = f"{path}: ROI {name!r} contour {len(contours) + 1}"
            contours.append(_contour(c, where))
            images += _images(c)
    if not any(rois.values()):
        raise LabelError(f"{path}: no contours (ROIs: {_names(rois)})")
    frame = next((f for f in frames if f), "") or next((f for f in roi_frames.values() if f), "")
    images = [im for im in images if im[0]]
    return RTStruct(path=path, frame_of_reference=frame,
                    series_uids=tuple(dict.fromkeys(s for s in series if s)),
                    referenced_sop_uids=tuple(dict.fromkeys(u for u, _ in images)),
                    rois=rois, roi_frames=roi_frames,
                    referenced_images=tuple(dict.fromkeys(images)))


def _images(ds: Dataset) -> list[tuple[str, int | None]]:
    """``(SOP instance UID, frame number or None)`` of each image (and frame) in a Contour
    Image Sequence."""
    out: list[tuple[str, int | None]] = []
    for im in ds.get("ContourImageSequence", []):
        uid = str(im.get("ReferencedSOPInstanceUID", ""))
        frames = im.get("ReferencedFrameNumber")
        if frames in (None, ""):
            out.append((uid, None))
        else:
            out += [(uid, int(f)) for f in (frames if isinstance(frames, MultiValue)
                                            else [frames])]
    return out


def _contour(c: Dataset, where: str) -> Contour:
    """One Contour Sequence item, checked; ``where`` names it in errors."""
    kind = str(c.get("ContourGeometricType", "") or "").strip().upper()
    points = _contour_data(c, where)
    declared = c.get("NumberOfContourPoints")
    if declared not in (None, "") and int(declared) != len(points):
        raise LabelError(f"{where}: NumberOfContourPoints is {int(declared)} but ContourData "
                         f"holds {len(points)} points")
    refs = tuple(str(im.ReferencedSOPInstanceUID) for im in c.get("ContourImageSequence", []))
    if kind == CLOSED_PLANAR:
        problem = _plane_problem(points)
        if problem:
            raise LabelError(f"{where}: {problem}")
    return Contour(points, kind, refs)


def _contour_data(c: Dataset, where: str) -> np.ndarray:
    """ContourData as ``(n, 3)`` float64, parsed from the raw text when pydicom has not
    converted it yet (a DSfloat per number costs more than the rest of the file)."""
    elem = c.get_item(_CONTOUR_DATA)
    if elem is None:
        raise LabelError(f"{where}: no ContourData")
    try:
        if isinstance(elem, RawDataElement):
            text = (elem.value or b"").decode("latin-1").strip(" \x00")
            values = np.array(text.split("\\") if text else [], dtype=float)
        else:
            value = elem.value
            values = np.atleast_1d(np.asarray([] if value in (None, "") else value, float))
    except ValueError as e:
        raise LabelError(f"{where}: malformed ContourData ({first_line(e)})") from e
    if values.size == 0 or values.size % 3:
        raise LabelError(f"{where}: malformed ContourData ({values.size} values, not a "
                         "positive multiple of 3)")
    if not np.isfinite(values).all():
        raise LabelError(f"{where}: malformed ContourData (values that are not finite)")
    return values.reshape(-1, 3)


def _newell(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit normal and area (mm^2) of a polygon ``(n, 3)`` (Newell's method)."""
    p = points - points.mean(axis=0)
    area_vec = 0.5 * np.cross(p, np.roll(p, -1, axis=0)).sum(axis=0)
    area = float(np.linalg.norm(area_vec))
    return (area_vec / area if area > 0 else area_vec), area


def _plane_problem(points: np.ndarray) -> str | None:
    """What keeps ``points`` from being a closed planar contour, or None."""
    if len(points) < 3:
        return f"a closed contour needs at least 3 points, this one has {len(points)}"
    normal, area = _newell(points)
    if area < 1e-6:
        return "the contour encloses no area (its points are on one line)"
    off = float(np.abs((points - points.mean(axis=0)) @ normal).max())
    if off > PLANAR_TOL_MM:
        return (f"the contour is not planar (a point {off:.2f} mm from its plane; "
                f"at most {PLANAR_TOL_MM} mm)")
    return None


def _names(rois: Mapping[str, list]) -> str:
    shown = [repr(n) for n in list(rois)[:_SHOWN]]
    more = f" and {len(rois) - _SHOWN} more" if len(rois) > _SHOWN else ""
    return (", ".join(shown) + more) if shown else "none"


# --------------------------------------------------------------------------- ROI names
def map_rois(rt: RTStruct, endo_patterns: Sequence[str] | str = ENDO_PATTERNS,
             epi_patterns: Sequence[str] | str = EPI_PATTERNS) -> tuple[str, str]:
    """The names of the endocardium and epicardium ROIs: the one ROI with contours whose name
    matches any of the patterns (case-insensitive globs, e.g. ``"lv endo*"``). No match, more
    than one, or one ROI matching both raises :class:`~lvtl.errors.LabelError` naming the
    file and the ROIs present."""
    endo = _match(rt, endo_patterns, "endocardium")
    epi = _match(rt, epi_patterns, "epicardium")
    if endo == epi:
        raise LabelError(f"{rt.path}: ROI {endo!r} matches both the endocardium and the "
                         "epicardium patterns; set the ROI name patterns")
    return endo, epi


def _match(rt: RTStruct, patterns: Sequence[str] | str, what: str) -> str:
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    globs = [p.strip().lower() for p in patterns]
    found = [n for n in rt.rois if any(fnmatch.fnmatchcase(n.strip().lower(), g) for g in globs)]
    full = [n for n in found if rt.rois[n]]
    if len(full) == 1:
        return full[0]
    shown = ", ".join(patterns)
    if len(full) > 1:
        raise LabelError(f"{rt.path}: {len(full)} ROIs match the {what} patterns ({shown}): "
                         f"{', '.join(repr(n) for n in full)}; set the ROI name patterns")
    if found:
        raise LabelError(f"{rt.path}: the {what} ROI {found[0]!r} has no contours")
    raise LabelError(f"{rt.path}: no {what} ROI (names matching {shown}); ROIs in the file: "
                     f"{_names(rt.rois)}")


# --------------------------------------------------------------------------- labels
def labels_from_rtstruct(path: str | Path, geometry: Geometry,
                         frame_of_reference: str | None = None, *,
                         sop_uids_of_phase: Collection[str] | None = None,
                         series_uid: str | None = None,
                         endo: Sequence[str] | str = ENDO_PATTERNS,
                         epi: Sequence[str] | str = EPI_PATTERNS,
                         supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The label map ``(z, y, x)`` uint8 on ``geometry`` of an RTSTRUCT's endocardial and
    epicardial contours: inside the endocardium 1, inside the epicardium and not the
    endocardium 2 (a voxel is inside when at least half of it is, see :func:`rasterise`).

    Checked, each refusal a :class:`~lvtl.errors.LabelError` line naming the file: the ROIs
    (:func:`map_rois`), their frame of reference against the series' ``frame_of_reference``
    (not checked when None or empty), the series the file references against ``series_uid``
    (when given and the file names any), every contour's referenced images against
    ``sop_uids_of_phase`` (when given), the contours' type (closed planar) and that they lie
    inside the grid.

    Args:
        path: the RTSTRUCT file.
        geometry: the phase's image grid.
        frame_of_reference: the series' FrameOfReferenceUID.
        sop_uids_of_phase: SOP instance UIDs of the phase's images.
        series_uid: the phase's SeriesInstanceUID.
        endo: name patterns of the endocardium ROI (:data:`ENDO_PATTERNS`).
        epi: name patterns of the epicardium ROI (:data:`EPI_PATTERNS`).
        supersample: samples per voxel edge (1: voxel centres only).
    """
    rt = read_rtstruct(path)
    chosen = map_rois(rt, endo, epi)
    for name in chosen:
        roi_for = rt.roi_frames.get(name) or rt.frame_of_reference
        if frame_of_reference and roi_for != frame_of_reference:
            raise LabelError(f"{rt.path}: ROI {name!r} is in frame of reference "
                             f"{roi_for or '(none)'}, not the series' ({frame_of_reference})")
    if series_uid and rt.series_uids and series_uid not in rt.series_uids:
        raise LabelError(f"{rt.path}: references images of another series/phase (series "
                         f"{', '.join(rt.series_uids)}, not {series_uid})")
    if sop_uids_of_phase is not None:
        allowed = set(sop_uids_of_phase)
        for name in chosen:
            for i, c in enumerate(rt.rois[name], 1):
                foreign = [u for u in c.referenced_sop_uids if u not in allowed]
                if foreign:
                    raise LabelError(f"{rt.path}: ROI {name!r} contour {i} references images "
                                     f"of another series/phase ({foreign[0]} is not one of "
                                     f"the phase's {len(allowed)} images)")
    endo_in, epi_in = (rasterise(rt.rois[name], geometry, supersample=supersample,
                                 source=f"{rt.path}: ROI {name!r}") >= 0.5 for name in chosen)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[epi_in] = MYOCARDIUM
    labels[endo_in] = BLOOD_POOL
    return labels


# --------------------------------------------------------------------------- filling
def rasterise(contours: Sequence[Contour | np.ndarray], geometry: Geometry, *,
              supersample: int = SUPERSAMPLE, clip: bool = False,
              source: str = "contours") -> np.ndarray:
    """The fraction (float32 ``(z, y, x)``, 0 to 1) of each voxel of ``geometry`` inside the
    closed planar ``contours`` (:class:`Contour` or ``(n, 3)`` LPS mm arrays), filled as the
    module says: in-slice stacks by an even-odd scanline fill with ``supersample`` squared
    samples per pixel, other stacks in patient space. ``>= 0.5`` gives a mask.

    A contour that is not closed planar, or (unless ``clip``, which cuts contours at the
    grid's edge) reaches outside the grid, raises :class:`~lvtl.errors.LabelError` naming
    ``source`` and the contour (1-based)."""
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be at least 1, got {supersample}")
    polys = [_polygon(c, i, source) for i, c in enumerate(contours, 1)]
    out = np.zeros(geometry.shape, np.float32)
    m = geometry.lps_to_index()
    idx = [p @ m[:3, :3].T + m[:3, 3] for p in polys]
    if not clip:
        _check_inside(polys, idx, geometry.shape, source)
    for normal, members in _stacks(polys):
        slices = [_slice_of(idx[i], geometry.shape[0]) for i in members]
        if all(k is not None for k in slices):
            _fill_slices([(k, idx[i][:, 1:]) for k, i in zip(slices, members, strict=True)],
                         out, s)
        else:
            log.debug("%s: %d contours off the image slices (normal %s), filled in patient "
                      "space", source, len(members), np.round(normal, 3))
            _fill_patient([polys[i] for i in members], normal, geometry, out, s)
    return out


def _polygon(c: Contour | np.ndarray, i: int, source: str) -> np.ndarray:
    kind = c.geometric_type if isinstance(c, Contour) else CLOSED_PLANAR
    points = np.asarray(c.points if isinstance(c, Contour) else c, dtype=float)
    if kind != CLOSED_PLANAR:
        raise LabelError(f"{source}: contour {i} is {kind or 'of no type'}, not CLOSED_PLANAR "
                         "(only a closed contour can be filled)")
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise LabelError(f"{source}: contour {i} is not an (n, 3) array of finite points")
    problem = _plane_problem(points)
    if problem:
        raise LabelError(f"{source}: contour {i}: {problem}")
    return points


def _check_inside(polys: list[np.ndarray], idx: list[np.ndarray], shape: tuple[int, ...],
                  source: str) -> None:
    hi = np.asarray(shape) - 0.5 + GRID_TOL
    for i, (p, ix) in enumerate(zip(polys, idx, strict=True), 1):
        out = ((ix < -0.5 - GRID_TOL) | (ix > hi)).any(axis=1)
        if out.any():
            k = int(np.argmax(out))
            raise LabelError(
                f"{source}: contour {i} reaches outside the image grid (point "
                f"{_fmt(p[k])} mm LPS is at voxel (z, y, x) {_fmt(ix[k])} of a grid of "
                f"{list(shape)})")


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ")"


def _stacks(polys: list[np.ndarray]) -> list[tuple[np.ndarray, list[int]]]:
    """Contours grouped by parallel planes: ``(unit normal, contour numbers)`` per stack (the
    normal the area-weighted mean of the members')."""
    cos = np.cos(np.deg2rad(PARALLEL_DEG))
    refs: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    members: list[list[int]] = []
    for i, p in enumerate(polys):
        normal, area = _newell(p)
        for g, ref in enumerate(refs):
            c = float(normal @ ref)
            if abs(c) >= cos:
                sums[g] += np.sign(c) * area * normal
                members[g].append(i)
                break
        else:
            refs.append(normal)
            sums.append(area * normal)
            members.append([i])
    return [(v / np.linalg.norm(v), m) for v, m in zip(sums, members, strict=True)]


def _slice_of(ix: np.ndarray, n_slices: int) -> int | None:
    """The image slice a contour (voxel indices ``(n, 3)``) lies in, or None."""
    k = int(np.rint(ix[:, 0].mean()))
    if 0 <= k < n_slices and np.abs(ix[:, 0] - k).max() <= IN_SLICE_TOL:
        return k
    return None


def _fill_slices(polys: list[tuple[int, np.ndarray]], out: np.ndarray, s: int) -> None:
    """Fill in-slice contours ``(slice, (n, 2) row/column indices)`` into ``out``, each
    slice's contours together (even-odd)."""
    by_slice: dict[int, list[np.ndarray]] = {}
    for k, rc in polys:
        by_slice.setdefault(k, []).append(rc)
    for k, rcs in by_slice.items():
        filled = scanline_fill(rcs, out.shape[1:], s)
        if filled is not None:
            box, frac = filled
            view = out[k][box]
            np.maximum(view, frac, out=view)


def scanline_fill(polygons: Sequence[np.ndarray], shape: tuple[int, int], supersample: int = 1
                  ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Even-odd fill of 2D polygons (each ``(n, 2)`` continuous (row, column) indices, pixel
    ``(r, c)`` centred at ``(r, c)``) on a ``shape`` image: ``(box, fraction)`` with the
    fraction (float32) of each pixel's ``supersample`` x ``supersample`` samples inside, over
    the pixel ``box`` the polygons cover (None when they miss the image).

    Scanlines through the sample rows: every edge crossing of every row is computed at once
    (an edge counts for rows in ``[min y, max y)``), sorted along its row and paired, so
    samples between the crossings of a pair are inside (even-odd). Each pair's samples are
    added to its pixels by difference arrays at pixel resolution: the cost grows with the
    crossings and the pixels, not with the samples.
    """
    s = int(supersample)
    ny, nx = shape
    pts = np.concatenate(polygons)
    r0, c0 = np.maximum(np.floor(pts.min(axis=0) + 0.5).astype(int), 0)
    r1, c1 = np.minimum(np.floor(pts.max(axis=0) + 0.5).astype(int) + 1, (ny, nx))
    if r1 <= r0 or c1 <= c0:
        return None
    b = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    y0, x0, y1, x1 = pts[:, 0], pts[:, 1], b[:, 0], b[:, 1]
    n_rows, n_cols = int(r1 - r0), int(c1 - c0)
    # sample row k is at y = r0 - 0.5 + (k + 0.5) / s; an edge crosses rows k_lo .. k_hi - 1
    last = n_rows * s
    k_lo = np.clip(np.ceil((np.minimum(y0, y1) - r0 + 0.5) * s - 0.5), 0, last).astype(np.int64)
    k_hi = np.clip(np.ceil((np.maximum(y0, y1) - r0 + 0.5) * s - 0.5), 0, last).astype(np.int64)
    n = np.maximum(k_hi - k_lo, 0)
    edge = np.repeat(np.arange(len(n)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + k_lo[edge]
    y = r0 - 0.5 + (k + 0.5) / s
    x = x0[edge] + (y - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((x, k))  # closed polygons cross each row an even number of times
    k, x = k[order], x[order]
    # samples j (at x = c0 - 0.5 + (j + 0.5) / s) of a pair (a, b): J(a) <= j < J(b), with
    # J(x) the first sample right of x
    j = np.clip(np.floor((x - c0 + 0.5) * s - 0.5).astype(np.int64) + 1, 0, n_cols * s)
    ja, jb, row = j[0::2], j[1::2], k[0::2] // s
    ca, cb = ja // s, jb // s
    width = n_cols + 1
    at_a, at_b, size = row * width + ca, row * width + cb, n_rows * width
    # s samples in each pixel from ca to cb - 1, less those of pixel ca left of ja, plus those
    # of pixel cb left of jb
    at = np.concatenate([at_a, at_b])
    ones = np.ones(len(at_a))
    whole = np.bincount(at, weights=np.concatenate([ones, -ones]), minlength=size)
    part = np.bincount(at, weights=np.concatenate([ca * s - ja, jb - cb * s]), minlength=size)
    count = np.cumsum(whole.reshape(n_rows, width), axis=1) * s + part.reshape(n_rows, width)
    frac = (count[:, :n_cols] / (s * s)).astype(np.float32)
    return (slice(int(r0), int(r1)), slice(int(c0), int(c1))), frac


def _fill_patient(polys: list[np.ndarray], normal: np.ndarray, geometry: Geometry,
                  out: np.ndarray, s: int) -> None:
    """Fill one stack of parallel contours in patient space into ``out``."""
    planes = _Planes(polys, normal, geometry)
    to_lps = geometry.index_to_lps()
    lo_idx, hi_idx = planes.index_box(geometry)
    if np.any(hi_idx <= lo_idx):
        return
    zs, ys, xs = (np.arange(lo, hi) for lo, hi in zip(lo_idx, hi_idx, strict=True))
    yy, xx = (g.ravel() for g in np.meshgrid(ys, xs, indexing="ij"))
    centre = np.zeros((len(zs), len(ys), len(xs)), bool)
    for n, z in enumerate(zs):  # slice by slice: bounded memory
        ijk = np.stack([np.full_like(yy, z), yy, xx], axis=1).astype(float)
        centre[n] = planes.inside(ijk @ to_lps[:3, :3].T + to_lps[:3, 3]).reshape(centre[n].shape)
    frac = centre.astype(np.float32)
    if s > 1:  # the voxels on the region's surface, sampled s^3 times
        ball = ndimage.generate_binary_structure(3, 3)
        surface = ndimage.binary_dilation(centre, ball) & ~ndimage.binary_erosion(centre, ball)
        vox = np.argwhere(surface) + lo_idx
        o = (np.arange(s) + 0.5) / s - 0.5
        offsets = np.stack(np.meshgrid(o, o, o, indexing="ij"), axis=-1).reshape(-1, 3)
        values = np.empty(len(vox), np.float32)
        chunk = max(1, 2**18 // len(offsets))
        for start in range(0, len(vox), chunk):
            ijk = (vox[start:start + chunk, None, :] + offsets[None]).reshape(-1, 3)
            inside = planes.inside(ijk @ to_lps[:3, :3].T + to_lps[:3, 3])
            values[start:start + chunk] = inside.reshape(-1, len(offsets)).mean(axis=1)
        frac[surface] = values
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lo_idx, hi_idx, strict=True))
    view = out[box]
    np.maximum(view, frac, out=view)


class _Planes:
    """A stack of parallel contour planes: which plane a point belongs to, and whether it is
    inside that plane's contours (even-odd)."""

    def __init__(self, polys: list[np.ndarray], normal: np.ndarray, geometry: Geometry):
        self.normal = normal
        helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
        e1 = np.cross(normal, helper)
        e1 /= np.linalg.norm(e1)
        self.basis = np.stack([e1, np.cross(normal, e1)])  # in-plane axes (2, 3)
        offsets = np.array([float((p @ normal).mean()) for p in polys])
        groups: list[list[int]] = []
        for i in np.argsort(offsets):
            if groups and offsets[i] - offsets[groups[-1][0]] <= 2 * PLANAR_TOL_MM:
                groups[-1].append(int(i))
            else:
                groups.append([int(i)])
        self.offsets = np.array([offsets[g].mean() for g in groups])
        if len(groups) > 1:
            spacing = float(np.median(np.diff(self.offsets)))
        else:  # one plane: as thick as a voxel along the normal
            spacing = float(np.abs(geometry.direction_matrix @ normal) @ np.asarray(
                geometry.spacing))
        self.half = 0.5 * spacing
        self.paths = []
        for g in groups:
            shapes = []
            for i in g:
                uv = polys[i] @ self.basis.T
                shapes.append((PolygonPath(uv), uv.min(axis=0), uv.max(axis=0)))
            self.paths.append(shapes)
        self.points = np.concatenate(polys)

    def index_box(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """The voxel index box ``[lo, hi)`` that can hold points inside the stack."""
        ends = np.concatenate([self.points + self.half * self.normal,
                               self.points - self.half * self.normal])
        m = geometry.lps_to_index()
        ix = ends @ m[:3, :3].T + m[:3, 3]
        lo = np.maximum(np.floor(ix.min(axis=0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(ix.max(axis=0)).astype(int) + 2, geometry.shape)
        return lo, hi

    def inside(self, points: np.ndarray) -> np.ndarray:
        """Whether each LPS point ``(n, 3)`` is inside: within half the plane spacing of its
        nearest plane and inside that plane's contours."""
        t = points @ self.normal
        j = np.clip(np.searchsorted(self.offsets, t), 1, max(len(self.offsets) - 1, 1))
        if len(self.offsets) == 1:
            near = np.zeros(len(t), np.int64)
        else:
            below = np.abs(t - self.offsets[j - 1]) <= np.abs(t - self.offsets[j])
            near = np.where(below, j - 1, j)
        ok = np.abs(t - self.offsets[near]) <= self.half
        result = np.zeros(len(t), bool)
        sel = np.flatnonzero(ok)
        if not sel.size:
            return result
        order = sel[np.argsort(near[sel], kind="stable")]
        bounds = np.searchsorted(near[order], np.arange(len(self.offsets) + 1))
        uv = points @ self.basis.T
        for plane, shapes in enumerate(self.paths):
            mine = order[bounds[plane]:bounds[plane + 1]]
            for path, lo, hi in shapes:
                q = mine[((uv[mine] >= lo) & (uv[mine] <= hi)).all(axis=1)]
                if q.size:
                    result[q] ^= path.contains_points(uv[q])
        return result


# --------------------------------------------------------------------------- writing
def write_rtstruct(path: str | Path, *, endo: Sequence[np.ndarray], epi: Sequence[np.ndarray],
                   slices: Sequence[SliceHeader | tuple[str, Sequence[float]]],
                   series_uid: str, study_uid: str, frame_of_reference: str,
                   header: Dataset | Mapping[str, object] | None = None,
                   roi_names: tuple[str, str] = ("LV Endocardium", "LV Epicardium"),
                   sop_uid: str | None = None, rt_series_uid: str | None = None,
                   series_number: int = 901, label: str = "LV",
                   image_sop_class: str | None = None) -> Path:
    """Write endocardial and epicardial contours as an RT Structure Set that references a
    phase's images, atomically; returns the path.

    Each contour is CLOSED_PLANAR; one that lies in an image slice (within
    :data:`IN_SLICE_TOL` of a slice's plane) references that image (ContourImageSequence), and
    the structure set references every image of ``slices``.

    Args:
        path: the file to write.
        endo: endocardial contours, each ``(n, 3)`` LPS mm, n >= 3, planar.
        epi: epicardial contours, likewise.
        slices: the phase's images: :class:`~lvtl.io.dicom_scan.SliceHeader` (a frame of a
            multi-frame object is referenced with its frame number) or ``(SOP instance UID,
            ImagePositionPatient)``.
        series_uid: SeriesInstanceUID of the referenced images.
        study_uid: StudyInstanceUID (the images' study, which the structure set joins).
        frame_of_reference: FrameOfReferenceUID of the images.
        header: patient and study attributes to copy (a CT header or a keyword mapping:
            PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate, StudyTime,
            StudyID, AccessionNumber, ReferringPhysicianName); empty when absent.
        roi_names: names of the endocardium and epicardium ROIs.
        sop_uid: SOPInstanceUID of the structure set (default: a new UID).
        rt_series_uid: its SeriesInstanceUID (default: a new UID).
        series_number: its SeriesNumber.
        label: StructureSetLabel.
        image_sop_class: SOP class of the images (default: CT Image Storage, Enhanced CT
            Image Storage for frames of multi-frame objects).
    """
    if not endo or not epi:
        raise ValueError("write_rtstruct needs at least one endocardial and one epicardial "
                         "contour")
    refs = _image_refs(slices, image_sop_class)
    normal, offsets, tol = _slice_planes(slices)
    sop_uid = sop_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # ROI names from a site's configuration: UTF-8
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    copied = {k: (header.get(k, "") if isinstance(header, Mapping) else
                  header.get(k, "") if header is not None else "") for k in _PATIENT_STUDY}
    for keyword, value in copied.items():  # Patient and General Study (type 2: may be empty)
        setattr(ds, keyword, value if value is not None else "")
    ds.StudyInstanceUID = study_uid
    ds.Modality = "RTSTRUCT"  # RT Series
    ds.SeriesInstanceUID = rt_series_uid or new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{label} contours"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_of_reference  # Frame of Reference (the images')
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "lvtl"  # General Equipment
    ds.InstanceNumber = 1  # Structure Set
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = copied["StudyDate"] or ""
    ds.StructureSetTime = copied["StudyTime"] or ""
    series_item = item(SeriesInstanceUID=series_uid,
                       ContourImageSequence=[_image_item(r) for r in refs])
    study_item = item(ReferencedSOPClassUID=_STUDY_MANAGEMENT, ReferencedSOPInstanceUID=study_uid,
                      RTReferencedSeriesSequence=[series_item])
    ds.ReferencedFrameOfReferenceSequence = [
        item(FrameOfReferenceUID=frame_of_reference, RTReferencedStudySequence=[study_item])]
    ds.StructureSetROISequence = [
        item(ROINumber=n, ReferencedFrameOfReferenceUID=frame_of_reference, ROIName=name,
             ROIGenerationAlgorithm="AUTOMATIC")
        for n, name in enumerate(roi_names, 1)]
    ds.ROIContourSequence = [
        item(ROIDisplayColor=colour, ReferencedROINumber=n,
             ContourSequence=[_contour_item(c, k, refs, normal, offsets, tol)
                              for k, c in enumerate(contours, 1)])
        for n, (contours, colour) in enumerate(((endo, [255, 64, 64]), (epi, [64, 160, 255])), 1)]
    ds.RTROIObservationsSequence = [
        item(ObservationNumber=n, ReferencedROINumber=n, ROIObservationLabel=name[:16],
             RTROIInterpretedType="ORGAN", ROIInterpreter="")
        for n, name in enumerate(roi_names, 1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


class _ImageRef(NamedTuple):
    sop_class: str
    sop_uid: str
    frame: int | None  # 1-based frame number of a multi-frame object


def _image_refs(slices: Sequence[SliceHeader | tuple[str, Sequence[float]]],
                image_sop_class: str | None) -> list[_ImageRef]:
    if not slices:
        raise ValueError("write_rtstruct needs the referenced phase's slices")
    refs = []
    for sl in slices:
        if isinstance(sl, SliceHeader):
            multi = sl.coding.frames > 1
            uid, frame = sl.sop_uid, (sl.frame + 1 if multi else None)
        else:
            uid, frame, multi = str(sl[0]), None, False
        if not uid:
            raise ValueError("a referenced slice has no SOP instance UID")
        default = EnhancedCTImageStorage if multi else CTImageStorage
        refs.append(_ImageRef(str(image_sop_class or default), uid, frame))
    return refs


def _image_item(r: _ImageRef) -> Dataset:
    ref = item(ReferencedSOPClassUID=r.sop_class, ReferencedSOPInstanceUID=r.sop_uid)
    if r.frame is not None:
        ref.ReferencedFrameNumber = r.frame
    return ref


def _slice_planes(slices: Sequence[SliceHeader | tuple[str, Sequence[float]]]
                  ) -> tuple[np.ndarray | None, np.ndarray, float]:
    """The slices' normal, each slice's offset along it (mm) and the tolerance (mm) within
    which a contour lies in a slice; normal None when the slices do not tell it."""
    pos = np.array([np.asarray(sl.position if isinstance(sl, SliceHeader) else sl[1], float)
                    for sl in slices])
    first = slices[0]
    if isinstance(first, SliceHeader):
        o = np.asarray(first.orientation, float)
        normal = np.cross(o[:3], o[3:])
    elif len(pos) > 1 and np.linalg.norm(pos[-1] - pos[0]) > 0:
        normal = pos[-1] - pos[0]
    else:
        return None, np.zeros(0), 0.0
    normal = normal / np.linalg.norm(normal)
    offsets = pos @ normal
    gaps = np.diff(np.sort(offsets))
    gaps = gaps[gaps > 1e-6]
    return normal, offsets, IN_SLICE_TOL * (float(np.median(gaps)) if gaps.size else 1.0)


def _contour_item(points: np.ndarray, number: int, refs: list[_ImageRef],
                  normal: np.ndarray | None, offsets: np.ndarray, tol: float) -> Dataset:
    p = np.asarray(points, float)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ValueError(f"contour {number} is not an (n, 3) array of finite LPS points")
    problem = _plane_problem(p)
    if problem:
        raise ValueError(f"contour {number}: {problem}")
    c = item(ContourGeometricType=CLOSED_PLANAR, NumberOfContourPoints=len(p),
             ContourNumber=number, ContourData=[ds_num(v) for v in p.ravel()])
    if normal is not None:
        t = p @ normal
        k = int(np.argmin(np.abs(offsets - t.mean())))
        if np.abs(t - offsets[k]).max() <= tol:
            c.ContourImageSequence = [_image_item(refs[k])]
    return c
