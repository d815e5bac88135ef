"""The DICOM writer's layouts, transfer syntaxes and CD/PACS exports, read back with pydicom
alone (not lvtl's reader): HU exact, geometry, phase attributes, SOP classes, functional groups,
the DICOMDIR, and no half-written output."""

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.fileset import FileSet
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
)

from lvtl.errors import ConfigError, DicomError
from lvtl.io.dicom_write import (
    SECOND_KERNEL,
    Layout,
    SeriesInfo,
    TransferSyntax,
    new_uid,
    write_phase,
    write_study,
)
from lvtl.io.geometry import Geometry

N_PHASES, SHAPE = 3, (5, 16, 20)  # 5 slices (odd: the thick reconstruction drops one)
# feet first: slices run towards the feet, columns towards the patient's right; a little tilt
_c, _s = np.cos(0.1), np.sin(0.1)
GEOMETRY = Geometry.make(SHAPE, (2.5, 0.8, 0.9), (30.0, -40.0, 120.0),
                         [[0, -_s, -_c], [0, _c, -_s], [-1.0, 0, 0]])


def volumes(seed=0):
    rng = np.random.default_rng(seed)
    return {t: rng.uniform(-1024, 3000, SHAPE).astype(np.float32) for t in range(N_PHASES)}


def info(**kw):
    return SeriesInfo(patient_id="P1", patient_name="Test^P", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(),
                      n_phases=N_PHASES, rescale_intercept=-1024.0, slice_thickness=3.0,
                      kernel="B26f", **kw)


def files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != "DICOMDIR")


def frames(ds):
    """``(percent or None, position, orientation, HU (rows, cols))`` of each frame of a CT
    data set, from pydicom's pixel_array and the rescale, classic or enhanced."""
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns).astype(np.float64)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        pct = ds.get("NominalPercentageOfCardiacPhase")
        yield (pct, ds.ImagePositionPatient, ds.ImageOrientationPatient,
               pixels[0] * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        return
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    rescale = shared.PixelValueTransformationSequence[0]
    for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
        yield (f.CardiacSynchronizationSequence[0].NominalPercentageOfCardiacPhase,
               f.PlanePositionSequence[0].ImagePositionPatient, iop,
               pixels[i] * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept))


def percent_in_description(ds):
    return float(re.search(r"(\d+(?:\.\d+)?)%$", ds.SeriesDescription).group(1))


def read_4d(datasets, geometry=GEOMETRY, n_phases=N_PHASES, from_description=False):
    """``{phase: HU (z, y, x)}`` of the 4D series in ``datasets``, each slice checked to sit
    where ``geometry`` puts it."""
    normal = geometry.direction_matrix[0]
    slices = {}
    for ds in datasets:
        for pct, pos, iop, hu in frames(ds):
            pct = percent_in_description(ds) if from_description else pct
            phase = int(round(float(pct) * n_phases / 100))
            np.testing.assert_allclose(np.array(iop, float),
                                       [*geometry.direction[2], *geometry.direction[1]],
                                       atol=1e-6)
            slices.setdefault(phase, []).append((float(np.array(pos, float) @ normal),
                                                 np.array(pos, float), hu))
    out = {}
    affine = geometry.index_to_lps()
    for phase, items in slices.items():
        items.sort(key=lambda s: s[0])
        for k, (_, pos, _) in enumerate(items):
            np.testing.assert_allclose(pos, (affine @ [k, 0, 0, 1])[:3], atol=1e-5)
        out[phase] = np.stack([hu for _, _, hu in items])
    return out


