"""Write a multi-phase CT series: CT Image Storage, one file per slice per phase.

Used by the synthetic sites (:mod:`lvtl.synth`) and the tests; what it writes is what
:mod:`lvtl.io.dicom` reads. Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lvtl.errors import DicomError
from lvtl.io.atomic import atomic_path
from lvtl.io.geometry import Geometry

UID_ROOT = "1.2.826.0.1.3680043.10.1477."  # lvtl's prefix below the pydicom-registered root

@dataclass
class SeriesInfo:
    """Patient, study, equipment and protocol attributes of a series to write."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str = "20260101"
    study_time: str = "090000"
    manufacturer: str = "LVTL"
    model: str = "PHANTOM"
    kernel: str = "B30f"
    kvp: float = 120.0
    patient_position: str = "HFS"
    slice_thickness: float = 1.0
    rescale_intercept: float = 0.0
    heart_rate: float = 60.0
    n_phases: int = 20
    extra: dict = field(default_factory=dict)


def new_uid(entropy: str | None = None) -> str:
    """A fresh UID under lvtl's prefix (deterministic when ``entropy`` is given)."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=None if entropy is None else [entropy])


def write_phase(
    folder: Path,
    hu: np.ndarray,
    geometry: Geometry,
    phase: int,
    info: SeriesInfo,
    *,
    first_instance: int,
) -> list[Path]:
    """Write one phase ``(z, y, x)`` of HU values as CT Image Storage files, one per slice.

    Pixels are stored as int16 ``round(HU) - intercept``, so reading applies the rescale and
    gets ``round(HU)`` back exactly. Returns the paths written. Each file
    is written to a temporary name and renamed, so no half-written file is ever visible.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if info.rescale_intercept != int(info.rescale_intercept):
        raise DicomError(f"{folder}: rescale intercept must be a whole number of HU")
    # round in HU first, so what is read back is exactly round(HU)
    stored = np.rint(hu).astype(np.int32) - int(info.rescale_intercept)
    if stored.min() < -32768 or stored.max() > 32767:
        raise DicomError(f"{folder}: HU values out of int16 range after rescale")
    stored = stored.astype("<i2")
    direction = geometry.direction_matrix
    row_dir, col_dir = direction[2], direction[1]  # along x (columns), along y (rows)
    percent = 100.0 * phase / info.n_phases
    trigger_ms = percent / 100.0 * 60000.0 / info.heart_rate
    ds = _base_dataset(info, phase)
    ds.ImageOrientationPatient = [_ds_num(v) for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [_ds_num(geometry.spacing[1]), _ds_num(geometry.spacing[2])]
    ds.SliceThickness = _ds_num(info.slice_thickness)
    ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
    ds.NominalPercentageOfCardiacPhase = float(percent)  # FL
    ds.TriggerTime = _ds_num(trigger_ms)
    ds.TemporalPositionIdentifier = phase + 1
    ds.NumberOfTemporalPositions = info.n_phases
    ds.TemporalPositionIndex = phase + 1
    paths = []
    affine = geometry.index_to_lps()
    for k in range(hu.shape[0]):
        inst = first_instance + k
        pos = affine @ np.array([k, 0.0, 0.0, 1.0])
        sop_uid = new_uid(f"{info.series_uid}/{inst}")
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [_ds_num(v) for v in pos[:3]]
        ds.SliceLocation = _ds_num(float(pos[:3] @ direction[0]))
        ds.PixelData = stored[k].tobytes()
        path = folder / f"IM{inst:05d}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds_num(v: float) -> str:
    """Decimal String value with at most 16 characters."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def _base_dataset(info: SeriesInfo, phase: int) -> Dataset:
    """The attributes shared by every slice of one phase."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    meta.ImplementationVersionName = "LVTL_0_1"
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = info.study_date
    # Patient
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = info.study_uid
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT cardiac 4D (synthetic)"
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Cardiac 4D retrospective 0-95%"
    ds.PatientPosition = info.patient_position
    ds.BodyPartExamined = "HEART"
    # Frame of Reference
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = info.manufacturer
    ds.ManufacturerModelName = info.model
    # General Image and Acquisition
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    ds.AcquisitionDate = info.study_date
    ds.AcquisitionTime = info.study_time
    ds.BurnedInAnnotation = "NO"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    # CT Image
    ds.RescaleIntercept = _ds_num(info.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = _ds_num(info.kvp)
    ds.ConvolutionKernel = info.kernel
    ds.WindowCenter = "150"
    ds.WindowWidth = "800"
    # Cardiac Synchronization
    ds.CardiacSynchronizationTechnique = "RETROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacRRIntervalSpecified = float(60000.0 / info.heart_rate)  # FD
    ds.HeartRate = int(round(info.heart_rate))
    for k, v in info.extra.items():
        setattr(ds, k, v)
    return ds


