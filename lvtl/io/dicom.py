"""Ingest a multi-phase CT series (the writer is :mod:`lvtl.io.dicom_write`).

Ingestion turns a folder of DICOM files into a 4D array ``(t, z, y, x)`` of HU with its
geometry. Files are grouped by cardiac phase, slices are ordered by their position along the
slice normal (never by file name or InstanceNumber), rescale is applied, and the series is
checked for consistency. Reading is streamed: headers first (pixel data deferred), then one
phase at a time, so a paper-size series (4000 files, 2 GB) never sits in memory whole.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import keyword_dict as keyword_tags
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lvtl.errors import DicomError, SeriesProblems, first_line
from lvtl.io.geometry import Geometry

log = logging.getLogger(__name__)

_POS_TOL_MM = 0.01
_DIR_TOL = 1e-4


@dataclass
class SliceHeader:
    """What ingestion needs from one file (no dataset is kept: 4000 of them would cost more
    memory than a phase of pixels); pixel data is read later."""

    path: Path
    phase_key: float
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int
    instance: int | None = None
    pixel_offset: int | None = None  # file offset of native little-endian 16-bit pixels
    pixel_dtype: str = "<i2"
    slope: float = 1.0
    intercept: float = 0.0
    phase_tag: str = "none"
    n_temporal: int | None = None
    series_uid: str = ""
    slice_thickness: float | None = None


@dataclass
class SeriesIndex:
    """A scanned series: per phase (in cardiac order) the slices ordered along the normal."""

    folder: Path
    phases: list[list[SliceHeader]]
    phase_keys: list[float]
    phase_tag: str
    geometry: Geometry
    skipped: list[str]
    series_uid: str
    first_header: Dataset | None = None  # header (no pixels) of one file, for reporting

    @property
    def n_phases(self) -> int:
        return len(self.phases)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n_phases, *self.geometry.shape)

    def iter_slices(self, t: int) -> Iterator[np.ndarray]:
        """The slices ``(y, x)`` float32 HU of phase ``t``, in order along the normal."""
        for sl in self.phases[t]:
            yield _pixels_hu(sl)

    def read_phase(self, t: int) -> np.ndarray:
        """HU image ``(z, y, x)`` float32 of phase ``t``."""
        out = np.empty(self.geometry.shape, np.float32)
        for k, sl in enumerate(self.iter_slices(t)):
            out[k] = sl
        return out

    def iter_phases(self) -> Iterator[tuple[int, np.ndarray]]:
        for t in range(self.n_phases):
            yield t, self.read_phase(t)

    def read_all(self) -> np.ndarray:
        """The whole series ``(t, z, y, x)`` float32 HU (holds every phase in memory)."""
        return np.stack([self.read_phase(t) for t in range(self.n_phases)])


_PHASE_TAGS = (
    "TemporalPositionIndex",
    "NominalPercentageOfCardiacPhase",
    "TriggerTime",
    "TemporalPositionIdentifier",
)


def _pixels_hu(sl: SliceHeader) -> np.ndarray:
    """One slice in HU (float32), rescale applied."""
    n = sl.rows * sl.cols
    try:
        if sl.pixel_offset is not None:
            with open(sl.path, "rb") as fh:
                fh.seek(sl.pixel_offset)
                raw = fh.read(2 * n)
            if len(raw) < 2 * n:
                raise DicomError(f"{sl.path}: pixel data truncated ({len(raw)} of {2 * n} bytes)")
            arr = np.frombuffer(raw, dtype=sl.pixel_dtype, count=n).reshape(sl.rows, sl.cols)
        else:  # compressed or unusual encodings: let pydicom decode
            arr = pydicom.dcmread(sl.path).pixel_array
    except DicomError:
        raise
    except Exception as e:  # pydicom raises many types on broken pixel data
        raise DicomError(f"{sl.path}: cannot decode pixel data ({e})") from e
    out = arr.astype(np.float32)
    if sl.slope != 1.0:
        out *= np.float32(sl.slope)
    if sl.intercept != 0.0:
        out += np.float32(sl.intercept)
    return out


def _read_header(path: Path) -> Dataset | None:
    """The dataset with pixel data deferred; None for a file that is not DICOM at all.

    Raises (``EOFError`` and others) for a DICOM file that is cut short or unreadable.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, defer_size=1024)
        except InvalidDicomError:
            return None
    # pydicom stops quietly at the end of a cut file; a file cut before its pixel data would
    # otherwise pass as one without modality or pixel data (a cut inside the pixel data is
    # reported by _check_header)
    for group in (ds.file_meta, ds):
        if not group._dict:
            continue
        last = max(group._dict)
        if last == 0x7FE00010:
            continue
        elem = group.get_item(last, keep_deferred=True)
        tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
        if tell is None or length in (None, 0xFFFFFFFF):
            continue
        if tell + length > size:
            raise EOFError(f"file ends at byte {size}, inside element {last}")
        if group is ds and 0 < size - (tell + length) < 8:
            raise EOFError(f"file ends at byte {size}, inside the element after {last}")
    if not ds._dict:
        raise EOFError("no data set after the file meta information")
    return ds


