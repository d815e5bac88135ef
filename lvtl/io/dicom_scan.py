"""The files of an export, one header each: what is a CT image, what is skipped, and why.

:func:`scan_files` walks a folder (any depth) and reads every file's header (pixel data
deferred). Each CT image becomes one :class:`SliceHeader` per 2D image: a classic CT file is
one, an Enhanced CT (multi-frame) object is one per frame, with the geometry, rescale and
cardiac phase of its per-frame and shared functional groups. Everything else an exam or CD
export holds is skipped by kind (:class:`Skip`): the DICOMDIR, structured reports (dose
reports), presentation states, key object selections, secondary captures (dose screens),
colour images, localizers (scouts) and other modalities. Assembling the slices into 4D series
is :mod:`lvtl.io.dicom`.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import keyword_dict as keyword_tags
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lvtl.errors import first_line
from lvtl.io.dicom_pixels import PixelCoding, coding_of

log = logging.getLogger(__name__)

#: SOP classes of the CT images lvtl reads: CT, Enhanced CT, Legacy Converted Enhanced CT.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
_DICOMDIR = "1.2.840.10008.1.3.10"
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_KO = "1.2.840.10008.5.1.4.1.1.88.59"
_PR_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

#: Phase attributes of classic CT files, in order of preference (each names the phase the
#: same way in every file of a series).
PHASE_TAGS = (
    "TemporalPositionIndex",
    "NominalPercentageOfCardiacPhase",
    "TriggerTime",
    "TemporalPositionIdentifier",
)
#: The phase as vendors write it in text when no attribute holds it ("... B26f 70%").
DESCRIPTION_PHASE = "PhaseInDescription"
_PERCENT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)\s?%")


class Skip(StrEnum):
    """Why a file of an export is not part of any CT image series."""

    NOT_DICOM = "not DICOM"
    DICOMDIR = "DICOMDIR"
    REPORT = "structured report"
    PRESENTATION = "presentation state"
    KEY_OBJECT = "key object selection"
    SECONDARY = "secondary capture"
    COLOUR = "colour image"
    LOCALIZER = "localizer"
    OTHER_MODALITY = "not CT"
    NO_IMAGE = "no image"


@dataclass
class SliceHeader:
    """One 2D CT image: a classic CT file, or one frame of an Enhanced CT object. Nothing of
    the dataset is kept (4000 of them would cost more memory than a phase of pixels)."""

    path: Path
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    coding: PixelCoding
    frame: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # phase attribute -> value
    slope: float = 1.0
    intercept: float = 0.0
    n_temporal: int | None = None
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference: str = ""
    description: str = ""
    kernel: str = ""
    series_number: int | None = None
    slice_thickness: float | None = None
    instance: int | None = None
    sop_uid: str = ""  # SOPInstanceUID of the file (labels reference their images by it)
    phase_key: float = float("nan")  # set when the series is assembled

    @property
    def rows(self) -> int:
        return self.coding.rows

    @property
    def cols(self) -> int:
        return self.coding.cols

    @property
    def name(self) -> str:
        return self.path.name if self.coding.frames == 1 else f"{self.path.name}#{self.frame + 1}"


@dataclass
class FileScan:
    """What :func:`scan_files` found: the CT slices, the skipped files by kind, the problems
    of files in CT series (by series UID) and those of files that could not be read at all
    (under ``""``), and one header (no pixel data) per series for reporting."""

    folder: Path
    slices: list[SliceHeader]
    skipped: dict[Skip, list[str]]
    problems: dict[str, list[str]]
    headers: dict[str, Dataset]
    files: int


def read_header(path: Path) -> Dataset | None:
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
    # reported by _classic). A deflated data set's offsets are in the inflated stream: only
    # its file meta can be checked against the file's size.
    deflated = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.UID("")).is_deflated
    for group in (ds.file_meta,) if deflated else (ds.file_meta, ds):
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


_STRUCT = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i", "FL": "<f", "FD": "<d"}


def value(ds: Dataset, keyword: str):
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
    val = ds[tag].value
    if val in (None, ""):
        return None
    if isinstance(val, (list, tuple, pydicom.multival.MultiValue)):
        return [v if isinstance(v, str) else float(v) for v in val]
    if isinstance(val, (int, float)):
        return float(val)
    return str(val)


def _text(ds: Dataset, keyword: str) -> str:
    v = value(ds, keyword)
    return "\\".join(map(str, v)) if isinstance(v, list) else str(v or "")


def classify(ds: Dataset) -> Skip | None:
    """Why a dataset is not a CT image (None when it is one)."""
    sop = str(value(ds, "SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    modality = _text(ds, "Modality").upper()
    if sop == _DICOMDIR or "DirectoryRecordSequence" in ds:
        return Skip.DICOMDIR
    if sop == _KO or modality == "KO":
        return Skip.KEY_OBJECT
    if sop.startswith(_SR_PREFIX) or modality == "SR":
        return Skip.REPORT
    if sop.startswith(_PR_PREFIX) or modality == "PR":
        return Skip.PRESENTATION
    if sop.startswith(_SC_PREFIX):
        return Skip.SECONDARY
    if 0x7FE00010 not in ds._dict:
        return Skip.NO_IMAGE
    if modality != "CT":
        return Skip.OTHER_MODALITY
    if int(value(ds, "SamplesPerPixel") or 1) != 1 or \
            not _text(ds, "PhotometricInterpretation").upper().startswith("MONOCHROME"):
        return Skip.COLOUR
    kinds = _text(ds, "ImageType").upper().split("\\")
    if "LOCALIZER" in kinds:
        return Skip.LOCALIZER
    return None


def _pixel_offset(ds: Dataset) -> tuple[int | None, int | None]:
    """(file offset, length) of the pixel data's value, where known."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(elem, "length", None)
    if length is None and elem.value is not None:
        length = len(elem.value)
    return getattr(elem, "value_tell", None), length


