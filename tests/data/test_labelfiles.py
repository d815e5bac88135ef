"""A case's label files in every format, onto the series' phases: the phase from the file
name, a percentage or the DICOM references; geometry checked; bad files one line each, the
case skipped and the others going on, nothing written into the input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
from tinycase import GEOMETRY, N_PHASES, label_map, write_case

from lvtl.data.labelfiles import (
    LabelFormat,
    convert_labels,
    find_label_files,
    onto_phase,
    read_label_file,
)
from lvtl.data.preprocess import PreprocessConfig, load_labels, preprocess_site
from lvtl.errors import LabelError
from lvtl.io.dicom import scan_series
from lvtl.io.seg import write_seg
from lvtl.io.seg_read import read_seg, seg_labelmap


def _as_seg(case: Path, phase: int, labels: np.ndarray | None = None) -> Path:
    """Replace the case's NIfTI label of ``phase`` by a DICOM SEG (as `lvtl infer` writes)
    named without a phase: the references must say it."""
    index = scan_series(case / "dicom")
    (case / "labels" / f"phase_{phase:02d}.nii.gz").unlink()
    return write_seg(case / "labels" / f"contours-{phase}.dcm",
                     label_map() if labels is None else labels, index, phase)


def _nrrd(path: Path, arr: np.ndarray, geometry=GEOMETRY) -> Path:
    """A plain NRRD label map in LPS (pynrrd: axes x, y, z)."""
    d = geometry.direction_matrix
    sp = geometry.spacing
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3,
              "space directions": np.stack([d[2] * sp[2], d[1] * sp[1], d[0] * sp[0]]),
              "space origin": np.asarray(geometry.origin, float)}
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.ascontiguousarray(arr.transpose(2, 1, 0)), header)
    return path


def test_seg_written_by_infer_reads_back_voxel_for_voxel_at_its_phase(tmp_path):
    case = write_case(tmp_path / "case")
    truth = label_map()
    truth[2:, 3:6, 3:6] = 0  # not the same in every slice
    _as_seg(case, 1, truth)
    index = scan_series(case / "dicom")
    files = find_label_files(case, index)
    assert [(lf.phase, lf.format, lf.phase_from) for lf in files] == [
        (0, LabelFormat.NIFTI, "file name"), (1, LabelFormat.DICOM_SEG, "referenced images")]
    assert np.array_equal(read_label_file(files[1], index), truth)


@pytest.mark.parametrize("name", ["phase_02.nrrd", "mask_p66.7.nrrd", "LV 66.7%.nrrd"])
def test_nrrd_label_maps_and_phase_by_name_or_percentage(tmp_path, name):
    case = write_case(tmp_path / "case", labelled=())
    _nrrd(case / "labels" / name, label_map())
    index = scan_series(case / "dicom")
    (lf,) = find_label_files(case, index)
    assert lf.phase == 2 and lf.format is LabelFormat.NRRD  # 66.7% of 3 phases: the third
    assert np.array_equal(read_label_file(lf, index), label_map())


def test_convert_writes_what_lvtl_read_and_leaves_the_case_alone(tmp_path):
    case = write_case(tmp_path / "case")
    _as_seg(case, 1)
    before = sorted((p, p.stat().st_mtime_ns) for p in case.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "lvtl.cli", "labels", "convert", str(case),
                          "--out", str(tmp_path / "nifti"), "--to", "nifti"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("phase ") == 2
    written = convert_labels(case, tmp_path / "seg", "seg")
    assert [p for p, _ in written] == [0, 1]
    index = scan_series(case / "dicom")
    for _, path in written:  # and back: the SEG lvtl wrote holds what it read
        arr, g = seg_labelmap(read_seg(path))
        assert np.array_equal(onto_phase(arr, g, index.geometry, str(path)), label_map())
    assert sorted((p, p.stat().st_mtime_ns) for p in case.rglob("*")) == before
    with pytest.raises(LabelError, match="must not be inside the case"):
        convert_labels(case, case / "out", "nifti")


def _other_series_seg(case: Path, tmp_path: Path) -> None:
    other = write_case(tmp_path / "other", seed=5)
    index = scan_series(other / "dicom")
    write_seg(case / "labels" / "phase_01.dcm", label_map(), index, 1)


def _unknown_segment_seg(case: Path, tmp_path: Path) -> None:
    import highdicom as hd
    from pydicom.sr.coding import Code as Coded

    index = scan_series(case / "dicom")
    (case / "labels" / "phase_01.nii.gz").unlink(missing_ok=True)
    sources = [pydicom.dcmread(sl.path) for sl in index.phases[1]]
    desc = [hd.seg.SegmentDescription(
        segment_number=1, segment_label="Right atrium",
        segmented_property_category=Coded("85756007", "SCT", "Tissue"),
        segmented_property_type=Coded("73829009", "SCT", "Right atrium"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=(label_map() > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=desc,
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="other", manufacturer_model_name="tool",
        software_versions="1", device_serial_number="1")
    seg.save_as(case / "labels" / "ra.dcm")


def _values_outside(case: Path, tmp_path: Path) -> None:
    arr = label_map()
    arr[0, 0, 0] = 9
    _nrrd(case / "labels" / "phase_02.nrrd", arr)


def _no_such_phase(case: Path, tmp_path: Path) -> None:
    _nrrd(case / "labels" / "phase_07.nrrd", label_map())


def _twice(case: Path, tmp_path: Path) -> None:
    _nrrd(case / "labels" / "ED p0.nrrd", label_map())


BAD = {
    "a SEG of another series": (_other_series_seg, "phase_01.dcm", "not in the series"),
    "a SEG with an unknown segment": (_unknown_segment_seg, "ra.dcm", "Right atrium"),
    "values outside the mapping": (_values_outside, "phase_02.nrrd", "9"),
    "a phase that does not exist": (_no_such_phase, "phase_07.nrrd", "phase 7"),
    "a phase labelled twice": (_twice, "phase_00.nii.gz", "labelled twice (also by ED p0"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_bad_label_file_skips_its_case_with_one_line_and_the_others_go_on(bad, tmp_path):
    make, file, words = BAD[bad]
    data = tmp_path / "data"
    for name in ("good-a", "bad", "good-b"):
        write_case(data / name, seed=len(name))
    make(data / "bad", tmp_path)
    before = sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*"))
    results = {r.case_id: r for r in preprocess_site(data, tmp_path / "cache",
                                                      PreprocessConfig(repair_radius=0))}
    assert results["good-a"].status == results["good-b"].status == "written"
    reason = results["bad"].reason
    assert results["bad"].status == "failed" and "\n" not in reason
    assert f"bad/labels/{file}" in reason and words in reason, reason
    assert sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*")) == before
    assert not (tmp_path / "cache" / "bad").exists()


def test_site_config_maps_other_segment_names(tmp_path):
    """A site whose tool names its segments otherwise maps them in [preprocess]."""
    case = write_case(tmp_path / "case", labelled=(0,))
    _unknown_segment_seg(case, tmp_path)  # a single "Right atrium" segment, at phase 1
    index = scan_series(case / "dicom")
    with pytest.raises(LabelError, match="Right atrium"):
        load_labels(case, index, PreprocessConfig())
    cfg = PreprocessConfig(blood_pool_segments=("right atrium",))
    with pytest.raises(LabelError, match="no myocardium"):  # mapped, but only one label
        load_labels(case, index, cfg)
    assert json.dumps(cfg.to_dict())  # the mapping is part of the cache key
    assert N_PHASES == 3


def test_write_nrrd_reads_back_with_its_geometry(tmp_path):
    from lvtl.io.nrrd import read_nrrd, write_nrrd

    path = write_nrrd(tmp_path / "phase_01.nrrd", label_map(), GEOMETRY)
    back = read_nrrd(path)
    assert np.array_equal(back.array, label_map()) and back.geometry.matches(GEOMETRY)
    raw, header = nrrd.read(str(path))  # pynrrd itself: x fastest, LPS
    assert header["space"] == "left-posterior-superior"
    assert np.array_equal(raw.transpose(2, 1, 0), label_map())


def test_a_synthetic_site_can_label_with_dicom_seg_on_an_enhanced_export(tmp_path):
    """`lvtl phantom --labels seg`: the annotator's masks as DICOM SEG referencing an Enhanced
    CT object that holds every phase; read back at their phases, equal to the masks."""
    from lvtl.synth.case import Case
    from lvtl.synth.profiles import Size, draw_case
    from lvtl.synth.site import write_case as write_phantom

    params = draw_case("site-2", 0, seed=0, size=Size.SMALL)
    case_dir = write_phantom(params, tmp_path, labels="seg", layout="enhanced", export=True)
    index = scan_series(case_dir / "dicom")
    files = find_label_files(case_dir, index)
    case = Case(params)
    assert [lf.phase for lf in files] == case.labelled_phases
    assert {lf.format for lf in files} == {LabelFormat.DICOM_SEG}
    for lf in files:
        truth, _ = case.truth(lf.phase)
        assert np.array_equal(read_label_file(lf, index),
                              case.flood_fill_labels(truth, lf.phase))
