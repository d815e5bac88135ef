"""Ingest a 4D cardiac CT series from any export (the writer is :mod:`lvtl.io.dicom_write`).

A hospital's PACS or CD export is a folder of files: the 4D series in one of three layouts,
and whatever else the exam produced. :func:`discover` finds the candidate 4D series in it:

* **one series with every phase** (phase from ``TemporalPositionIndex``,
  ``NominalPercentageOfCardiacPhase``, ``TriggerTime`` or ``TemporalPositionIdentifier``);
* **one series per phase**: series of one study with the same frame of reference, slice
  orientation, pixel spacing, matrix, kernel and slice thickness, each holding one phase
  (from the same attributes, or the percentage vendors write in ``SeriesDescription`` or
  ``ImageComments``, e.g. ``"Cardiac 0.75 B26f 70%"``);
* **Enhanced CT** objects, all phases in one or one per phase (the per-frame functional
  groups give each frame its position, orientation, spacing, rescale and phase).

What is not a CT image volume (DICOMDIR, reports, screens, localizers, ...) is skipped and
counted (:mod:`lvtl.io.dicom_scan`). :func:`choose` picks the series to use: the one asked for,
or else **the most phases, then the thinnest slices, then the most slices**; two candidates
equal on all three are ambiguous, and the error lists them. A second reconstruction of the
same phases (another kernel or slice thickness) is a candidate of its own, never more phases.

The chosen series is checked (orientation, spacing, matrix, gaps, duplicates, slice counts,
missing phases: every problem, each naming the file or phase) and indexed: slices ordered
along the normal (never by file name or InstanceNumber), phases in cardiac order. Pixels are
read one phase at a time (:mod:`lvtl.io.dicom_pixels`), so a paper-size series (4000 files,
2 GB) never sits in memory whole.
"""

from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from lvtl.errors import DicomError, SeriesProblems
from lvtl.io.dicom_pixels import is_lossy, iter_frames, syntax_name, to_hu
from lvtl.io.dicom_scan import (
    DESCRIPTION_PHASE,
    PHASE_TAGS,
    FileScan,
    Skip,
    SliceHeader,
    scan_files,
)
from lvtl.io.geometry import Geometry

_POS_TOL_MM = 0.01
_DIR_TOL = 1e-4
#: Phase names in order of preference: the first that every slice of a series has is used.
_PHASE_ORDER = (*PHASE_TAGS, "TemporalPositionTimeOffset", DESCRIPTION_PHASE)


@dataclass
class Candidate:
    """A 4D series found in an export: one or several DICOM series (one per phase)."""

    number: int  # 1-based, in the order listed
    slices: list[SliceHeader]
    series_uids: list[str]
    phase_tag: str
    n_phases: int
    n_slices: int
    layout: str
    problems: list[str] = field(default_factory=list)

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def uid(self) -> str:
        return self.series_uids[0]

    @property
    def thickness(self) -> float | None:
        return self.first.slice_thickness

    @property
    def transfer_syntaxes(self) -> list[str]:
        return sorted({s.coding.transfer_syntax for s in self.slices})

    @property
    def lossy(self) -> bool:
        return any(is_lossy(ts) for ts in self.transfer_syntaxes)

    def describe(self) -> dict:
        """One row of ``lvtl inspect``'s table (JSON-ready)."""
        s = self.first
        return {"number": self.number, "series_uid": self.uid,
                "series": len(self.series_uids), "layout": self.layout,
                "description": s.description, "phases": self.n_phases,
                "slices": self.n_slices,
                "pixel_spacing": [round(v, 4) for v in s.pixel_spacing],
                "slice_thickness": self.thickness, "kernel": s.kernel,
                "transfer_syntax": [syntax_name(t) for t in self.transfer_syntaxes],
                "lossy": self.lossy}

    def line(self) -> str:
        s = self.first
        return (f"#{self.number} {self.uid} '{s.description}' ({self.layout}): "
                f"{self.n_phases} phases x {self.n_slices} slices, thickness "
                f"{self.thickness if self.thickness is not None else '?'} mm, "
                f"kernel {s.kernel or '?'}")