def _check_pixels(path: Path, coding: PixelCoding, tell: int | None, length: int | None
                  ) -> str | None:
    """A problem with the size of native pixel data, or None."""
    if coding.native_offset is None and pydicom.uid.UID(coding.transfer_syntax).is_compressed:
        return None
    expected = coding.frame_bytes * coding.frames
    if length is not None and length != 0xFFFFFFFF and length < expected:
        return f"{path.name}: pixel data truncated ({length} of {expected} bytes)"
    if tell is not None and coding.native_offset is not None and \
            path.stat().st_size < tell + expected:
        return f"{path.name}: file truncated inside pixel data"
    return None


def _common(ds: Dataset) -> dict:
    """The series-level attributes every slice of a file shares."""
    number = value(ds, "SeriesNumber")
    ntp = value(ds, "NumberOfTemporalPositions")
    return dict(
        sop_uid=_text(ds, "SOPInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"), study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        description=_text(ds, "SeriesDescription"), kernel=_text(ds, "ConvolutionKernel"),
        series_number=None if number is None else int(number),
        n_temporal=None if not ntp else int(ntp))


def _phase_from_text(*texts: str) -> float | None:
    for text in texts:
        m = _PERCENT.search(text or "")
        if m and float(m.group(1)) < 100:
            return float(m.group(1))
    return None


def _classic(path: Path, ds: Dataset) -> SliceHeader | str:
    """The slice of a classic CT file, or the problem that keeps it out."""
    name = path.name
    try:
        geo = {k: value(ds, k) for k in ("ImagePositionPatient", "ImageOrientationPatient",
                                         "PixelSpacing", "Rows", "Columns")}
        missing = [k for k, v in geo.items() if v is None]
        if missing:
            return f"{name}: missing {', '.join(missing)}"
        pos = np.asarray(geo["ImagePositionPatient"], float)
        ori = np.asarray(geo["ImageOrientationPatient"], float)
        ps = np.asarray(geo["PixelSpacing"], float)
        phases = {t: value(ds, t) for t in PHASE_TAGS}
        if any(isinstance(v, list) for v in phases.values()):
            raise ValueError("multi-valued phase attribute")
        phases = {t: float(v) for t, v in phases.items() if v is not None}
        if not phases:
            text = _phase_from_text(_text(ds, "SeriesDescription"), _text(ds, "ImageComments"))
            if text is not None:
                phases[DESCRIPTION_PHASE] = text
        tell, length = _pixel_offset(ds)
        coding = coding_of(ds, tell, lambda k: value(ds, k))
        instance, thickness = value(ds, "InstanceNumber"), value(ds, "SliceThickness")
        slope = float(value(ds, "RescaleSlope") or 1.0)
        intercept = float(value(ds, "RescaleIntercept") or 0.0)
    except (ValueError, TypeError, struct.error, UnicodeDecodeError, AttributeError) as e:
        return f"{name}: malformed header value ({first_line(e)})"
    if pos.shape != (3,) or ori.shape != (6,) or ps.shape != (2,) or min(ps) <= 0:
        return f"{name}: malformed geometry attributes"
    problem = _check_pixels(path, coding, tell, length)
    if problem:
        return problem
    return SliceHeader(
        path, pos, ori, (float(ps[0]), float(ps[1])), coding, phases=phases, slope=slope,
        intercept=intercept, instance=None if instance is None else int(instance),
        slice_thickness=None if thickness is None else float(thickness), **_common(ds))


def _group(item: Dataset, shared: Dataset, name: str) -> Dataset | None:
    """A functional group's first item, per frame before shared."""
    for src in (item, shared):
        seq = src.get(name) if src is not None else None
        if seq:
            return seq[0]
    return None


