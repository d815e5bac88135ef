"""DICOM Segmentation output: a phase's label map as a SEG object (highdicom) that references
the source CT images, so a viewer overlays it on the series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept
from pydicom.sr.codedict import codes

from lvtl.io.atomic import atomic_path
from lvtl.io.dicom import SeriesIndex
from lvtl.labels import SEG_SEGMENTS


def write_seg(path: str | Path, labels: np.ndarray, index: SeriesIndex, phase: int, *,
              series_number: int = 900, algorithm_version: str = "1") -> Path:
    """Write ``labels`` ``(z, y, x)`` (0/1/2 on the source series' grid) of 0-based ``phase``
    as a binary DICOM SEG with one segment per label (:data:`lvtl.labels.SEG_SEGMENTS`),
    referencing the phase's CT images in ``index``. Written atomically; returns the path."""
    if labels.shape != index.geometry.shape:
        raise ValueError(f"labels {labels.shape} are not on the series' grid "
                         f"{index.geometry.shape}")
    slices = index.phases[phase]
    # the source objects' headers (highdicom needs no pixels): one per file, so an Enhanced
    # CT object holding the phase (or every phase) is referenced once
    sources = [pydicom.dcmread(p, stop_before_pixels=True)
               for p in dict.fromkeys(sl.path for sl in slices)]
    planes = {}
    if any(sl.coding.frames > 1 for sl in slices):
        # frames of a multi-frame source are not one-to-one with the phase's slices: say
        # where each segmentation frame lies
        patient = hd.CoordinateSystemNames.PATIENT
        planes = dict(
            plane_positions=[hd.PlanePositionSequence(patient, sl.position) for sl in slices],
            plane_orientation=hd.PlaneOrientationSequence(patient, slices[0].orientation),
            pixel_measures=hd.PixelMeasuresSequence(
                pixel_spacing=slices[0].pixel_spacing,
                slice_thickness=slices[0].slice_thickness or index.geometry.spacing[0],
                spacing_between_slices=index.geometry.spacing[0]))
    tissue = CodedConcept("85756007", "SCT", "Tissue")
    algo = hd.AlgorithmIdentificationSequence(
        name="lvtl LVNet4d", version=algorithm_version,
        family=codes.cid7162.ArtificialIntelligence)
    described = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=tissue,
            segmented_property_type=CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo)
        for number, label, code, meaning in SEG_SEGMENTS]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(labels, np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=described, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lvtl",
        manufacturer_model_name="LVNet4d", software_versions=algorithm_version,
        device_serial_number="0", series_description=f"lvtl LV segmentation, phase {phase}",
        omit_empty_frames=True, **planes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