SYNTAXES = list(TransferSyntax)


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_layout_and_syntax_round_trip(tmp_path, layout, syntax):
    vols, inf = volumes(), info()
    write_study(tmp_path / "dicom", vols.items(), GEOMETRY, inf, layout=layout,
                transfer_syntax=syntax)
    datasets = [pydicom.dcmread(f) for f in files(tmp_path / "dicom")]
    got = read_4d(datasets)
    assert sorted(got) == list(range(N_PHASES))
    for t, hu in vols.items():
        assert np.array_equal(got[t], np.rint(hu)), f"phase {t}"
    enhanced = layout in (Layout.ENHANCED, Layout.ENHANCED_PER_PHASE)
    per_phase = layout in (Layout.SERIES_PER_PHASE, Layout.ENHANCED_PER_PHASE)
    n_objects = {Layout.ONE_SERIES: N_PHASES * SHAPE[0], Layout.SERIES_PER_PHASE:
                 N_PHASES * SHAPE[0], Layout.ENHANCED: 1, Layout.ENHANCED_PER_PHASE: N_PHASES}
    assert len(datasets) == n_objects[layout]
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == syntax.uid
        assert ds.SOPClassUID == (EnhancedCTImageStorage if enhanced else CTImageStorage)
        assert ds.StudyInstanceUID == inf.study_uid
        assert ds.FrameOfReferenceUID == inf.frame_of_reference_uid
        if per_phase:
            assert ds.SeriesDescription == f"Cardiac 3 B26f {percent_in_description(ds):.3g}%"
    series = {ds.SeriesInstanceUID: ds.SeriesNumber for ds in datasets}
    assert len(series) == (N_PHASES if per_phase else 1)
    assert sorted(series.values()) == ([1 + t for t in range(N_PHASES)] if per_phase else [1])
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    if syntax.uid.is_encapsulated:  # one fragment per frame
        for ds in datasets:
            n = int(ds.get("NumberOfFrames", 1))
            assert len(list(generate_frames(ds.PixelData, number_of_frames=n))) == n


def test_classic_phase_attributes_and_file_names(tmp_path):
    write_study(tmp_path, volumes().items(), GEOMETRY, info())
    names = [f.name for f in files(tmp_path)]
    assert names == [f"IM{i:05d}.dcm" for i in range(1, N_PHASES * SHAPE[0] + 1)]
    for f in files(tmp_path):
        ds = pydicom.dcmread(f)
        phase = (ds.InstanceNumber - 1) // SHAPE[0]
        assert ds.TemporalPositionIndex == ds.TemporalPositionIdentifier == phase + 1
        assert ds.NumberOfTemporalPositions == N_PHASES
        assert ds.NominalPercentageOfCardiacPhase == pytest.approx(100 * phase / N_PHASES)
        assert float(ds.TriggerTime) == pytest.approx(1000 * phase / N_PHASES, abs=1e-3)
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.SeriesDescription == "Cardiac 3 B26f 0-66.7%"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_write_phase_keeps_its_names_and_numbers(tmp_path):
    hu = volumes()[1]
    paths = write_phase(tmp_path, hu, GEOMETRY, 1, info(), first_instance=6,
                        transfer_syntax="rle")
    assert [p.name for p in paths] == [f"IM{i:05d}.dcm" for i in range(6, 11)]
    got = read_4d([pydicom.dcmread(p) for p in paths])
    assert np.array_equal(got[1], np.rint(hu))


def test_phase_only_in_series_description(tmp_path):
    vols = volumes()
    write_study(tmp_path, vols.items(), GEOMETRY, info(phase_in_description_only=True),
                layout="series-per-phase")
    datasets = [pydicom.dcmread(f) for f in files(tmp_path)]
    for ds in datasets:
        for kw in ("NominalPercentageOfCardiacPhase", "TriggerTime", "TemporalPositionIndex",
                   "TemporalPositionIdentifier", "NumberOfTemporalPositions"):
            assert kw not in ds
    got = read_4d(datasets, from_description=True)
    assert all(np.array_equal(got[t], np.rint(hu)) for t, hu in vols.items())
    with pytest.raises(ConfigError, match="series-per-phase"):
        write_study(tmp_path / "x", vols.items(), GEOMETRY, info(phase_in_description_only=True),
                    layout="enhanced")


