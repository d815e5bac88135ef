"""The CT objects lvtl writes, as pydicom data sets: CT Image slices, Enhanced CT objects and
their pixel data in each transfer syntax.

Pixels are stored as int16 ``round(HU) - intercept`` with slope 1, so reading applies the
rescale and gets ``round(HU)`` back exactly, in every object and syntax. The compressed syntaxes
are encapsulated one fragment per frame, with a basic offset table, and encoded by GDCM.
:mod:`lvtl.io.dicom_write` lays these objects out as series and files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from lvtl.errors import DicomError
from lvtl.io.geometry import Geometry

UID_ROOT = "1.2.826.0.1.3680043.10.1477."  # lvtl's prefix below the pydicom-registered root

#: GDCM's JPEG 2000 encoder fails (or corrupts memory) on frames under about 10 pixels a side.
J2K_MIN_PIXELS = 16

#: The scanner's acquisition, as the Enhanced CT functional groups describe it (mm, ms, mA).
ROTATION_MS, COLLIMATION_MM, DETECTOR_ROWS, PITCH, TUBE_MA, CTDI_VOL_MGY = (
    250.0, 0.6, 64, 0.2, 400.0, 12.5)


class TransferSyntax(StrEnum):
    """The encoding of the files written; every one is lossless."""

    EXPLICIT = "explicit"  # Explicit VR Little Endian
    JPEG_LOSSLESS = "jpeg-lossless"  # JPEG Lossless, process 14, first-order prediction (SV1)
    JPEG_LS = "jpeg-ls"  # JPEG-LS lossless
    J2K_LOSSLESS = "j2k-lossless"  # JPEG 2000 lossless (reversible wavelet)
    RLE = "rle"  # RLE Lossless
    DEFLATE = "deflate"  # Deflated Explicit VR Little Endian (the whole data set zipped)

    @property
    def uid(self) -> UID:
        """The transfer syntax UID."""
        return _TS_UIDS[self]

    @property
    def plain(self) -> TransferSyntax:
        """The syntax for an object without CT pixel data (a report, an RGB screen): this
        one if it does not compress pixels, else explicit VR little endian."""
        return TransferSyntax.EXPLICIT if self.uid.is_encapsulated else self


_TS_UIDS = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.JPEG_LOSSLESS: JPEGLosslessSV1,
    TransferSyntax.JPEG_LS: JPEGLSLossless,
    TransferSyntax.J2K_LOSSLESS: JPEG2000Lossless,
    TransferSyntax.RLE: RLELossless,
    TransferSyntax.DEFLATE: DeflatedExplicitVRLittleEndian,
}


@dataclass
class SeriesInfo:
    """Patient, study, equipment and protocol attributes of a series to write.

    ``series_number`` is the first series' number (a per-phase layout numbers its series
    ``series_number + phase``); ``description`` is SeriesDescription without the phase part
    (default ``Cardiac <slice thickness> <kernel>``), to which the writer adds the phases
    (``0-95%``) or the phase (``70%``). ``phase_in_description_only`` (one series per phase
    only) leaves out NominalPercentageOfCardiacPhase, TriggerTime and the temporal position
    attributes, as some scanners do, so the phase is only in SeriesDescription.
    """

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
    series_number: int = 1
    description: str | None = None
    phase_in_description_only: bool = False
    extra: dict = field(default_factory=dict)

    def percent(self, phase: int) -> float:
        """Nominal percentage of the R-R interval of ``phase`` (0-based, evenly spaced)."""
        return 100.0 * phase / self.n_phases

    def trigger_ms(self, phase: int) -> float:
        """Nominal trigger delay of ``phase`` after the R peak, ms."""
        return self.percent(phase) / 100.0 * self.rr_ms

    @property
    def rr_ms(self) -> float:
        """The R-R interval, ms."""
        return 60000.0 / self.heart_rate

    def series_description(self, phase: int | None = None) -> str:
        """SeriesDescription of the series of ``phase``, or of every phase (None)."""
        base = self.description or f"Cardiac {ds_num(self.slice_thickness)} {self.kernel}"
        if phase is None:
            return f"{base} 0-{self.percent(self.n_phases - 1):.3g}%"
        return f"{base} {self.percent(phase):.3g}%"


def new_uid(entropy: str | None = None) -> str:
    """A fresh UID under lvtl's prefix (deterministic when ``entropy`` is given)."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=None if entropy is None else [entropy])