@dataclass
class Discovery:
    """An export's candidate 4D series (best first, by the rule of :func:`choose`), what was
    skipped, and the problems that belong to no series (unreadable files)."""

    folder: Path
    candidates: list[Candidate]
    skipped: dict[Skip, list[str]]
    problems: list[str]
    headers: dict[str, Dataset]
    files: int

    def skipped_counts(self) -> dict[str, int]:
        return {str(k): len(v) for k, v in self.skipped.items()}


def _phase_tag(slices: list[SliceHeader]) -> str:
    """The first phase attribute every slice has ("none" when there is none)."""
    for tag in _PHASE_ORDER:
        if all(tag in s.phases for s in slices):
            return tag
    return "none"


def _n_phases(slices: list[SliceHeader], tag: str) -> int:
    return len({round(s.phases[tag], 4) for s in slices}) if tag != "none" else 1


def _stack_key(s: SliceHeader) -> tuple:
    """What the series of one 4D acquisition, one series per phase, have in common."""
    return (s.study_uid, s.frame_of_reference, tuple(np.round(s.orientation, 3)),
            tuple(np.round(s.pixel_spacing, 3)), s.rows, s.cols, s.kernel,
            None if s.slice_thickness is None else round(s.slice_thickness, 2))


def _layout(slices: list[SliceHeader], n_series: int) -> str:
    enhanced = any(s.coding.frames > 1 for s in slices)
    if n_series > 1:
        return "enhanced, one object per phase" if enhanced else "one series per phase"
    return "enhanced" if enhanced else "one series"


def _rank(c: Candidate) -> tuple:
    return (-c.n_phases, c.thickness if c.thickness is not None else float("inf"),
            -c.n_slices)