_ENHANCED_PHASES = (  # (functional group, attribute, phase name)
    ("FrameContentSequence", "TemporalPositionIndex", "TemporalPositionIndex"),
    ("CardiacSynchronizationSequence", "NominalPercentageOfCardiacPhase",
     "NominalPercentageOfCardiacPhase"),
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", "TriggerTime"),
    ("TemporalPositionSequence", "TemporalPositionTimeOffset", "TemporalPositionTimeOffset"),
)


def _enhanced(path: Path, ds: Dataset) -> list[SliceHeader] | str:
    """The slices (one per frame) of an Enhanced CT object, or the problem that keeps it
    out. Geometry, rescale and phase come from the per-frame functional groups, falling back
    to the shared ones."""
    name = path.name
    try:
        per = ds.get("PerFrameFunctionalGroupsSequence") or []
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        tell, length = _pixel_offset(ds)
        coding = coding_of(ds, tell)
        if len(per) != coding.frames:
            return (f"{name}: {len(per)} per-frame functional groups for "
                    f"{coding.frames} frames")
        common = _common(ds)
        text_phase = _phase_from_text(common["description"], _text(ds, "ImageComments"))
        slices = []
        for f, item in enumerate(per):
            plane = _group(item, shared, "PlanePositionSequence")
            orient = _group(item, shared, "PlaneOrientationSequence")
            pm = _group(item, shared, "PixelMeasuresSequence")
            if plane is None or orient is None or pm is None or "PixelSpacing" not in pm:
                return (f"{name}: frame {f + 1} has no plane position, orientation or pixel "
                        "measures")
            pvt = _group(item, shared, "PixelValueTransformationSequence")
            phases = {}
            for grp, attr, key in _ENHANCED_PHASES:
                g = _group(item, shared, grp)
                if g is not None and g.get(attr) is not None:
                    phases[key] = float(g.get(attr))
            if not phases and text_phase is not None:
                phases[DESCRIPTION_PHASE] = text_phase
            thickness = pm.get("SliceThickness")
            ps = np.asarray(pm.PixelSpacing, float)
            slices.append(SliceHeader(
                path, np.asarray(plane.ImagePositionPatient, float),
                np.asarray(orient.ImageOrientationPatient, float),
                (float(ps[0]), float(ps[1])), coding, frame=f, phases=phases,
                slope=float(pvt.get("RescaleSlope", 1) or 1) if pvt else 1.0,
                intercept=float(pvt.get("RescaleIntercept", 0) or 0) if pvt else 0.0,
                slice_thickness=None if thickness is None else float(thickness),
                instance=f + 1, **common))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        return f"{name}: malformed functional groups ({first_line(e)})"
    problem = _check_pixels(path, coding, tell, length)
    return problem or slices


def scan_files(folder: str | Path) -> FileScan:
    """Every file under ``folder`` (any depth; hidden files ignored), sorted by path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    slices: list[SliceHeader] = []
    skipped: dict[Skip, list[str]] = {}
    problems: dict[str, list[str]] = {}
    headers: dict[str, Dataset] = {}
    late: list[tuple] = []  # (series uid, name, kind, path, ds): skipped unless in a CT series
    for path in files:
        rel = str(path.relative_to(folder))
        try:
            ds = read_header(path)
        except Exception as e:
            problems.setdefault("", []).append(
                f"{path.name}: truncated or unreadable DICOM ({first_line(e)})")
            continue
        if ds is None:
            skipped.setdefault(Skip.NOT_DICOM, []).append(rel)
            log.warning("%s: not a DICOM file, skipped", path)
            continue
        kind = classify(ds)
        if kind is not None:
            late.append((_text(ds, "SeriesInstanceUID"), rel, kind, path, ds))
            continue
        sop = str(value(ds, "SOPClassUID") or "")
        got = _enhanced(path, ds) if sop in ENHANCED_CT else _classic(path, ds)
        uid = _text(ds, "SeriesInstanceUID")
        if isinstance(got, str):
            problems.setdefault(uid, []).append(got)
            continue
        got = got if isinstance(got, list) else [got]
        slices.extend(got)
        if uid not in headers:
            if "PixelData" in ds:
                del ds.PixelData
            headers[uid] = ds
    ours = {s.series_uid for s in slices} | set(problems)
    for uid, rel, kind, path, ds in late:
        # a file of a CT image series that is not a CT image itself: the series is broken
        if uid and uid in ours and kind in (Skip.OTHER_MODALITY, Skip.NO_IMAGE):
            what = ("no pixel data" if kind == Skip.NO_IMAGE
                    else f"modality {_text(ds, 'Modality') or '(none)'} is not CT")
            problems.setdefault(uid, []).append(f"{path.name}: {what}")
        else:
            skipped.setdefault(kind, []).append(rel)
    return FileScan(folder, slices, skipped, problems, headers, len(files))