def stored_values(hu: np.ndarray, info: SeriesInfo) -> np.ndarray:
    """``round(HU) - intercept`` as int16, or a DicomError when it does not fit."""
    if info.rescale_intercept != int(info.rescale_intercept):
        raise DicomError(f"series {info.series_number}: rescale intercept must be a whole "
                         f"number of HU")
    # round in HU first, so what is read back is exactly round(HU)
    stored = np.rint(hu).astype(np.int32) - int(info.rescale_intercept)
    if stored.min() < -32768 or stored.max() > 32767:
        raise DicomError(f"series {info.series_number}: HU values out of int16 range after "
                         f"rescale")
    return stored.astype("<i2")


# --------------------------------------------------------------------------- CT Image
def ct_slices(stored: np.ndarray, geometry: Geometry, phase: int, info: SeriesInfo,
              description: str, first_instance: int, syntax: TransferSyntax
              ) -> Iterator[Dataset]:
    """The CT Image Storage data sets of one phase of stored values ``(z, y, x)``, one per
    slice (one object, changed slice by slice: save each before taking the next).

    Args:
        stored: the phase's stored values (:func:`stored_values`) on ``geometry``.
        geometry: the slice grid (axis 0 across slices).
        phase: the phase index (0-based) of ``info.n_phases`` evenly spaced ones.
        info: patient, study, series and protocol attributes.
        description: SeriesDescription.
        first_instance: InstanceNumber of the first slice; the others follow.
        syntax: the transfer syntax.
    """
    direction = geometry.direction_matrix
    ds = common(info, CTImageStorage, "", description, syntax)
    ct_image(ds, info, ["ORIGINAL", "PRIMARY", "AXIAL"])
    _cardiac(ds, info)
    ds.HeartRate = int(round(info.heart_rate))
    plane(ds, direction[2], direction[1], geometry.spacing[1:], info.slice_thickness)
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    if not info.phase_in_description_only:
        ds.NominalPercentageOfCardiacPhase = float(info.percent(phase))  # FL
        ds.TriggerTime = ds_num(info.trigger_ms(phase))
        ds.TemporalPositionIdentifier = phase + 1
        ds.NumberOfTemporalPositions = info.n_phases
        ds.TemporalPositionIndex = phase + 1
    affine = geometry.index_to_lps()
    for k in range(stored.shape[0]):
        inst = first_instance + k
        pos = affine @ np.array([k, 0.0, 0.0, 1.0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
            new_uid(f"{info.series_uid}/{inst}")
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [ds_num(v) for v in pos[:3]]
        ds.SliceLocation = ds_num(float(pos[:3] @ direction[0]))
        set_pixels(ds, encode_frames(stored[k:k + 1], syntax))
        yield ds


def common(info: SeriesInfo, sop_class: str, sop_uid: str, description: str,
           syntax: TransferSyntax, *, modality: str = "CT",
           frame_of_reference: bool = True) -> Dataset:
    """File meta, SOP Common, Patient, General Study, General Series (``info``'s series,
    SeriesDescription ``description``), Frame of Reference (unless not
    ``frame_of_reference``) and General Equipment attributes, and the content date."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax.uid
    meta.ImplementationClassUID = UID_ROOT + "1"
    meta.ImplementationVersionName = "LVTL_0_1"
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
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
    ds.Modality = modality
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = info.series_number
    ds.SeriesDescription = description
    if modality == "CT":
        ds.PatientPosition = info.patient_position
        ds.BodyPartExamined = "HEART"
    if frame_of_reference:
        ds.FrameOfReferenceUID = info.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = info.manufacturer
    ds.ManufacturerModelName = info.model
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    for k, v in info.extra.items():
        setattr(ds, k, v)
    return ds


def ct_image(ds: Dataset, info: SeriesInfo, image_type: list[str]) -> None:
    """General Image, CT Image and Image Pixel attributes of a single-frame CT image."""
    ds.ImageType = image_type
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = info.study_date
    ds.AcquisitionTime = info.study_time
    ds.BurnedInAnnotation = "NO"
    _grey_pixels(ds)
    ds.RescaleIntercept = ds_num(info.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ds_num(info.kvp)
    ds.ConvolutionKernel = info.kernel
    ds.WindowCenter = "150"
    ds.WindowWidth = "800"


def plane(ds: Dataset, row: np.ndarray, column: np.ndarray, spacing: tuple[float, ...],
          thickness: float) -> None:
    """Image Plane attributes but the position: LPS directions along a row and down a column,
    spacing between rows and between columns and slice thickness (mm)."""
    ds.ImageOrientationPatient = [ds_num(v) for v in (*row, *column)]
    ds.PixelSpacing = [ds_num(v) for v in spacing]
    ds.SliceThickness = ds_num(thickness)


def _cardiac(ds: Dataset, info: SeriesInfo) -> None:
    """Cardiac Synchronization attributes of a retrospectively gated scan."""
    ds.CardiacSynchronizationTechnique = "RETROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacRRIntervalSpecified = float(info.rr_ms)  # FD


def _grey_pixels(ds: Dataset) -> None:
    """Image Pixel attributes of signed 16-bit greyscale."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


# --------------------------------------------------------------------------- Enhanced CT
def enhanced_ct(geometry: Geometry, info: SeriesInfo, description: str,
                phases: list[tuple[int, list[bytes]]], syntax: TransferSyntax) -> Dataset:
    """An Enhanced CT Image Storage object of the encoded frames (:func:`encode_frames`) of
    ``phases`` (phase index, one frame per slice of ``geometry``), frames phase by phase.

    Shared functional groups: pixel measures, plane orientation, rescale, VOI window, frame
    type, anatomy, irradiation event and the CT acquisition, table, position, geometry,
    reconstruction, exposure and X-ray details. Per frame: plane position, frame content
    (stack 1, in-stack position = slice + 1, dimension index values; with several phases the
    temporal position index = the phase's rank + 1, a third dimension) and cardiac
    synchronization (nominal percentage and trigger delay of the phase).
    """
    uid = new_uid(f"{info.series_uid}/enhanced")
    ds = common(info, EnhancedCTImageStorage, uid, description, syntax)
    several = len(phases) > 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime, ds.AcquisitionDuration = _datetime(info, 0.0), info.rr_ms / 1000
    ds.BurnedInAnnotation, ds.PresentationLUTShape = "NO", "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence()
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0001", "lvtl"
    _cardiac(ds, info)
    ds.CardiacBeatRejectionTechnique, ds.CardiacFramingType = "NONE", "HEARTBEAT"
    ds.LowRRValue, ds.HighRRValue = round(0.9 * info.rr_ms), round(1.1 * info.rr_ms)
    ds.IntervalsAcquired, ds.IntervalsRejected = 4, 0
    ds.Rows, ds.Columns = int(geometry.shape[1]), int(geometry.shape[2])
    _grey_pixels(ds)
    org = new_uid(f"{uid}/dimensions")
    ds.DimensionOrganizationSequence = [item(DimensionOrganizationUID=org)]
    ds.DimensionOrganizationType = "3D_TEMPORAL" if several else "3D"
    keys = ["StackID", "InStackPositionNumber"] + (["TemporalPositionIndex"] if several else [])
    ds.DimensionIndexSequence = [item(
        DimensionIndexPointer=tag_for_keyword(k),
        FunctionalGroupPointer=tag_for_keyword("FrameContentSequence"),
        DimensionOrganizationUID=org, DimensionDescriptionLabel=k) for k in keys]
    ds.SharedFunctionalGroupsSequence = [_shared_groups(geometry, info)]
    affine = geometry.index_to_lps()
    per_frame, pixels = [], []
    for rank, (t, frames) in enumerate(phases):
        when = _datetime(info, info.trigger_ms(t))
        cardiac = item(NominalPercentageOfCardiacPhase=float(info.percent(t)),
                       NominalCardiacTriggerDelayTime=float(info.trigger_ms(t)),
                       RRIntervalTimeNominal=float(info.rr_ms))
        for k in range(len(frames)):
            content = item(FrameAcquisitionDateTime=when, FrameReferenceDateTime=when,
                           FrameAcquisitionDuration=ROTATION_MS, StackID="1",
                           InStackPositionNumber=k + 1,
                           DimensionIndexValues=[1, k + 1] + ([rank + 1] if several else []))
            if several:
                content.TemporalPositionIndex = rank + 1
            pos = affine @ np.array([k, 0.0, 0.0, 1.0])
            per_frame.append(item(
                FrameContentSequence=[content],
                PlanePositionSequence=[item(ImagePositionPatient=[ds_num(v) for v in pos[:3]])],
                CardiacSynchronizationSequence=[cardiac]))
        pixels += frames
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(per_frame)
    set_pixels(ds, pixels)
    return ds


def _shared_groups(geometry: Geometry, info: SeriesInfo) -> Dataset:
    """The functional groups every frame of an Enhanced CT object shares."""
    d, (_, sy, sx) = geometry.direction_matrix, geometry.spacing
    centre = geometry.index_to_lps() @ np.array([*((np.array(geometry.shape) - 1) / 2), 1])
    feed = PITCH * COLLIMATION_MM * DETECTOR_ROWS  # mm per rotation
    return item(
        PixelMeasuresSequence=[item(PixelSpacing=[ds_num(sy), ds_num(sx)],
                                    SliceThickness=ds_num(info.slice_thickness),
                                    SpacingBetweenSlices=ds_num(geometry.spacing[0]))],
        PlaneOrientationSequence=[item(ImageOrientationPatient=[ds_num(v)
                                                                for v in (*d[2], *d[1])])],
        PixelValueTransformationSequence=[item(RescaleIntercept=ds_num(info.rescale_intercept),
                                               RescaleSlope="1", RescaleType="HU")],
        FrameVOILUTSequence=[item(WindowCenter="150", WindowWidth="800")],
        CTImageFrameTypeSequence=[item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"],
                                       PixelPresentation="MONOCHROME",
                                       VolumetricProperties="VOLUME",
                                       VolumeBasedCalculationTechnique="NONE")],
        FrameAnatomySequence=[item(AnatomicRegionSequence=[code("80891009", "SCT", "Heart")],
                                   FrameLaterality="U")],
        IrradiationEventIdentificationSequence=[item(
            IrradiationEventUID=new_uid(f"{info.study_uid}/irradiation"))],
        CTAcquisitionTypeSequence=[item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO",
                                        FluoroscopyFlag="NO")],
        CTAcquisitionDetailsSequence=[item(
            DataCollectionDiameter="500", GantryDetectorTilt="0", TableHeight="150",
            RotationDirection="CW", RevolutionTime=ROTATION_MS / 1000,
            SingleCollimationWidth=COLLIMATION_MM,
            TotalCollimationWidth=COLLIMATION_MM * DETECTOR_ROWS)],
        CTTableDynamicsSequence=[item(TableSpeed=feed / (ROTATION_MS / 1000),
                                      TableFeedPerRotation=feed, SpiralPitchFactor=PITCH)],
        CTPositionSequence=[item(TablePosition=float(-centre[2]),
                                 ReconstructionTargetCenterPatient=[float(v)
                                                                    for v in centre[:3]],
                                 DataCollectionCenterPatient=[float(v) for v in centre[:3]])],
        CTGeometrySequence=[item(DistanceSourceToDetector=1085.6,
                                 DistanceSourceToDataCollectionCenter=595.0)],
        CTReconstructionSequence=[item(
            ReconstructionAlgorithm="FILTER_BACK_PROJ", ConvolutionKernel=info.kernel,
            ConvolutionKernelGroup="SOFT_TISSUE", ImageFilter="NONE",
            ReconstructionDiameter=ds_num(geometry.shape[2] * sx),
            ReconstructionPixelSpacing=[float(sy), float(sx)], ReconstructionAngle=360.0)],
        CTExposureSequence=[item(ExposureTimeInms=ROTATION_MS, XRayTubeCurrentInmA=TUBE_MA,
                                 ExposureInmAs=TUBE_MA * ROTATION_MS / 1000,
                                 ExposureModulationType="NONE", CTDIvol=CTDI_VOL_MGY,
                                 CTDIPhantomTypeCodeSequence=[
                                     code("113691", "DCM", "IEC Body Dosimetry Phantom")])],
        CTXRayDetailsSequence=[item(KVP=ds_num(info.kvp), FocalSpots=["0.6"],
                                    FilterType="FLAT", FilterMaterial="ALUMINUM")],
    )