def discover(folder: str | Path) -> Discovery:
    """Scan ``folder`` (any depth) for candidate 4D CT series."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder")
    scan: FileScan = scan_files(folder)
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for s in scan.slices:
        by_series[s.series_uid].append(s)
    groups: list[list[str]] = []  # series uids that form one candidate
    single: dict[tuple, list[str]] = defaultdict(list)
    for uid, slices in by_series.items():
        tag = _phase_tag(slices)
        if _n_phases(slices, tag) > 1 or tag == "none":
            groups.append([uid])
        else:
            single[_stack_key(slices[0])].append(uid)
    for uids in single.values():
        merged = [s for u in uids for s in by_series[u]]
        tag = _phase_tag(merged)
        if len(uids) > 1 and tag != "none":
            groups.append(sorted(uids, key=lambda u: by_series[u][0].phases[tag]))
        else:
            groups.extend([u] for u in uids)
    candidates = []
    for uids in groups:
        slices = [s for u in uids for s in by_series[u]]
        tag = _phase_tag(slices)
        n_phases = _n_phases(slices, tag)
        per_phase = Counter(round(s.phases[tag], 4) if tag != "none" else 0 for s in slices)
        problems = [p for u in uids for p in scan.problems.get(u, [])]
        candidates.append(Candidate(0, slices, uids, tag, n_phases,
                                    max(per_phase.values()), _layout(slices, len(uids)),
                                    problems))
    # series whose every file had a problem are candidates too: choosing them says why
    for uid, probs in scan.problems.items():
        if uid and uid not in by_series:
            candidates.append(Candidate(0, [], [uid], "none", 0, 0, "unreadable", list(probs)))
    candidates.sort(key=lambda c: (_rank(c) if c.slices else (1,), c.uid))
    for k, c in enumerate(candidates, 1):
        c.number = k
    return Discovery(folder, candidates, scan.skipped, scan.problems.get("", []),
                     scan.headers, scan.files)


def choose(found: Discovery, series: str | None = None) -> Candidate:
    """The candidate to read: the one ``series`` names (a series UID of it, its number in
    the listing, or a pattern matched against its description, e.g. ``"*B26f*"``), or the
    best by the rule (most phases, thinnest slices, most slices). Raises :class:`DicomError`
    listing the candidates when none or several fit."""
    cands = found.candidates
    if not cands:
        raise DicomError(f"{found.folder}: no CT image series found"
                         + _skipped_note(found))
    listing = "; ".join(c.line() for c in cands)
    if series:
        s = series.strip()
        hits = [c for c in cands if s in c.series_uids]
        if not hits and s.lstrip("#").isdigit():
            hits = [c for c in cands if c.number == int(s.lstrip("#"))]
        if not hits:
            hits = [c for c in cands if c.slices and fnmatch.fnmatch(
                c.first.description.lower(), s.lower())]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)}"
            raise DicomError(f"{found.folder}: {what} series match {series!r}; candidates: "
                             f"{listing}")
        return hits[0]
    best = cands[0]
    if len(cands) > 1 and cands[1].slices and _rank(cands[1]) == _rank(best):
        raise DicomError(f"{found.folder}: {len(cands)} candidate series and no single best "
                         f"(most phases, then thinnest slices, then most slices); choose one "
                         f"with --series: {listing}")
    return best


def _skipped_note(found: Discovery) -> str:
    if not found.skipped:
        return ""
    return " (skipped: " + ", ".join(f"{n} {k}" for k, n in found.skipped_counts().items()) + ")"


@dataclass
class SeriesIndex:
    """A checked 4D series: per phase (in cardiac order) the slices ordered along the normal."""

    folder: Path
    phases: list[list[SliceHeader]]
    phase_keys: list[float]
    phase_tag: str
    geometry: Geometry
    skipped: dict[Skip, list[str]]
    series_uid: str
    first_header: Dataset | None = None  # header (no pixels) of one file, for reporting
    candidate: Candidate | None = None
    discovery: Discovery | None = None

    @property
    def n_phases(self) -> int:
        return len(self.phases)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n_phases, *self.geometry.shape)

    def iter_slices(self, t: int) -> Iterator[np.ndarray]:
        """The slices ``(y, x)`` float32 HU of phase ``t``, in order along the normal (each
        file opened once for its run of frames)."""
        for path, run in groupby(self.phases[t], key=lambda s: s.path):
            run = list(run)
            for sl, arr in zip(run, iter_frames(path, run[0].coding, [s.frame for s in run]),
                               strict=True):
                yield to_hu(arr, sl.slope, sl.intercept)

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


def scan_series(folder: str | Path, series: str | None = None,
                found: Discovery | None = None) -> SeriesIndex:
    """Discover the 4D series in ``folder`` (recursively; or take ``found``, its
    :func:`discover`), choose one (:func:`choose`) and check it into a :class:`SeriesIndex`.

    Every problem of the chosen series is collected and raised together as
    :class:`~lvtl.errors.SeriesProblems`, each naming the file or phase.
    """
    folder = Path(folder)
    found = found or discover(folder)
    if not found.candidates and not found.problems:
        raise DicomError(f"{folder}: no DICOM files found" if not found.skipped or
                         set(found.skipped) == {Skip.NOT_DICOM}
                         else f"{folder}: no CT image series found" + _skipped_note(found))
    if not found.candidates:
        raise SeriesProblems(str(folder), found.problems)
    cand = choose(found, series)
    problems = found.problems + cand.problems
    index = _build_index(folder, cand, problems, found.skipped) if cand.slices else None
    if problems or index is None:
        raise SeriesProblems(str(folder), problems)
    index.first_header = found.headers.get(cand.uid)
    index.candidate, index.discovery = cand, found
    return index


def _build_index(folder: Path, cand: Candidate, problems: list[str],
                 skipped: dict[Skip, list[str]]) -> SeriesIndex | None:
    headers = cand.slices
    tag = cand.phase_tag
    if tag == "none":
        if any(h.phases for h in headers):
            bad = [h.name for h in headers if not h.phases][:3]
            problems.append(f"no cardiac phase attribute in {', '.join(bad)}" if bad else
                            "the files name their cardiac phase by different attributes")
            return None
        for h in headers:
            h.phase_key = 0.0
    else:
        for h in headers:
            h.phase_key = h.phases[tag]
    groups: dict[float, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        groups[round(h.phase_key, 4)].append(h)
    keys = sorted(groups)
    ref = headers[0]
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        problems.append(f"{ref.name}: ImageOrientationPatient is not two orthonormal vectors")
        return None
    phases: list[list[SliceHeader]] = []
    positions: list[np.ndarray] = []
    for key in keys:
        sl = groups[key]
        label = f"phase {_phase_label(tag, key)}"
        ori = np.array([h.orientation for h in sl])
        bad_ori = np.flatnonzero(np.abs(ori - ref.orientation).max(axis=1) > _DIR_TOL)
        if len(bad_ori):
            problems.append(f"{label}: mixed orientation ({sl[bad_ori[0]].name} differs)")
        spacing = np.array([h.pixel_spacing for h in sl])
        bad_sp = np.flatnonzero(np.abs(spacing - ref.pixel_spacing).max(axis=1) > 1e-4)
        if len(bad_sp):
            problems.append(f"{label}: mixed pixel spacing ({sl[bad_sp[0]].name} differs)")
        bad_dim = [h.name for h in sl if (h.rows, h.cols) != (ref.rows, ref.cols)]
        if bad_dim:
            problems.append(f"{label}: mixed matrix size ({bad_dim[0]} differs)")
        sl.sort(key=lambda h: float(h.position @ normal))
        along = np.array([h.position @ normal for h in sl])
        steps = np.diff(along)
        dup = np.nonzero(steps < _POS_TOL_MM)[0]
        if len(dup):
            problems.append(f"{label}: duplicate slice position {along[dup[0]]:.2f} mm "
                            f"({sl[dup[0]].name}, {sl[dup[0] + 1].name})")
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
                                "(shifted positions or gantry tilt)")
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
    return SeriesIndex(folder, phases, keys, tag, geometry, skipped, cand.uid)


def _phase_label(tag: str, key: float) -> str:
    if tag in ("NominalPercentageOfCardiacPhase", DESCRIPTION_PHASE):
        return f"{key:g}%"
    if tag in ("TriggerTime", "TemporalPositionTimeOffset"):
        return f"{key:g} ms"
    return f"{key:g}"


def _expected_phases(tag: str, keys: list[float], headers: list[SliceHeader]) -> int | None:
    n = {h.n_temporal for h in headers if h.n_temporal}
    if len(n) == 1:
        return n.pop()
    if tag in ("NominalPercentageOfCardiacPhase", DESCRIPTION_PHASE) and len(keys) > 2:
        step = min(np.diff(keys))
        return int(round(100.0 / step)) if step > 0 else None
    if tag in ("TemporalPositionIndex", "TemporalPositionIdentifier"):
        return int(max(keys))
    return None


def _missing_phase_list(tag: str, keys: list[float], expected: int) -> str:
    if tag in ("TemporalPositionIndex", "TemporalPositionIdentifier"):
        missing = sorted(set(range(1, expected + 1)) - {int(k) for k in keys})
        return f" (missing {', '.join(str(m) for m in missing[:6])})"
    if tag in ("NominalPercentageOfCardiacPhase", DESCRIPTION_PHASE) and len(keys) > 2:
        step = min(np.diff(keys))
        missing = [f"{k:g}%" for k in np.arange(0, 100 - 1e-6, step)
                   if not any(abs(k - v) < 1e-3 for v in keys)]
        return f" (missing {', '.join(missing[:6])})" if missing else ""
    return ""


def load_series(folder: str | Path, series: str | None = None) -> tuple[np.ndarray, Geometry]:
    """The chosen 4D series of a folder as ``(t, z, y, x)`` float32 HU and its geometry."""
    index = scan_series(folder, series)
    return index.read_all(), index.geometry