def test_enhanced_functional_groups(tmp_path):
    write_study(tmp_path, volumes().items(), GEOMETRY, info(), layout="enhanced",
                transfer_syntax="jpeg-lossless")
    (ds,) = [pydicom.dcmread(f) for f in files(tmp_path)]
    n = N_PHASES * SHAPE[0]
    assert ds.NumberOfFrames == n == len(ds.PerFrameFunctionalGroupsSequence)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    assert ds.ContentQualification == "PRODUCT" and ds.Modality == "CT"
    assert "RescaleIntercept" not in ds and "ImagePositionPatient" not in ds
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.8, 0.9]
    assert float(measures.SliceThickness) == 3.0
    assert float(measures.SpacingBetweenSlices) == 2.5
    assert shared.PixelValueTransformationSequence[0].RescaleType == "HU"
    assert shared.CTImageFrameTypeSequence[0].FrameType == ["ORIGINAL", "PRIMARY", "AXIAL",
                                                            "NONE"]
    assert shared.CTReconstructionSequence[0].ConvolutionKernel == "B26f"
    pointers = [(d.DimensionIndexPointer, d.FunctionalGroupPointer)
                for d in ds.DimensionIndexSequence]
    assert pointers == [(0x00209056, 0x00209111), (0x00209057, 0x00209111),
                        (0x00209128, 0x00209111)]
    org = ds.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert all(d.DimensionOrganizationUID == org for d in ds.DimensionIndexSequence)
    seen = set()
    for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content = f.FrameContentSequence[0]
        t, k = divmod(i, SHAPE[0])  # frames phase by phase
        assert content.StackID == "1" and content.InStackPositionNumber == k + 1
        assert content.TemporalPositionIndex == t + 1
        assert list(content.DimensionIndexValues) == [1, k + 1, t + 1]
        cardiac = f.CardiacSynchronizationSequence[0]
        assert cardiac.NominalPercentageOfCardiacPhase == pytest.approx(100 * t / N_PHASES)
        assert cardiac.NominalCardiacTriggerDelayTime == pytest.approx(1000 * t / N_PHASES)
        seen.add(tuple(content.DimensionIndexValues))
    assert len(seen) == n


def test_enhanced_per_phase_has_no_temporal_dimension(tmp_path):
    write_study(tmp_path, volumes().items(), GEOMETRY, info(), layout="enhanced-per-phase")
    for f in files(tmp_path):
        ds = pydicom.dcmread(f)
        assert f.parent.name == f"SE{ds.SeriesNumber:04d}"
        assert len(ds.DimensionIndexSequence) == 2 and ds.NumberOfFrames == SHAPE[0]
        pct = {round(fr.CardiacSynchronizationSequence[0].NominalPercentageOfCardiacPhase, 1)
               for fr in ds.PerFrameFunctionalGroupsSequence}
        assert pct == {percent_in_description(ds)}
        assert all("TemporalPositionIndex" not in fr.FrameContentSequence[0]
                   for fr in ds.PerFrameFunctionalGroupsSequence)


def test_deflate_is_deflated(tmp_path):
    flat = np.full((1, *SHAPE[1:]), 40.0)  # compresses well
    (plain,) = write_phase(tmp_path / "a", flat, GEOMETRY, 0, info(), first_instance=1)
    (path,) = write_phase(tmp_path / "b", flat, GEOMETRY, 0, info(), first_instance=1,
                          transfer_syntax="deflate")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert path.stat().st_size < plain.stat().st_size / 2
    assert (np.full(64, 40 + 1024, "<i2").tobytes()) not in path.read_bytes()


@pytest.mark.parametrize("layout,syntax", [("series-per-phase", "jpeg-lossless"),
                                           ("enhanced", "rle"), ("one-series", "deflate")])