def scan_series(folder: str | Path) -> SeriesIndex:
    """Scan a folder of DICOM files (recursively) into a checked :class:`SeriesIndex`.

    Non-DICOM files are skipped with a warning. Every problem found is collected and raised
    together as :class:`~lvtl.errors.SeriesProblems`, each naming the file or phase.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder")
    problems: list[str] = []
    skipped: list[str] = []
    headers: list[SliceHeader] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    series_uids: set[str] = set()
    first: Dataset | None = None
    for path in files:
        try:
            ds = _read_header(path)
        except Exception as e:
            problems.append(f"{path.name}: truncated or unreadable DICOM ({first_line(e)})")
            continue
        if ds is None:
            skipped.append(path.name)
            log.warning("%s: not a DICOM file, skipped", path)
            continue
        sl = _check_header(path, ds, problems)
        if sl is not None:
            headers.append(sl)
            series_uids.add(sl.series_uid)
            if first is None:
                first = ds
                del first.PixelData
    if not headers and not problems:
        raise DicomError(f"{folder}: no DICOM files found")
    if len(series_uids) > 1:
        problems.append(f"{len(series_uids)} series in one folder (expected one)")
    index = None
    if headers:
        index = _build_index(folder, headers, problems, skipped)
    if index is not None:
        index.first_header = first
    if problems or index is None:
        raise SeriesProblems(str(folder), problems)
    return index


_STRUCT = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i", "FL": "<f", "FD": "<d"}


def _value(ds: Dataset, keyword: str):
    """An attribute's value: numbers as a float or a list of floats, text as str, None when
    absent or empty. Reads explicit-VR little-endian raw elements directly (pydicom's value
    conversion costs more than the rest of the header scan)."""
    tag = keyword_tags[keyword]
    elem = ds._dict.get(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.VR is not None:
        raw = elem.value or b""
        vr = elem.VR
        if vr in _STRUCT:
            code = _STRUCT[vr][1]
            n = len(raw) // struct.calcsize(code)
            size = n * struct.calcsize(code)
            vals = [float(v) for v in struct.unpack(f"<{n}{code}", raw[:size])]
            return None if not vals else vals[0] if n == 1 else vals
        text = raw.decode("latin-1").strip(" \x00")
        if vr in ("DS", "IS"):
            parts = [float(v) for v in text.split("\\") if v.strip()]
            return None if not parts else parts[0] if len(parts) == 1 else parts
        return text or None
    value = ds[tag].value
    if value in (None, ""):
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [float(v) for v in value]
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def _check_header(path: Path, ds: Dataset, problems: list[str]) -> SliceHeader | None:
    name = path.name
    try:
        modality = _value(ds, "Modality")
        if modality != "CT":
            problems.append(f"{name}: modality {modality or '(none)'} is not CT")
            return None
        if 0x7FE00010 not in ds._dict:
            problems.append(f"{name}: no pixel data")
            return None
        geo = {k: _value(ds, k) for k in ("ImagePositionPatient", "ImageOrientationPatient",
                                          "PixelSpacing", "Rows", "Columns")}
        missing = [k for k, v in geo.items() if v is None]
        if missing:
            problems.append(f"{name}: missing {', '.join(missing)}")
            return None
        key = next((v for v in (_value(ds, t) for t in _PHASE_TAGS) if v is not None), None)
        pos = np.asarray(geo["ImagePositionPatient"], float)
        ori = np.asarray(geo["ImageOrientationPatient"], float)
        ps = np.asarray(geo["PixelSpacing"], float)
        rows, cols = int(geo["Rows"]), int(geo["Columns"])
        bits = int(_value(ds, "BitsAllocated") or 16)
        expected = rows * cols * bits // 8 * int(_value(ds, "SamplesPerPixel") or 1)
        if isinstance(key, list):
            raise ValueError("multi-valued phase attribute")
    except (ValueError, TypeError, struct.error, UnicodeDecodeError) as e:
        problems.append(f"{name}: malformed header value ({first_line(e)})")
        return None
    if pos.shape != (3,) or ori.shape != (6,) or ps.shape != (2,) or min(ps) <= 0:
        problems.append(f"{name}: malformed geometry attributes")
        return None
    elem = ds.get_item("PixelData", keep_deferred=True)
    ts = ds.file_meta.TransferSyntaxUID
    length = getattr(elem, "length", None)
    if length is None and elem.value is not None:
        length = len(elem.value)
    tell = getattr(elem, "value_tell", None)
    if not ts.is_compressed and length is not None and length != 0xFFFFFFFF:
        if length < expected:
            problems.append(f"{name}: pixel data truncated ({length} of {expected} bytes)")
            return None
        if tell is not None and path.stat().st_size < tell + expected:
            problems.append(f"{name}: file truncated inside pixel data")
            return None
    native = (not ts.is_compressed and ts.is_little_endian and bits == 16
              and int(_value(ds, "SamplesPerPixel") or 1) == 1 and tell is not None)
    signed = int(_value(ds, "PixelRepresentation") or 0) == 1
    ntp = _value(ds, "NumberOfTemporalPositions")
    instance = _value(ds, "InstanceNumber")
    thickness = _value(ds, "SliceThickness")
    return SliceHeader(
        path, key if key is not None else np.nan, pos, ori, (float(ps[0]), float(ps[1])), rows,
        cols, instance=None if instance is None else int(instance),
        pixel_offset=tell if native else None, pixel_dtype="<i2" if signed else "<u2",
        slope=float(_value(ds, "RescaleSlope") or 1.0),
        intercept=float(_value(ds, "RescaleIntercept") or 0.0),
        phase_tag=next((t for t in _PHASE_TAGS if _value(ds, t) is not None), "none"),
        n_temporal=None if not ntp else int(ntp),
        series_uid=str(_value(ds, "SeriesInstanceUID") or ""),
        slice_thickness=None if thickness is None else float(thickness))


def _build_index(folder: Path, headers: list[SliceHeader], problems: list[str],
                 skipped: list[str]) -> SeriesIndex | None:
    if any(np.isnan(h.phase_key) for h in headers):
        if all(np.isnan(h.phase_key) for h in headers):
            tag = "none"
            for h in headers:
                h.phase_key = 0.0
        else:
            bad = [h.path.name for h in headers if np.isnan(h.phase_key)][:3]
            problems.append(f"no cardiac phase attribute in {', '.join(bad)}")
            return None
    tag = headers[0].phase_tag
    groups: dict[float, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        groups[round(h.phase_key, 4)].append(h)
    keys = sorted(groups)
    ref = headers[0]
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        problems.append(f"{ref.path.name}: ImageOrientationPatient is not two orthonormal vectors")
        return None
    phases: list[list[SliceHeader]] = []
    positions: list[np.ndarray] = []
    for key in keys:
        sl = groups[key]
        label = f"phase {_phase_label(tag, key)}"
        ori = np.array([h.orientation for h in sl])
        bad_ori = np.flatnonzero(np.abs(ori - ref.orientation).max(axis=1) > _DIR_TOL)
        if len(bad_ori):
            problems.append(f"{label}: mixed orientation ({sl[bad_ori[0]].path.name} differs)")
        spacing = np.array([h.pixel_spacing for h in sl])
        bad_sp = np.flatnonzero(np.abs(spacing - ref.pixel_spacing).max(axis=1) > 1e-4)
        if len(bad_sp):
            problems.append(f"{label}: mixed pixel spacing ({sl[bad_sp[0]].path.name} differs)")
        bad_dim = [h.path.name for h in sl if (h.rows, h.cols) != (ref.rows, ref.cols)]
        if bad_dim:
            problems.append(f"{label}: mixed matrix size ({bad_dim[0]} differs)")
        sl.sort(key=lambda h: float(h.position @ normal))
        along = np.array([h.position @ normal for h in sl])
        steps = np.diff(along)
        dup = np.nonzero(steps < _POS_TOL_MM)[0]
        if len(dup):
            problems.append(f"{label}: duplicate slice position {along[dup[0]]:.2f} mm "
                            f"({sl[dup[0]].path.name}, {sl[dup[0] + 1].path.name})")
        elif len(steps):
            step = float(np.median(steps))
            gaps = np.nonzero(np.abs(steps - step) > max(_POS_TOL_MM, 0.05 * step))[0]
            if len(gaps):
                g = gaps[0]
                problems.append(f"{label}: missing slice between {along[g]:.2f} and "
                                f"{along[g + 1]:.2f} mm (spacing {step:.3g} mm elsewhere)")
            shift = np.array([h.position for h in sl]) - sl[0].position
            if (np.abs(shift @ row) + np.abs(shift @ col)).max() > _POS_TOL_MM * 10:
                problems.append(f"{label}: slices are not stacked along the normal "
                                "(shifted or tilted positions)")
        phases.append(sl)
        positions.append(along)
    counts = [len(p) for p in phases]
    if len(set(counts)) > 1:
        common = max(set(counts), key=counts.count)
        odd = [f"{_phase_label(tag, k)} ({c})" for k, c in zip(keys, counts, strict=True)
               if c != common]
        problems.append(f"phases have different slice counts: {common} expected, "
                        f"phase {', '.join(odd[:4])}")
    else:
        for key, along in zip(keys[1:], positions[1:], strict=True):
            if not np.allclose(along, positions[0], atol=_POS_TOL_MM * 10):
                problems.append(f"phase {_phase_label(tag, key)}: slice positions differ from "
                                f"phase {_phase_label(tag, keys[0])}")
                break
    expected = _expected_phases(tag, keys, headers)
    if expected is not None and expected > len(keys):
        problems.append(f"missing phase: {len(keys)} of {expected} phases present"
                        f"{_missing_phase_list(tag, keys, expected)}")
    if problems:
        return None
    sl0 = phases[0]
    steps = np.diff(positions[0])
    dz = float(np.median(steps)) if len(steps) else (ref.slice_thickness or 1.0)
    direction = np.stack([normal, col, row])
    geometry = Geometry.make((len(sl0), ref.rows, ref.cols),
                             (dz, ref.pixel_spacing[0], ref.pixel_spacing[1]),
                             sl0[0].position, direction)
    return SeriesIndex(folder, phases, keys, tag, geometry, skipped,
                       ref.series_uid)


def _phase_label(tag: str, key: float) -> str:
    if tag == "NominalPercentageOfCardiacPhase":
        return f"{key:g}%"
    if tag == "TriggerTime":
        return f"{key:g} ms"
    return f"{key:g}"


def _expected_phases(tag: str, keys: list[float], headers: list[SliceHeader]) -> int | None:
    n = {h.n_temporal for h in headers if h.n_temporal}
    if len(n) == 1:
        return n.pop()
    if tag == "NominalPercentageOfCardiacPhase" and len(keys) > 2:
        step = min(np.diff(keys))
        return int(round(100.0 / step)) if step > 0 else None
    if tag in ("TemporalPositionIndex", "TemporalPositionIdentifier"):
        return int(max(keys))
    return None


def _missing_phase_list(tag: str, keys: list[float], expected: int) -> str:
    if tag in ("TemporalPositionIndex", "TemporalPositionIdentifier"):
        missing = sorted(set(range(1, expected + 1)) - {int(k) for k in keys})
        return f" (missing {', '.join(str(m) for m in missing[:6])})"
    return ""


def load_series(folder: str | Path) -> tuple[np.ndarray, Geometry]:
    """Convenience: the whole series as ``(t, z, y, x)`` float32 HU and its geometry."""
    index = scan_series(folder)
    return index.read_all(), index.geometry

