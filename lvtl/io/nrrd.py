"""NRRD label maps (ITK-SNAP, 3D Slicer's "labelmap" export) and 3D Slicer segmentations
(``.seg.nrrd``), read into lvtl's ``(z, y, x)`` order with their geometry in LPS.

**The file** is read by pynrrd (MIT, maintained; every NRRD encoding — raw, gzip, bzip2, ascii
— attached or detached ``.nhdr`` headers, and the typed header fields). lvtl adds the geometry:

* ``space`` names the patient axes of ``space directions`` and ``space origin``:
  ``left-posterior-superior`` (LPS, DICOM's), ``right-anterior-superior`` (RAS) or
  ``left-anterior-superior`` (LAS); RAS and LAS vectors are turned into LPS by negating
  their first two, resp. second component. Other spaces (``scanner-xyz``, time-varying
  spaces) and files without ``space``, ``space directions`` or ``space origin`` are refused:
  their place in the patient is unknown.
* ``space origin`` is the centre of the first sample (NRRD spec); the three ``domain`` axes
  with a space direction are x (fastest), y, z: the array is returned ``(z, y, x)``, with
  spacing the length of each direction vector.
* One further axis without a space direction (``kinds`` ``list``, ``vector``, ...) holds the
  layers of a Slicer segmentation; the array is then ``(layer, z, y, x)``.

**Slicer segmentations** (format: Slicer's developer guide, "Segmentation labelmap file format
(.seg.nrrd)") store segment ``N``'s metadata in ``SegmentN_ID``, ``SegmentN_Name``,
``SegmentN_LabelValue`` (its value in its layer; default 1), ``SegmentN_Layer`` (its layer;
default 0, or ``N`` in files of Slicer before 4.11 that had one layer per segment) and
``SegmentN_Tags`` (``TerminologyEntry:`` with the segmented property category and type as
``SCHEME^VALUE^MEANING``); overlapping segments lie in different layers. A file of a single
voxel is an empty segmentation (refused). Each segment becomes a mask keyed by its name;
roles follow :class:`lvtl.io.seg_read.RoleMapping` (names as segment labels, the terminology's
type as the coded property type). A plain label map has no segments: its values are mapped by
:func:`nrrd_labelmap`'s ``blood_pool_value`` and ``myocardium_value``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np

from lvtl.errors import LabelError, first_line
from lvtl.io.atomic import atomic_path
from lvtl.io.geometry import Geometry
from lvtl.io.seg_read import Code, RoleMapping, Segment, compose_labelmap, segment_roles
from lvtl.labels import BLOOD_POOL, MYOCARDIUM

#: NRRD ``space`` -> sign flips turning its vectors into LPS.
SPACES: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0), "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0), "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0), "las": (1.0, -1.0, 1.0),
}

#: A header claiming more voxels than this is refused unread.
MAX_VOXELS = 2**31

_SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(\w+)$")


@dataclass(frozen=True)
class NrrdLabels:
    """An NRRD label file as lvtl reads it.

    ``array``: ``(z, y, x)``, or ``(layer, z, y, x)`` for a layered Slicer segmentation, as
    stored (dtype kept). ``geometry``: its grid in LPS. ``segments``: segment name ->
    :class:`~lvtl.io.seg_read.Segment` (mask on ``geometry``), empty for a plain label map;
    ``segment_values``: segment name -> (layer, label value).
    """

    path: Path
    array: np.ndarray
    geometry: Geometry
    space: str
    segments: dict[str, Segment]
    segment_values: dict[str, tuple[int, int]]

    @property
    def is_segmentation(self) -> bool:
        """A Slicer segmentation (segments by name) rather than a plain label map."""
        return bool(self.segments)


def _header(path: Path) -> dict:
    try:
        return nrrd.read_header(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable header is reported the same way
        raise LabelError(f"{path}: not a readable NRRD header ({first_line(e)})") from None


def _layout(header: dict, path: Path) -> tuple[Geometry, int | None, str]:
    """The grid of the domain axes, the NRRD index of the layer axis (None when 3D), and
    ``space``."""
    missing = [k for k in ("type", "dimension", "sizes", "encoding") if k not in header]
    if missing:
        raise LabelError(f"{path}: NRRD header without the required field(s) "
                         f"{', '.join(missing)} (truncated?)")
    space = str(header.get("space", "")).strip()
    flips = SPACES.get(space.lower())
    if flips is None:
        raise LabelError(f"{path}: NRRD space {space or 'missing'!r} is not a patient space "
                         f"(one of {', '.join(s for s in SPACES if len(s) > 3)}); its place "
                         "in the patient is unknown")
    sizes = [int(s) for s in header.get("sizes", [])]
    dirs = header.get("space directions")
    origin = header.get("space origin")
    if dirs is None or origin is None:
        absent = "space directions" if dirs is None else "space origin"
        raise LabelError(f"{path}: NRRD without {absent}; its place in the patient is unknown")
    dirs = np.asarray(dirs, float)
    spatial = [a for a in range(len(sizes)) if np.isfinite(dirs[a]).all()]
    others = [a for a in range(len(sizes)) if a not in spatial]
    if len(spatial) != 3 or len(others) > 1:
        raise LabelError(f"{path}: NRRD with {len(spatial)} spatial and {len(others)} other "
                         "axes; a label file has 3 spatial axes and at most one layer axis")
    if int(np.prod(sizes, dtype=np.int64)) > MAX_VOXELS:
        raise LabelError(f"{path}: NRRD sizes {sizes} are too large for a label file")
    flip = np.asarray(flips)
    steps = dirs[spatial] * flip  # LPS steps along x, y, z
    spacing = np.linalg.norm(steps, axis=1)
    if (spacing <= 0).any():
        raise LabelError(f"{path}: NRRD space directions of zero length")
    shape = [sizes[a] for a in reversed(spatial)]
    try:
        geometry = Geometry.make(shape, spacing[::-1], np.asarray(origin, float) * flip,
                                 (steps / spacing[:, None])[::-1])
    except ValueError as e:
        raise LabelError(f"{path}: NRRD axes are not orthogonal ({first_line(e)})") from None
    return geometry, (others[0] if others else None), space


def nrrd_geometry(path: str | Path) -> Geometry:
    """The LPS grid of an NRRD label file from its header alone (nothing else read)."""
    path = Path(path)
    return _layout(_header(path), path)[0]


def _terminology_type(tags: str) -> tuple[Code | None, Code | None]:
    """(category, type) of a Slicer ``SegmentN_Tags`` value's ``TerminologyEntry``."""
    for tag in tags.split("|"):
        key, _, value = tag.partition(":")
        if key.strip() != "TerminologyEntry":
            continue
        parts = value.split("~")
        codes = []
        for part in parts[1:3]:
            bits = (part.split("^") + ["", "", ""])[:3]
            codes.append(Code(bits[1], bits[0], bits[2]) if bits[0] and bits[1] else None)
        while len(codes) < 2:
            codes.append(None)
        return codes[0], codes[1]
    return None, None