def test_export_extras_and_dicomdir(tmp_path, layout, syntax):
    vols, inf = volumes(), info()
    out = write_study(tmp_path / "dicom", vols.items(), GEOMETRY, inf, layout=layout,
                      transfer_syntax=syntax, export=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom"]  # no temporary left
    fs = FileSet(out / "DICOMDIR")
    listed = {Path(i.path).resolve(): i for i in fs}
    assert set(listed) == {f.resolve() for f in files(out)}  # every file, nothing else
    by_series: dict[str, list] = {}
    for path, instance in listed.items():
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == instance.SOPInstanceUID
        assert instance.ReferencedTransferSyntaxUIDInFile == ds.file_meta.TransferSyntaxUID
        assert ds.StudyInstanceUID == inf.study_uid and ds.PatientID == "P1"
        by_series.setdefault(ds.SeriesNumber, []).append(ds)
    localizer = by_series.pop(900)
    assert [ds.ImageType[2] for ds in localizer] == ["LOCALIZER"]
    assert localizer[0].SOPClassUID == CTImageStorage
    assert localizer[0].FrameOfReferenceUID == inf.frame_of_reference_uid
    assert localizer[0].pixel_array.shape == (SHAPE[0] + 32, SHAPE[2] + 32)
    row, col = np.array(localizer[0].ImageOrientationPatient, float).reshape(2, 3)
    assert col[2] < -0.99 and abs(row[0]) > 0.99  # coronal, head at the top
    (screen,) = by_series.pop(998)
    assert screen.SOPClassUID == SecondaryCaptureImageStorage and screen.Modality == "CT"
    assert screen.PhotometricInterpretation == "RGB" and screen.pixel_array.shape[-1] == 3
    (report,) = by_series.pop(999)
    assert report.SOPClassUID == XRayRadiationDoseSRStorage and report.Modality == "SR"
    assert report.ConceptNameCodeSequence[0].CodeValue == "113701"
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "10011"
    for ds in (screen, report):
        assert ds.file_meta.TransferSyntaxUID == TransferSyntax(syntax).plain.uid
    main = [ds for n, group in by_series.items() if n < 100 for ds in group]
    second = [ds for n, group in by_series.items() if n > 100 for ds in group]
    got = read_4d(main)
    assert all(np.array_equal(got[t], np.rint(hu)) for t, hu in vols.items())
    # the second reconstruction: the same phases, pairs of slices averaged, another kernel
    thick = Geometry.make((2, *SHAPE[1:]), (5.0, 0.8, 0.9),
                          (GEOMETRY.index_to_lps() @ [0.5, 0, 0, 1])[:3], GEOMETRY.direction)
    got2 = read_4d(second, thick)
    assert sorted(got2) == list(range(N_PHASES))
    for t, hu in vols.items():
        assert np.array_equal(got2[t], np.rint(0.5 * (hu[0:4:2] + hu[1:4:2])))
    assert not {ds.SeriesInstanceUID for ds in main} & {ds.SeriesInstanceUID for ds in second}
    assert {ds.FrameOfReferenceUID for ds in second} == {inf.frame_of_reference_uid}
    kernels = {ds.get("ConvolutionKernel") or ds.SharedFunctionalGroupsSequence[0]
               .CTReconstructionSequence[0].ConvolutionKernel for ds in second}
    assert kernels == {SECOND_KERNEL}


def test_dicomdir_leaves_out_the_report_tree(tmp_path):
    out = write_study(tmp_path / "d", volumes().items(), GEOMETRY, info(), export=True)
    records = pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
    (record,) = [r for r in records if r.DirectoryRecordType == "SR DOCUMENT"]
    assert [c.RelationshipType for c in record.ContentSequence] == ["HAS CONCEPT MOD"]
    assert record.ConceptNameCodeSequence[0].CodeValue == "113701"


def test_a_failed_write_leaves_nothing_half_written(tmp_path):
    vols = volumes()
    vols[2] = vols[2] + 40000.0  # out of int16 range in the last phase
    with pytest.raises(DicomError, match="int16"):
        write_study(tmp_path / "dicom", vols.items(), GEOMETRY, info(), export=True)
    assert list(tmp_path.iterdir()) == []  # an export appears whole or not at all
    with pytest.raises(DicomError, match="int16"):
        write_study(tmp_path / "flat", vols.items(), GEOMETRY, info())
    written = list((tmp_path / "flat").iterdir())
    assert len(written) == 2 * SHAPE[0]  # the phases before, each file whole
    assert all(re.fullmatch(r"IM\d{5}\.dcm", p.name) for p in written)
    for p in written:
        pydicom.dcmread(p).pixel_array  # noqa: B018 - each one reads


def test_bad_choices_are_named(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'enhanced'"):
        write_study(tmp_path, [], GEOMETRY, info(), layout="enhansed")
    with pytest.raises(ConfigError, match="jpeg-lossless, jpeg-ls"):
        write_study(tmp_path, [], GEOMETRY, info(), transfer_syntax="jpeg2000")
    small = Geometry.make((1, 8, 8), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(DicomError, match="too small"):
        write_phase(tmp_path, np.zeros((1, 8, 8)), small, 0, info(), first_instance=1,
                    transfer_syntax="j2k-lossless")
