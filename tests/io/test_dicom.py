"""Phantom -> DICOM -> ingest round trip, file-order robustness and IOD conformance."""

import os
import random
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from lvtl.io.dicom import load_series, scan_series
from lvtl.io.dicom_write import SeriesInfo, new_uid, write_phase
from lvtl.io.geometry import Geometry
from lvtl.synth.case import Case
from lvtl.synth.profiles import N_PHASES, draw_case

# Type 1 and 2 attributes of the modules of the CT Image IOD (PS3.3 A.3), plus the cardiac
# phase attributes the issue asks for.
REQUIRED = [
    "SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet",  # SOP Common
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",  # Patient
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber",  # General Study
    "Modality", "SeriesInstanceUID", "SeriesNumber", "PatientPosition",  # General Series
    "FrameOfReferenceUID", "PositionReferenceIndicator",  # Frame of Reference
    "Manufacturer",  # General Equipment
    "InstanceNumber", "ImageType", "AcquisitionNumber",  # General Image, CT Image
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelData",  # Image Pixel
    "RescaleIntercept", "RescaleSlope", "KVP",  # CT Image
    "NominalPercentageOfCardiacPhase", "TemporalPositionIndex",
]


@pytest.mark.parametrize("site", ["site-1", "site-2"])
def test_round_trip_geometry_and_hu_exact(phantom_root, site):
    case = Case(draw_case(site, 0))
    index = scan_series(phantom_root / f"{site}-000" / "dicom")
    assert index.n_phases == N_PHASES
    assert index.geometry.matches(case.geometry, tol_mm=1e-4, tol_dir=1e-6), \
        index.geometry.differences(case.geometry)
    for t in (0, case.p.es, N_PHASES - 1):
        expected = np.rint(case.render(t, 0, case.geometry.shape[0]))
        assert np.array_equal(index.read_phase(t), expected)


def test_file_names_and_order_do_not_matter(site2_case, tmp_path):
    src = site2_case / "dicom"
    dst = tmp_path / "shuffled" / "nested"
    dst.mkdir(parents=True)
    names = sorted(os.listdir(src))
    new = [f"{random.Random(1).random():.6f}_{i}" for i in range(len(names))]
    random.Random(2).shuffle(new)
    for a, b in zip(names, new, strict=True):
        shutil.copy(src / a, dst / b)  # no .dcm suffix, random order
    ref, shuffled = scan_series(src), scan_series(dst.parent)
    assert shuffled.geometry == ref.geometry
    for t in (0, 9):
        assert np.array_equal(shuffled.read_phase(t), ref.read_phase(t))


def _series(folder, phases, geometry, info):
    inst = 1
    for t, vol in enumerate(phases):
        write_phase(folder, vol, geometry, t, info, first_instance=inst)
        inst += vol.shape[0]


def _info(n):
    return SeriesInfo(patient_id="P", patient_name="P^Q", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(), n_phases=n,
                      rescale_intercept=-1024.0)


def test_reversed_slice_order_is_sorted_along_the_normal(tmp_path):
    rng = np.random.default_rng(0)
    vols = [rng.integers(-1000, 1500, (6, 8, 9)).astype(np.float32) for _ in range(3)]
    direction = np.array([[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])
    g = Geometry.make((6, 8, 9), (1.5, 0.8, 0.8), (-10.0, 5.0, 100.0), direction)
    top = g.index_to_lps() @ np.array([5, 0, 0, 1.0])
    rev = Geometry.make(g.shape, g.spacing, top[:3], [-direction[0], direction[1],
                                                      direction[2]])
    # written top to bottom: InstanceNumber rises as the position along the normal falls
    _series(tmp_path / "s", [v[::-1] for v in vols], rev, _info(3))
    index = scan_series(tmp_path / "s")
    assert index.geometry.matches(g, tol_mm=1e-4)
    for t in range(3):
        assert np.array_equal(index.read_phase(t), vols[t])
    first = index.phases[0]
    assert [s.instance for s in first] == list(range(6, 0, -1))


def test_phases_grouped_by_cardiac_percentage_without_temporal_index(tmp_path):
    rng = np.random.default_rng(1)
    vols = [rng.integers(-100, 400, (4, 5, 5)).astype(np.float32) for _ in range(4)]
    g = Geometry.make((4, 5, 5), (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3)[::-1])
    _series(tmp_path / "s", vols, g, _info(4))
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.TemporalPositionIndex, ds.TemporalPositionIdentifier
        ds.save_as(f)
    index = scan_series(tmp_path / "s")
    assert index.phase_tag == "NominalPercentageOfCardiacPhase"
    assert index.phase_keys == [0.0, 25.0, 50.0, 75.0]
    hu, geometry = load_series(tmp_path / "s")
    assert np.array_equal(hu, np.stack(vols)) and geometry == index.geometry


@pytest.mark.parametrize("site,intercept", [("site-1", -1024.0), ("site-2", 0.0)])
def test_ct_image_attributes(phantom_root, site, intercept):
    files = sorted((phantom_root / f"{site}-000" / "dicom").iterdir())
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[::7]]
    full = pydicom.dcmread(files[0])
    for name in REQUIRED:
        assert name in full, name
    assert full.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert full.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert full.PixelRepresentation == 1 and full.BitsAllocated == 16
    assert full.pixel_array.dtype == np.int16
    assert float(full.RescaleIntercept) == intercept and float(full.RescaleSlope) == 1.0
    sops = {str(d.SOPInstanceUID) for d in datasets}
    assert len(sops) == len(datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(d[key].value) for d in datasets}) == 1
    for d in datasets:
        t = int(d.TemporalPositionIndex) - 1
        assert float(d.NominalPercentageOfCardiacPhase) == pytest.approx(100.0 * t / N_PHASES)
        assert int(d.NumberOfTemporalPositions) == N_PHASES
    uids = [str(full[k].value) for k in ("SOPInstanceUID", "SeriesInstanceUID",
                                         "StudyInstanceUID")]
    assert all(len(u) <= 64 and all(c.isdigit() or c == "." for c in u) for u in uids)


def test_all_sop_instance_uids_unique(site1_case):
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for f in (site1_case / "dicom").iterdir()]
    assert len(set(uids)) == len(uids)


def test_dciodvfy_finds_no_errors(phantom_root):
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("LVTL_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (dicom3tools) is required but not installed")
        pytest.skip("dciodvfy (dicom3tools) not installed")
    for site in ("site-1", "site-2"):
        files = sorted((phantom_root / f"{site}-000" / "dicom").iterdir())
        for f in (files[0], files[len(files) // 2], files[-1]):
            out = subprocess.run([tool, str(f)], capture_output=True, text=True)
            text = out.stdout + out.stderr
            assert "CTImage" in text
            errors = [ln for ln in text.splitlines() if ln.startswith("Error")]
            assert not errors, f"{f.name}: {errors}"
