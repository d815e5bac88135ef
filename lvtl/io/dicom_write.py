"""Write a multi-phase CT study the way scanners and PACS export it.

Used by the synthetic sites (:mod:`lvtl.synth`) and the tests; the objects themselves (CT
Image, Enhanced CT, pixel data in each :class:`TransferSyntax`) come from
:mod:`lvtl.io.dicom_iod`. Every file, and an export's whole folder, appears atomically.

:class:`Layout` says how the phases are split into series and objects, and so where a reader
finds the phase:

- ``one-series``: one CT Image Storage series, one file per slice per phase; the phase is in
  NominalPercentageOfCardiacPhase, TriggerTime, TemporalPositionIdentifier and
  TemporalPositionIndex (phase + 1);
- ``series-per-phase``: a CT Image series per phase (own SeriesInstanceUID, SeriesNumber =
  first + phase; same study, frame of reference and slice geometry); the phase is in the same
  attributes and at the end of SeriesDescription (``Cardiac 1.5 Bv36 70%``), and with
  :attr:`SeriesInfo.phase_in_description_only` only there;
- ``enhanced``: one Enhanced CT Image Storage object (multi-frame) with every phase, frames
  phase by phase; each frame's functional groups give its position, its stack position, its
  TemporalPositionIndex (the phase's rank + 1, also a dimension index) and its cardiac phase
  (NominalPercentageOfCardiacPhase, NominalCardiacTriggerDelayTime);
- ``enhanced-per-phase``: an Enhanced CT object (and series) per phase; the phase is in each
  frame's CardiacSynchronizationSequence and at the end of SeriesDescription.

With ``export=True``, :func:`write_study` writes what a CD or PACS export holds besides the
4D series: a DICOMDIR at the folder's root (the folder is a DICOM file-set, files at
``PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx`` (``SRxxxxxx`` for the report), no suffix: see
:mod:`lvtl.io.dicomdir`), a CT localizer (ImageType
``ORIGINAL\\PRIMARY\\LOCALIZER``, one coronal image, series 900), a second reconstruction of
the same phases in the same layout (slices twice as thick and far apart, kernel
:data:`SECOND_KERNEL`, series numbers + 100), a dose screen (RGB Secondary Capture, modality
CT, series 998) and an X-Ray Radiation Dose SR (modality SR, series 999). The report and the
screen are never pixel-compressed (explicit VR little endian, or deflated).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, XRayRadiationDoseSRStorage

from lvtl.errors import ConfigError, choose
from lvtl.io.atomic import atomic_path, replace_dir
from lvtl.io.dicom_iod import (
    CTDI_VOL_MGY,
    UID_ROOT,
    SeriesInfo,
    TransferSyntax,
    code,
    common,
    ct_image,
    ct_slices,
    ds_num,
    encode_frames,
    enhanced_ct,
    new_uid,
    plane,
    set_pixels,
    stored_values,
)
from lvtl.io.dicomdir import FileSetWriter
from lvtl.io.geometry import Geometry

__all__ = ["Layout", "TransferSyntax", "SeriesInfo", "new_uid", "write_phase", "write_study",
           "UID_ROOT", "SECOND_KERNEL"]

#: Kernel of an export's second reconstruction (thicker slices, smoother).
SECOND_KERNEL = "Qr40"

#: Series numbers of an export's extras; a second reconstruction adds 100 to the main ones.
LOCALIZER_SERIES, SCREEN_SERIES, DOSE_SERIES, SECOND_SERIES_OFFSET = 900, 998, 999, 100


class Layout(StrEnum):
    """How the phases of a 4D study are split into series and DICOM objects."""

    ONE_SERIES = "one-series"  # one CT Image series: a file per slice per phase
    SERIES_PER_PHASE = "series-per-phase"  # a CT Image series per phase
    ENHANCED = "enhanced"  # one Enhanced CT object with every phase
    ENHANCED_PER_PHASE = "enhanced-per-phase"  # an Enhanced CT object (and series) per phase


def write_phase(
    folder: Path,
    hu: np.ndarray,
    geometry: Geometry,
    phase: int,
    info: SeriesInfo,
    *,
    first_instance: int,
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
) -> list[Path]:
    """Write one phase ``(z, y, x)`` of HU values as CT Image Storage files, one per slice,
    named ``IM<instance>.dcm`` in ``folder``; returns the paths written.

    Args:
        folder: where the files go (created if missing).
        hu: the phase's HU values on ``geometry``.
        geometry: the slice grid (axis 0 across slices).
        phase: the phase index (0-based) of ``info.n_phases`` evenly spaced ones.
        info: patient, study, series and protocol attributes.
        first_instance: InstanceNumber of the first slice; the others follow.
        transfer_syntax: the encoding (a :class:`TransferSyntax` or its value).
    """
    syntax = choose(TransferSyntax, transfer_syntax, "transfer syntax")
    series = _Series(_to_folder(Path(folder)), geometry, info, Layout.ONE_SERIES, syntax)
    series.next_instance = first_instance
    return [Path(folder) / name for name in series.add(phase, hu)]


def write_study(
    folder: str | Path,
    phases: Iterable[tuple[int, np.ndarray]],
    geometry: Geometry,
    info: SeriesInfo,
    *,
    layout: Layout | str = Layout.ONE_SERIES,
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    export: bool = False,
) -> Path:
    """Write a 4D study into ``folder``, phase by phase; returns ``folder``.

    Without ``export`` the files go straight into ``folder``: ``IM<instance>.dcm`` in a
    one-series layout (the single ``IM00001.dcm`` in ``enhanced``), ``SE<series>/IM<instance>
    .dcm`` in a per-phase one. With ``export`` the study is built under a temporary sibling that
    then replaces ``folder`` as a whole: a DICOMDIR file-set with the 4D series and an export's
    extras (see the module's description).

    Args:
        folder: the study's folder (created if missing).
        phases: ``(phase index, HU array (z, y, x) on geometry)`` pairs.
        geometry: the slice grid of every phase.
        info: patient, study, series and protocol attributes.
        layout: series and objects (a :class:`Layout` or its value).
        transfer_syntax: the encoding (a :class:`TransferSyntax` or its value).
        export: add a DICOMDIR, a localizer, a second reconstruction, a dose screen and a dose
            report.
    """
    layout = choose(Layout, layout, "layout")
    syntax = choose(TransferSyntax, transfer_syntax, "transfer syntax")
    if info.phase_in_description_only and layout is not Layout.SERIES_PER_PHASE:
        raise ConfigError(f"the phase only in SeriesDescription needs layout "
                          f"{Layout.SERIES_PER_PHASE.value}, not {layout.value}")
    if export and geometry.shape[0] < 2:
        raise ConfigError("an export's second reconstruction needs at least 2 slices")
    folder = Path(folder)
    if not export:
        series = _Series(_to_folder(folder), geometry, info, layout, syntax)
        for t, hu in phases:
            series.add(t, hu)
        series.close()
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        fileset = FileSetWriter(build)
        _write_export(fileset, phases, geometry, info, layout, syntax)
        fileset.write()
        replace_dir(build, folder)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- layouts
Save = Callable[[Dataset, str], object]  # (data set, file name in the output) -> anything


def _to_folder(folder: Path) -> Save:
    """Save each data set atomically as ``folder / name``."""
    def save(ds: Dataset, name: str) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return save


class _Series:
    """One reconstruction of the study, written phase by phase in a layout."""

    def __init__(self, save: Save, geometry: Geometry, info: SeriesInfo, layout: Layout,
                 syntax: TransferSyntax):
        self.save, self.geometry, self.info = save, geometry, info
        self.layout, self.syntax = layout, syntax
        self.next_instance = 1
        self.frames: list[tuple[int, list[bytes]]] = []  # enhanced: every phase's frames

    def add(self, phase: int, hu: np.ndarray) -> list[str]:
        """Write ``phase`` (or keep it, in ``enhanced``); the names of the files written."""
        stored, g, s = stored_values(hu, self.info), self.geometry, self.syntax
        if self.layout is Layout.ENHANCED:
            self.frames.append((phase, encode_frames(stored, s)))
            return []
        if self.layout is Layout.ONE_SERIES:
            info, folder, first = self.info, "", self.next_instance
            self.next_instance += stored.shape[0]
            text = info.series_description()
        else:
            info = replace(self.info, series_uid=new_uid(f"{self.info.series_uid}/phase/{phase}"),
                           series_number=self.info.series_number + phase)
            folder, first, text = f"SE{info.series_number:04d}/", 1, info.series_description(phase)
        if self.layout is Layout.ENHANCED_PER_PHASE:
            return self._save(enhanced_ct(g, info, text, [(phase, encode_frames(stored, s))], s),
                              f"{folder}IM00001.dcm")
        return [name for ds in ct_slices(stored, g, phase, info, text, first, s)
                for name in self._save(ds, f"{folder}IM{ds.InstanceNumber:05d}.dcm")]

    def close(self) -> list[str]:
        """Write what waits for every phase (the single Enhanced CT object)."""
        if not self.frames:
            return []
        ds = enhanced_ct(self.geometry, self.info, self.info.series_description(), self.frames,
                         self.syntax)
        self.frames = []
        return self._save(ds, "IM00001.dcm")

    def _save(self, ds: Dataset, name: str) -> list[str]:
        self.save(ds, name)
        return [name]


# --------------------------------------------------------------------------- export
def _write_export(fileset: FileSetWriter, phases: Iterable[tuple[int, np.ndarray]],
                  geometry: Geometry, info: SeriesInfo, layout: Layout,
                  syntax: TransferSyntax) -> None:
    """Add the 4D series and an export's extras to ``fileset``, in a scanner's order."""
    def save(ds: Dataset, name: str) -> None:  # the file-set names its files
        fileset.add(ds)

    n = geometry.shape[0] // 2  # the second reconstruction: pairs of slices averaged
    thick = Geometry.make((n, *geometry.shape[1:]), (2 * geometry.spacing[0],
                                                     *geometry.spacing[1:]),
                          (geometry.index_to_lps() @ np.array([0.5, 0, 0, 1]))[:3],
                          geometry.direction)
    second = replace(info, series_uid=new_uid(f"{info.series_uid}/second"),
                     series_number=info.series_number + SECOND_SERIES_OFFSET,
                     slice_thickness=2 * info.slice_thickness, kernel=SECOND_KERNEL,
                     description=None)
    writers = [_Series(save, geometry, info, layout, syntax),
               _Series(save, thick, second, layout, syntax)]
    for i, (t, hu) in enumerate(phases):
        if i == 0:
            save(_localizer(hu, geometry, info, syntax), "")
        writers[0].add(t, hu)
        writers[1].add(t, 0.5 * (hu[0:2 * n:2] + hu[1:2 * n:2]))
    for w in writers:
        w.close()
    save(_dose_screen(info, syntax.plain), "")
    save(_dose_report(info, syntax.plain), "")


def _extra_series(info: SeriesInfo, name: str, number: int) -> SeriesInfo:
    """``info`` for the export's series ``name``, numbered ``number``."""
    return replace(info, series_uid=new_uid(f"{info.study_uid}/{name}"), series_number=number)


def _localizer(hu: np.ndarray, geometry: Geometry, info: SeriesInfo,
               syntax: TransferSyntax) -> Dataset:
    """A coronal CT localizer (scout): the mean of ``hu`` front to back, head at the top, in
    a field 16 pixels wider than the reconstruction on every side (air)."""
    d, margin = geometry.direction_matrix, 16
    head_up = d[0][2] > 0  # slices run towards the head: image rows are the slices reversed
    down = -d[0] if head_up else d[0]
    image = np.pad(hu.mean(axis=1)[::-1 if head_up else 1], margin, constant_values=-1000.0)
    top = geometry.shape[0] - 1 if head_up else 0
    corner = geometry.index_to_lps() @ np.array([top, (geometry.shape[1] - 1) / 2, 0, 1])
    origin = corner[:3] - margin * (geometry.spacing[0] * down + geometry.spacing[2] * d[2])
    info = _extra_series(info, "localizer", LOCALIZER_SERIES)
    ds = common(info, CTImageStorage, new_uid(f"{info.series_uid}/1"), "Topogram 0.6 T20f",
                syntax)
    ct_image(ds, info, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    del ds.RescaleType  # a localizer's values are not HU
    plane(ds, d[2], down, (geometry.spacing[0], geometry.spacing[2]), 0.6)
    ds.ImagePositionPatient = [ds_num(v) for v in origin]
    ds.InstanceNumber = 1
    stored = stored_values(image, info)
    ds.Rows, ds.Columns = stored.shape
    set_pixels(ds, encode_frames(stored[None], syntax))
    return ds


def _dose_screen(info: SeriesInfo, syntax: TransferSyntax) -> Dataset:
    """The scanner's dose screen: an RGB secondary capture of a small table (bars for text)."""
    info = _extra_series(info, "screen", SCREEN_SERIES)
    ds = common(info, SecondaryCaptureImageStorage, new_uid(f"{info.series_uid}/1"),
                "Patient Protocol", syntax, frame_of_reference=False)
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    image = np.full((96, 128, 3), 24, np.uint8)
    image[4:14, 4:124] = (40, 90, 160)  # title bar
    for row in range(5):
        y = 22 + 14 * row
        image[y:y + 6, 8:40] = 220  # label
        image[y:y + 6, 56:56 + 12 * (row + 2)] = 200  # value
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = image.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    set_pixels(ds, [image.tobytes()])
    return ds


def _dose_report(info: SeriesInfo, syntax: TransferSyntax) -> Dataset:
    """An X-Ray Radiation Dose SR (TID 10011, CT Radiation Dose) of one spiral acquisition."""
    info = _extra_series(info, "dose", DOSE_SERIES)
    ds = common(info, XRayRadiationDoseSRStorage, new_uid(f"{info.series_uid}/1"),
                "Dose Report", syntax, modality="SR", frame_of_reference=False)
    ds.InstanceNumber = 1
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code("113701", "DCM", "X-Ray Radiation Dose Report")]
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "10011"
    ds.ContentTemplateSequence = [template]
    start, dlp = f"{info.study_date}{info.study_time}", CTDI_VOL_MGY * 14.0  # 14 cm scanned
    mgy_cm = ("mGy.cm", "UCUM", "mGy.cm")
    ds.ContentSequence = [
        _sr("HAS CONCEPT MOD", "121058", "Procedure reported",
            coded=("77477000", "SCT", "Computed Tomography X-Ray")),
        _sr("CONTAINS", "113809", "Start of X-Ray Irradiation", when=start),
        _sr("CONTAINS", "113810", "End of X-Ray Irradiation", when=start),
        _sr("CONTAINS", "113811", "CT Accumulated Dose Data", children=[
            _sr("CONTAINS", "113812", "Total Number of Irradiation Events",
                num=(1, ("{events}", "UCUM", "events"))),
            _sr("CONTAINS", "113813", "CT Dose Length Product Total", num=(dlp, mgy_cm))]),
        _sr("CONTAINS", "113819", "CT Acquisition", children=[
            _sr("CONTAINS", "125203", "Acquisition Protocol", text="Cardiac 4D"),
            _sr("CONTAINS", "123014", "Target Region", coded=("80891009", "SCT", "Heart")),
            _sr("CONTAINS", "113820", "CT Acquisition Type",
                coded=("116152004", "SCT", "Spiral Acquisition")),
            _sr("CONTAINS", "113769", "Irradiation Event UID",
                uid=new_uid(f"{info.study_uid}/irradiation")),
            _sr("CONTAINS", "113829", "CT Dose", children=[
                _sr("CONTAINS", "113830", "Mean CTDIvol",
                    num=(CTDI_VOL_MGY, ("mGy", "UCUM", "mGy"))),
                _sr("CONTAINS", "113838", "DLP", num=(dlp, mgy_cm))])]),
    ]
    return ds


def _sr(relationship: str, concept: str, meaning: str, *, children: list | None = None,
        coded: tuple[str, str, str] | None = None, num: tuple | None = None,
        text: str | None = None, uid: str | None = None, when: str | None = None) -> Dataset:
    """An SR content item named by the DCM code ``concept`` (``meaning``): a CONTAINER of
    ``children`` or one CODE, NUM, TEXT, UIDREF or DATETIME value."""
    ds = Dataset()
    ds.RelationshipType = relationship
    ds.ConceptNameCodeSequence = [code(concept, "DCM", meaning)]
    if children is not None:
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
        ds.ContentSequence = children
    elif coded is not None:
        ds.ValueType, ds.ConceptCodeSequence = "CODE", [code(*coded)]
    elif num is not None:
        measured = Dataset()
        measured.NumericValue = ds_num(num[0])
        measured.MeasurementUnitsCodeSequence = [code(*num[1])]
        ds.ValueType, ds.MeasuredValueSequence = "NUM", [measured]
    elif text is not None:
        ds.ValueType, ds.TextValue = "TEXT", text
    elif uid is not None:
        ds.ValueType, ds.UID = "UIDREF", uid
    else:
        ds.ValueType, ds.DateTime = "DATETIME", when
    return ds
