"""DICOM Segmentation (SEG) objects from any tool — highdicom, 3D Slicer (dcmqi), OHIF — read
as one boolean mask per segment on the SEG's own voxel grid, and their segments mapped to
lvtl's labels.

**Reading** uses highdicom's :func:`highdicom.seg.segread` and ``Segmentation.get_volume``:
the maintained implementation of the SEG IOD (the one lvtl writes SEG with), which places the
frames by their Plane Position (per frame) and Plane Orientation and Pixel Measures (shared or
per frame), leaves frames a writer omitted (empty ones) as background, unpacks BINARY bits,
rescales FRACTIONAL values by MaximumFractionalValue, expands LABELMAP pixel values into
segments, and refuses frames that do not stack into one regular 3D grid. lvtl adds only what is
its own: the grid as a :class:`~lvtl.io.geometry.Geometry` in lvtl's ``(z, y, x)`` order (the
slice axis along the slice normal, as :func:`lvtl.io.dicom.scan_series` orders a series), the
references, the mapping of segments to labels and one-line errors naming the file.

**The grid** is the SEG's own: it spans the frames present (e.g. only the slices through the
heart), at the frames' spacing, on the frames' rows and columns. :func:`place_on` puts it onto a
series' grid when it is a sub-grid of it (same spacing and axes, whole-voxel offsets: what a SEG
of that series is); any other grid is the caller's to resample.

**FRACTIONAL** segments: a voxel belongs to a segment where its fraction (stored value /
MaximumFractionalValue) is at least 0.5.

**Roles**: :class:`RoleMapping` says which segment is the blood pool, the myocardium, or the
whole LV inside the epicardium, by its coded segmented property type or by its label
(case-insensitive glob patterns). A segment that maps to no role, or to two, is an error
(:class:`~lvtl.errors.LabelError`, one line naming the file and the segment), unless its label
matches ``ignore``. :func:`compose_labelmap` turns the masks into lvtl's 0/1/2 label map.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import highdicom as hd
import numpy as np

from lvtl.errors import LabelError, first_line
from lvtl.io.geometry import Geometry
from lvtl.labels import BLOOD_POOL, MYOCARDIUM, SEG_SEGMENTS

log = logging.getLogger(__name__)

#: A FRACTIONAL segment holds a voxel whose fraction is at least this.
FRACTION_THRESHOLD = 0.5


class Role(StrEnum):
    """What a segment is to lvtl."""

    BLOOD_POOL = "blood_pool"
    MYOCARDIUM = "myocardium"
    EPICARDIUM = "epicardium"  # the whole LV inside the epicardium: blood pool and myocardium
    IGNORE = "ignore"


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}" + (f" {self.meaning!r}" if self.meaning else "")

    def matches(self, pattern: str) -> bool:
        """Whether ``pattern`` ``SCHEME:VALUE`` or ``SCHEME:VALUE:MEANING`` names this code (the
        meaning, when given, compared case-insensitively)."""
        scheme, _, rest = pattern.partition(":")
        value, _, meaning = rest.partition(":")
        return (scheme.strip().upper() == self.scheme.upper() and value.strip() == self.value
                and (not meaning or meaning.strip().lower() == self.meaning.lower()))


@dataclass(frozen=True)
class Segment:
    """One segment: its label, its coded segmented property (category and type, where the file
    has them) and its mask (bool, on the file's grid)."""

    label: str
    mask: np.ndarray
    property_type: Code | None = None
    property_category: Code | None = None

    def describe(self) -> str:
        return f"{self.label!r}" + (f" ({self.property_type})" if self.property_type else "")


def _lvtl_codes(value: int) -> tuple[str, ...]:
    # with their meaning: a tool may code the whole LV (blood pool and wall) as SCT 87878005
    # "Left ventricular structure"; only lvtl's own code and meaning say "blood pool"
    return tuple(f"SCT:{code}:{meaning}" for v, _, code, meaning in SEG_SEGMENTS if v == value)


@dataclass(frozen=True)
class RoleMapping:
    """Which segments are blood pool, myocardium or the whole LV (inside the epicardium).

    Labels match glob patterns (``fnmatch``, case-insensitive; ``*`` any text); coded
    segmented property types match ``SCHEME:VALUE`` or ``SCHEME:VALUE:MEANING``. The default
    patterns take a label that names the LV or names no chamber ("LV blood pool", "Left
    ventricle cavity", "myocardium", "LV epi"), never another chamber's ("RV blood pool",
    "LA myocardium", "pericardial cavity": errors until mapped or ignored); the default codes
    are the ones lvtl writes (:data:`lvtl.labels.SEG_SEGMENTS`, with their meanings) and
    SCT 49848007 (left ventricle myocardium).

    Args:
        blood_pool: label patterns of the LV blood pool (cavity, inside the endocardium).
        myocardium: label patterns of the LV myocardium.
        epicardium: label patterns of the whole LV inside the epicardium (blood pool and
            myocardium; where a blood-pool segment overlaps it, that voxel is blood pool).
        ignore: label patterns of segments to leave out (other structures).
        blood_pool_codes: property-type codes of the blood pool.
        myocardium_codes: property-type codes of the myocardium.
        epicardium_codes: property-type codes of the whole LV.
    """

    blood_pool: tuple[str, ...] = ("blood pool", "lv*blood*", "left*ventric*blood*", "cavity",
                                   "lv*cavity*", "left*ventric*cavity*", "endocardium",
                                   "lv*endo*", "left*ventric*endo*")
    myocardium: tuple[str, ...] = ("myocardium", "lv*myo*", "left*ventric*myo*", "lv*wall*",
                                   "left*ventric*wall*")
    epicardium: tuple[str, ...] = ("epicardium", "lv*epicard*", "lv*epi", "left*ventric*epi*")
    ignore: tuple[str, ...] = ()
    blood_pool_codes: tuple[str, ...] = _lvtl_codes(BLOOD_POOL)
    myocardium_codes: tuple[str, ...] = (*_lvtl_codes(MYOCARDIUM), "SCT:49848007")
    epicardium_codes: tuple[str, ...] = ()

    def roles_of(self, label: str, code: Code | None) -> set[Role]:
        """Every role ``label`` and ``code`` map to ({IGNORE} for an ignored label)."""
        name = label.strip().lower()

        def hit(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(name, p.strip().lower()) for p in patterns)

        if hit(self.ignore):
            return {Role.IGNORE}
        return {role for role, patterns, codes in (
                    (Role.BLOOD_POOL, self.blood_pool, self.blood_pool_codes),
                    (Role.MYOCARDIUM, self.myocardium, self.myocardium_codes),
                    (Role.EPICARDIUM, self.epicardium, self.epicardium_codes))
                if hit(patterns) or (code is not None and any(code.matches(c) for c in codes))}


class HasSegments(Protocol):
    """A label file read into segments: :class:`SegLabels`, :class:`lvtl.io.nrrd.NrrdLabels`."""

    @property
    def path(self) -> Path: ...

    @property
    def geometry(self) -> Geometry: ...

    @property
    def segments(self) -> Mapping[Any, Segment]: ...


def segment_roles(labels: HasSegments, mapping: RoleMapping | None = None) -> dict[Any, Role]:
    """The role of each segment of ``labels`` (key as in ``labels.segments``). A segment that
    maps to no role or to two raises :class:`LabelError` naming the file and the segment."""
    mapping = mapping or RoleMapping()
    roles = {}
    for key, seg in labels.segments.items():
        found = mapping.roles_of(seg.label, seg.property_type)
        what = f"{labels.path}: segment {'' if key == seg.label else f'{key} '}{seg.describe()}"
        if not found:
            raise LabelError(f"{what} is neither blood pool nor myocardium by its label or code; "
                             "map it in the site's label mapping or list it under ignore")
        if len(found) > 1:
            raise LabelError(f"{what} maps to several labels "
                             f"({', '.join(sorted(r.value for r in found))})")
        roles[key] = found.pop()
    return roles


def compose_labelmap(segments: Mapping[Any, Segment], roles: Mapping[Any, Role],
                     shape: tuple[int, ...]) -> np.ndarray:
    """lvtl's ``uint8`` label map (0 background, 1 blood pool, 2 myocardium) of ``shape`` from
    segment masks and their roles. Where segments overlap: a myocardium segment wins over a
    blood-pool one (papillary muscles drawn inside the cavity stay myocardium), a blood-pool
    segment over a whole-LV (epicardium) one."""
    union = {r: np.zeros(shape, bool) for r in Role}
    for key, seg in segments.items():
        union[roles[key]] |= seg.mask
    out = np.zeros(shape, np.uint8)
    out[union[Role.EPICARDIUM]] = MYOCARDIUM
    out[union[Role.BLOOD_POOL]] = BLOOD_POOL
    out[union[Role.MYOCARDIUM]] = MYOCARDIUM
    return out


@dataclass(frozen=True)
class SegLabels:
    """A DICOM SEG as lvtl reads it.

    ``segments``: segment number -> :class:`Segment` (mask ``(z, y, x)`` bool on
    ``geometry``, the SEG's own grid). ``referenced_sop_uids``: every image the SEG names
    (ReferencedSeriesSequence, per-frame DerivationImageSequence/SourceImageSequence and the
    top-level SourceImageSequence), in file order without repeats.
    """

    path: Path
    segmentation_type: str  # BINARY, FRACTIONAL or LABELMAP
    segments: dict[int, Segment]
    geometry: Geometry
    frame_of_reference: str
    referenced_series_uids: tuple[str, ...]
    referenced_sop_uids: tuple[str, ...]
    series_uid: str = ""
    description: str = ""

    @property
    def referenced_series_uid(self) -> str:
        """The one referenced series ("" when none; the first when several)."""
        return self.referenced_series_uids[0] if self.referenced_series_uids else ""


def _code(concept: object) -> Code | None:
    if concept is None:
        return None
    return Code(str(concept.value), str(concept.scheme_designator),  # type: ignore[attr-defined]
                str(concept.meaning))  # type: ignore[attr-defined]


def _references(ds: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    series: dict[str, None] = {}
    sops: dict[str, None] = {}
    for item in getattr(ds, "ReferencedSeriesSequence", []):
        series[str(item.SeriesInstanceUID)] = None
        for ref in item.get("ReferencedInstanceSequence", []):
            sops[str(ref.ReferencedSOPInstanceUID)] = None
    for frame in getattr(ds, "PerFrameFunctionalGroupsSequence", []):
        for der in frame.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                sops[str(src.ReferencedSOPInstanceUID)] = None
    for src in getattr(ds, "SourceImageSequence", []):
        sops[str(src.ReferencedSOPInstanceUID)] = None
    return tuple(series), tuple(sops)


def volume_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Geometry, bool]:
    """The lvtl :class:`Geometry` of an array whose 4x4 ``affine`` takes ``(slice, row,
    column)`` indices to LPS mm, and whether the slice axis must be reversed so that it runs
    along the slice normal (row direction x column direction), as lvtl orders slices."""
    steps = np.asarray(affine, float)[:3, :3].T  # row a: the LPS step along array axis a
    spacing = np.linalg.norm(steps, axis=1)
    direction = steps / spacing[:, None]
    origin = np.asarray(affine, float)[:3, 3]
    flip = bool(direction[0] @ np.cross(direction[2], direction[1]) < 0)
    if flip:
        origin = origin + steps[0] * (shape[0] - 1)
        direction[0] = 0.0 - direction[0]
    return Geometry.make(shape, spacing.tolist(), origin.tolist(), direction), flip


def read_seg(path: str | Path) -> SegLabels:
    """Read a DICOM SEG (BINARY, FRACTIONAL or LABELMAP) into per-segment masks on its own
    grid; :class:`LabelError` (one line naming the file) when it cannot be read, is not in
    patient coordinates, or its frames do not form one 3D grid."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        raise LabelError(f"{path}: cannot be read ({first_line(e)})") from None
    if len(head) < 132 or head[128:] != b"DICM":
        raise LabelError(f"{path}: not a DICOM file (no 'DICM' after the 128-byte preamble)")
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise LabelError(f"{path}: not a readable DICOM SEG ({first_line(e)})") from None
    if seg.coordinate_system != hd.CoordinateSystemNames.PATIENT:
        raise LabelError(f"{path}: the SEG is not in patient coordinates (no frame of "
                         "reference with plane positions), so it has no place on a CT series")
    try:
        grid = seg.get_volume_geometry(allow_missing_positions=True)
    except Exception as e:  # noqa: BLE001
        grid, why = None, first_line(e)
    else:
        why = "irregular slice spacing, or frames of several orientations"
    if grid is None:
        raise LabelError(f"{path}: its frames do not form one regular 3D grid ({why})")
    numbers = [int(n) for n in seg.segment_numbers]
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False,
                                rescale_fractional=True, allow_missing_positions=True)
    except Exception as e:  # noqa: BLE001 - truncated or malformed pixel data
        raise LabelError(f"{path}: its segmentation frames cannot be read "
                         f"({first_line(e)})") from None
    arr = volume.array
    geometry, flip = volume_geometry(volume.affine, tuple(arr.shape[:3]))  # type: ignore[arg-type]
    if flip:
        arr = arr[::-1]
    kind = seg.segmentation_type.value
    inside = arr >= FRACTION_THRESHOLD if kind == "FRACTIONAL" else arr != 0
    segments = {}
    for k, n in enumerate(numbers):
        desc = seg.get_segment_description(n)
        segments[n] = Segment(
            label=str(desc.segment_label), mask=np.ascontiguousarray(inside[..., k]),
            property_type=_code(desc.segmented_property_type),
            property_category=_code(desc.segmented_property_category))
    series, sops = _references(seg)
    return SegLabels(path=path, segmentation_type=kind, segments=segments, geometry=geometry,
                     frame_of_reference=str(seg.get("FrameOfReferenceUID", "")),
                     referenced_series_uids=series, referenced_sop_uids=sops,
                     series_uid=str(seg.get("SeriesInstanceUID", "")),
                     description=str(seg.get("SeriesDescription", "")))


def seg_labelmap(seg: SegLabels, mapping: RoleMapping | None = None
                 ) -> tuple[np.ndarray, Geometry]:
    """The SEG as lvtl's ``uint8`` label map ``(z, y, x)`` on its own grid, with that grid;
    segments mapped by :func:`segment_roles`, overlaps resolved by :func:`compose_labelmap`."""
    roles = segment_roles(seg, mapping)
    return compose_labelmap(seg.segments, roles, seg.geometry.shape), seg.geometry


def check_frame_of_reference(labels: object, series_for: str,
                             path: str | Path | None = None) -> None:
    """Refuse (:class:`LabelError` naming ``path``) a label whose frame of reference is not the
    series' ``series_for``; one without a frame of reference is refused too when the series
    has one. ``labels`` is anything with ``frame_of_reference`` (e.g. :class:`SegLabels`)."""
    name = path if path is not None else getattr(labels, "path", "label file")
    own = str(getattr(labels, "frame_of_reference", "") or "")
    if not series_for:
        return
    if not own:
        raise LabelError(f"{name}: has no frame of reference, so it cannot be tied to the "
                         f"series (frame of reference {series_for})")
    if own != series_for:
        raise LabelError(f"{name}: frame of reference {own} is not the series' ({series_for})")


def _mm(v) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def place_on(mask: np.ndarray, geometry: Geometry, target: Geometry, *,
             source: str | Path = "label") -> np.ndarray:
    """``mask`` (any dtype, ``(z, y, x)`` on ``geometry``) on ``target``'s grid, exactly: the
    grid must be a sub-grid of the target (the same spacing along the same axes, which may be
    reversed or swapped, and whole-voxel offsets). Target voxels outside the mask's grid are 0;
    mask voxels outside the target must be 0. Otherwise :class:`LabelError` naming
    ``source``. General resampling is the caller's."""
    if mask.shape != geometry.shape:
        raise ValueError(f"mask {mask.shape} does not have its geometry's shape {geometry.shape}")
    m = target.lps_to_index() @ geometry.index_to_lps()  # mask index -> target index
    rot = m[:3, :3]
    perm = np.abs(rot).argmax(axis=0)  # target axis of each mask axis
    sign = np.sign(rot[perm, np.arange(3)])
    scale = np.abs(rot[perm, np.arange(3)])  # mask spacing / target spacing along each axis
    off_axis = rot.copy()
    off_axis[perm, np.arange(3)] = 0.0
    corners = np.array([[z, y, x] for z in (0, mask.shape[0] - 1) for y in (0, mask.shape[1] - 1)
                        for x in (0, mask.shape[2] - 1)], float)
    at = corners @ rot.T + m[:3, 3]
    why = ""
    if sorted(perm) != [0, 1, 2] or np.abs(off_axis).max() > 1e-3:
        why = "orientation differs"
    elif np.abs(scale - 1.0).max() > 1e-3:
        why = (f"spacing {_mm(geometry.spacing)} mm, the series' {_mm(target.spacing)} mm")
    elif np.abs(at - np.rint(at)).max() > 1e-2:
        why = f"offset by {np.abs(at - np.rint(at)).max():.2f} voxel"
    if why:
        raise LabelError(f"{source}: its grid is not a sub-grid of the series' ({why}); "
                         "it needs resampling")
    # the mask in the target's axis order and directions
    arr = np.transpose(mask, np.argsort(perm))
    flips = tuple(int(a) for a in range(3) if sign[np.argsort(perm)][a] < 0)
    arr = np.flip(arr, flips) if flips else arr
    start = np.rint(at.min(axis=0)).astype(int)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + arr.shape, target.shape)
    inner = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    if (hi <= lo).any():
        if arr.any():
            raise LabelError(f"{source}: lies wholly outside the series' grid")
        return np.zeros(target.shape, mask.dtype)
    kept = arr[inner]
    if np.count_nonzero(kept) != np.count_nonzero(arr):
        raise LabelError(f"{source}: {np.count_nonzero(arr) - np.count_nonzero(kept)} labelled "
                         "voxels lie outside the series' grid")
    out = np.zeros(target.shape, mask.dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = kept
    return out


__all__ = ["FRACTION_THRESHOLD", "Role", "Code", "Segment", "RoleMapping", "SegLabels",
           "read_seg", "segment_roles", "compose_labelmap", "seg_labelmap",
           "check_frame_of_reference", "place_on", "volume_geometry"]