def _values(arr: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array (bincount for small unsigned types)."""
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(arr.ravel()))
    return np.unique(arr)


def _segments(header: dict, layers: np.ndarray, path: Path
              ) -> tuple[dict[str, Segment], dict[str, tuple[int, int]]]:
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        m = _SEGMENT_FIELD.match(key)
        if m:
            fields.setdefault(int(m.group(1)), {})[m.group(2)] = str(value)
    if not fields:
        return {}, {}
    one_per_layer = not any("Layer" in f for f in fields.values()) and len(layers) > 1
    segments, where = {}, {}
    for n in sorted(fields):
        f = fields[n]
        name = f.get("Name", f.get("ID", f"Segment_{n}")).strip()
        try:
            layer = int(f.get("Layer", n if one_per_layer else 0))
            value = int(f.get("LabelValue", 1))
        except ValueError:
            raise LabelError(f"{path}: segment {n} {name!r} has a layer or label value that is "
                             "not an integer") from None
        if not 0 <= layer < len(layers):
            raise LabelError(f"{path}: segment {n} {name!r} is in layer {layer} but the file has "
                             f"{len(layers)}")
        if name in segments:
            raise LabelError(f"{path}: two segments are named {name!r}; names must be unique "
                             "to map them")
        category, kind = _terminology_type(f.get("Tags", ""))
        segments[name] = Segment(label=name, mask=layers[layer] == value, property_type=kind,
                                 property_category=category)
        where[name] = (layer, value)
    for layer in range(len(layers)):
        declared = {v for lay, v in where.values() if lay == layer} | {0}
        stray = [int(v) for v in _values(layers[layer]) if int(v) not in declared]
        if stray:
            raise LabelError(f"{path}: layer {layer} holds value(s) "
                             f"{', '.join(map(str, stray[:8]))} that no segment declares")
    return segments, where


def read_nrrd(path: str | Path) -> NrrdLabels:
    """Read an NRRD label map or a 3D Slicer ``.seg.nrrd`` (see the module's description);
    :class:`LabelError` (one line naming the file) when it cannot be read or placed."""
    path = Path(path)
    header = _header(path)
    geometry, layer_axis, space = _layout(header, path)
    try:
        data, _ = nrrd.read(str(path), index_order="C")
    except Exception as e:  # noqa: BLE001 - truncated or malformed data
        raise LabelError(f"{path}: NRRD data cannot be read ({first_line(e)})") from None
    if data.dtype.kind not in "biuf":
        raise LabelError(f"{path}: NRRD of type {data.dtype} is not a label map")
    if data.size == 1:
        raise LabelError(f"{path}: holds no voxel data (an empty 3D Slicer segmentation)")
    if layer_axis is not None:
        data = np.moveaxis(data, data.ndim - 1 - layer_axis, 0)
    layers = data if layer_axis is not None else data[None]
    segments, where = _segments(header, layers, path)
    if segments and data.dtype.kind == "f":
        raise LabelError(f"{path}: a segmentation of type {data.dtype}; label values must "
                         "be integers")
    return NrrdLabels(path=path, array=data, geometry=geometry, space=space,
                      segments=segments, segment_values=where)


def nrrd_labelmap(labels: NrrdLabels, mapping: RoleMapping | None = None, *,
                  blood_pool_value: int = BLOOD_POOL, myocardium_value: int = MYOCARDIUM
                  ) -> tuple[np.ndarray, Geometry]:
    """lvtl's ``uint8`` label map ``(z, y, x)`` of an NRRD file on its own grid, with that
    grid: a Slicer segmentation's segments by role (``mapping``, see
    :func:`lvtl.io.seg_read.segment_roles`); a plain label map's values by
    ``blood_pool_value`` and ``myocardium_value`` (0 background), any other value refused
    (:class:`LabelError` naming the file and the values)."""
    if labels.segments:
        roles = segment_roles(labels, mapping)
        return compose_labelmap(labels.segments, roles, labels.geometry.shape), labels.geometry
    arr = labels.array
    if arr.ndim != 3:
        raise LabelError(f"{labels.path}: a label map of {arr.ndim} dimensions without segment "
                         "metadata; one 3D label map is expected")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.rint(arr)):
            raise LabelError(f"{labels.path}: label values are not integers")
        arr = arr.astype(np.int64)
    allowed = {0, int(blood_pool_value), int(myocardium_value)}
    stray = [int(v) for v in _values(arr) if int(v) not in allowed]
    if stray:
        raise LabelError(
            f"{labels.path}: values {', '.join(map(str, stray[:8]))}"
            f"{' ...' if len(stray) > 8 else ''} are outside the mapping (0 background, "
            f"{blood_pool_value} blood pool, {myocardium_value} myocardium)")
    out = np.zeros(arr.shape, np.uint8)
    out[arr == blood_pool_value] = BLOOD_POOL
    out[arr == myocardium_value] = MYOCARDIUM
    return out, labels.geometry


__all__ = ["SPACES", "MAX_VOXELS", "NrrdLabels", "read_nrrd", "nrrd_geometry", "nrrd_labelmap"]


def write_nrrd(path: str | Path, labels: np.ndarray, geometry: Geometry) -> Path:
    """Write a ``(z, y, x)`` label map as a gzip NRRD in LPS (axes x, y, z as the spec
    orders them), atomically; returns the path."""
    path = Path(path)
    if labels.shape != geometry.shape:
        raise ValueError(f"labels {labels.shape} are not on the geometry {geometry.shape}")
    d, sp = geometry.direction_matrix, geometry.spacing
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3,
              "encoding": "gzip",
              "space directions": np.stack([d[2] * sp[2], d[1] * sp[1], d[0] * sp[0]]),
              "space origin": np.asarray(geometry.origin, float)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(labels.transpose(2, 1, 0)), header)
    return path