# --------------------------------------------------------------------------- pixel data
def encode_frames(stored: np.ndarray, syntax: TransferSyntax) -> list[bytes]:
    """Each frame of ``stored`` (n, rows, cols) int16 encoded in ``syntax`` (its raw bytes
    in the native syntaxes)."""
    if not syntax.uid.is_encapsulated:
        return [f.tobytes() for f in stored]
    if syntax is TransferSyntax.J2K_LOSSLESS and min(stored.shape[1:]) < J2K_MIN_PIXELS:
        raise DicomError(f"{syntax.value}: frames of {stored.shape[1]}x{stored.shape[2]} "
                         f"pixels are too small for GDCM's encoder (at least "
                         f"{J2K_MIN_PIXELS} a side)")
    return [_gdcm_encode(f, syntax) for f in stored]


def _gdcm_encode(frame: np.ndarray, syntax: TransferSyntax) -> bytes:
    """One int16 frame compressed by GDCM.

    GDCM (BSD licence) is one package that decodes and encodes every syntax lvtl reads and
    writes; pydicom 3 itself encodes only RLE, its JPEG-LS and JPEG 2000 encoders each need
    another plugin, and pylibjpeg-libjpeg, the JPEG Lossless one, is GPL.
    """
    import gdcm  # only the compressed syntaxes need it

    writer = gdcm.ImageWriter()  # GDCM wants its images made by (and kept with) a writer
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((frame.shape[1], frame.shape[0], 1))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, 16, 15, 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    pixels = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    pixels.SetByteStringValue(np.ascontiguousarray(frame, "<i2").tobytes())
    image.SetDataElement(pixels)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax.uid)))
    change.SetInput(image)
    fragments = (change.GetOutput().GetDataElement().GetSequenceOfFragments()
                 if change.Change() else None)
    if fragments is None or fragments.GetNumberOfFragments() != 1:
        raise DicomError(f"GDCM could not encode a {frame.shape[0]}x{frame.shape[1]} frame "
                         f"as {syntax.value}")
    # GDCM's Python buffers come back as str; surrogateescape gives back the bytes
    return fragments.GetFragment(0).GetByteValue().GetBuffer().encode("utf-8",
                                                                      "surrogateescape")


def set_pixels(ds: Dataset, frames: list[bytes]) -> None:
    """Pixel Data of the encoded ``frames``: native, or encapsulated one fragment a frame
    (with a basic offset table) when the data set's transfer syntax compresses."""
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = b"".join(frames)
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"


# --------------------------------------------------------------------------- values
def ds_num(v: float) -> str:
    """Decimal String value with at most 16 characters."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def item(**attributes: object) -> Dataset:
    """A data set (a sequence item) of keyword attributes."""
    ds = Dataset()
    for k, v in attributes.items():
        setattr(ds, k, v)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _datetime(info: SeriesInfo, after_ms: float) -> str:
    """DT value ``after_ms`` after the study's date and time."""
    start = datetime.strptime(info.study_date + info.study_time[:6], "%Y%m%d%H%M%S")
    return (start + timedelta(milliseconds=after_ms)).strftime("%Y%m%d%H%M%S.%f")
