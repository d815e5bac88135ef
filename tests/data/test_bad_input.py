"""Bad input: every broken series, label file or case gives one clear error naming it.

Each test writes a tiny but real series (CT Image Storage files from :func:`write_phase`, labels
from :func:`write_volume`) into ``tmp_path``, corrupts it the way real data breaks, and checks
the message. No mocks.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tinycase import (
    DIRECTION,
    GEOMETRY,
    N_PHASES,
    N_PIX,
    N_SLICES,
    label_map,
    write_case,
)

from lvtl.data.preprocess import PreprocessConfig, load_labels, preprocess_site
from lvtl.errors import DicomError, LabelError, SeriesProblems
from lvtl.io.dicom import scan_series
from lvtl.io.dicom_scan import Skip
from lvtl.io.geometry import Geometry
from lvtl.io.nifti import write_volume

# HFS axial: z -> +S, y -> +P, x -> +L (rows of the direction matrix)
ORIGIN_Z = GEOMETRY.origin[2]


# --------------------------------------------------------------------------- helpers
def slice_file(case: Path, phase: int, k: int) -> Path:
    """The file of slice ``k`` (0 = lowest) of ``phase``, as named by write_phase."""
    return case / "dicom" / f"IM{1 + phase * N_SLICES + k:05d}.dcm"


def edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def problems_of(case: Path) -> list[str]:
    with pytest.raises(SeriesProblems) as info:
        scan_series(case / "dicom")
    problems = info.value.problems
    assert problems, "SeriesProblems without problems"
    assert str(case / "dicom") in str(info.value)  # the message names the series folder
    return problems


def one_with(problems: list[str], *words: str) -> str:
    """The problem line holding every one of ``words``; fails listing all lines otherwise."""
    hits = [p for p in problems if all(w in p for w in words)]
    assert hits, f"no problem mentions {words}: {problems}"
    return hits[0]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def case(tmp_path) -> Path:
    return write_case(tmp_path / "case")


def test_good_case_loads(case):
    index = scan_series(case / "dicom")
    assert index.shape == (N_PHASES, N_SLICES, N_PIX, N_PIX)
    assert index.geometry.matches(GEOMETRY, tol_mm=1e-4), index.geometry.differences(GEOMETRY)
    assert index.skipped == {}
    assert sorted(load_labels(case, index, PreprocessConfig())) == [0, 1]


# --------------------------------------------------------------------------- 1. non-DICOM
def test_non_dicom_files_are_skipped_with_a_warning(case, caplog):
    (case / "dicom" / "README.txt").write_text("exported by the PACS\n")
    (case / "dicom" / "blob.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    (case / "dicom" / "tiny").write_bytes(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="lvtl"):
        index = scan_series(case / "dicom")
    assert index.shape == (N_PHASES, N_SLICES, N_PIX, N_PIX)
    assert sorted(index.skipped[Skip.NOT_DICOM]) == ["README.txt", "blob.bin", "tiny"]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("README.txt", "blob.bin", "tiny"):
        assert name in warned and "not a DICOM file" in warned


# --------------------------------------------------------------------------- 2. truncated
@pytest.mark.parametrize("where", ["pixel data", "element value", "element header",
                                   "file meta", "after file meta"])
def test_truncated_file(case, where):
    path = slice_file(case, 1, 2)
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    pixel_start = len(data) - len(ds.PixelData)
    ipp = ds.get_item("ImagePositionPatient").value_tell  # a DS: 8-byte element header
    cut = {"pixel data": pixel_start + len(ds.PixelData) // 2,
           "element value": ipp + 3,
           "element header": ipp - 4,
           "file meta": 200,
           "after file meta": 132 + 12 + ds.file_meta.FileMetaInformationGroupLength}[where]
    path.write_bytes(data[:cut])
    p = one_with(problems_of(case), path.name)
    assert "truncated" in p


# --------------------------------------------------------------------------- 3. no pixels
def test_missing_pixel_data(case):
    path = slice_file(case, 0, 3)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    one_with(problems_of(case), path.name, "no pixel data")


# --------------------------------------------------------------------------- 4. gap
def test_missing_slice_is_a_gap(case):
    slice_file(case, 1, 2).unlink()
    problems = problems_of(case)
    # slices 1 and 3 of phase 1 (TemporalPositionIndex 2) at z = origin + 2 and + 6 mm
    p = one_with(problems, "phase 2", "missing slice")
    assert f"{ORIGIN_Z + 2:.2f}" in p and f"{ORIGIN_Z + 6:.2f}" in p


# --------------------------------------------------------------------------- 5. duplicates
def test_duplicate_positions(case):
    neighbour = pydicom.dcmread(slice_file(case, 2, 1))
    path = slice_file(case, 2, 2)
    edit(path, ImagePositionPatient=neighbour.ImagePositionPatient)
    p = one_with(problems_of(case), "phase 3", "duplicate slice position")
    assert path.name in p and slice_file(case, 2, 1).name in p


# --------------------------------------------------------------------------- 6./7. mixed
def test_mixed_pixel_spacing(case):
    path = slice_file(case, 1, 3)
    edit(path, PixelSpacing=["0.8", "0.8"])
    one_with(problems_of(case), "phase 2", "mixed pixel spacing", path.name)


def test_mixed_orientation(case):
    path = slice_file(case, 0, 2)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))  # rotated 10 degrees about z
    edit(path, ImageOrientationPatient=[f"{v:.6f}" for v in (c, s, 0.0, -s, c, 0.0)])
    one_with(problems_of(case), "phase 1", "mixed orientation", path.name)


# --------------------------------------------------------------------------- 8./9. counts
def test_phases_with_different_slice_counts(case):
    slice_file(case, 2, N_SLICES - 1).unlink()  # top slice: no gap, one slice fewer
    problems = problems_of(case)
    p = one_with(problems, "different slice counts")
    assert f"{N_SLICES} expected" in p and f"3 ({N_SLICES - 1})" in p
    assert not [q for q in problems if "missing slice" in q]


def test_missing_phase(case):
    for k in range(N_SLICES):
        slice_file(case, 1, k).unlink()
    p = one_with(problems_of(case), "missing phase")
    assert "2 of 3" in p and "missing 2" in p


# --------------------------------------------------------------------------- 10. modality
def test_modality_not_ct(case):
    path = slice_file(case, 2, 0)
    edit(path, Modality="MR")
    one_with(problems_of(case), path.name, "modality MR", "not CT")


# --------------------------------------------------------------------------- 11.-13. labels
def _labels_error(case: Path) -> str:
    index = scan_series(case / "dicom")
    with pytest.raises(LabelError) as info:
        load_labels(case, index, PreprocessConfig())
    return str(info.value)


@pytest.mark.parametrize("how", ["shifted origin", "another orientation"])
def test_label_geometry_mismatch(case, how):
    if how == "shifted origin":  # half of it would lie outside the series
        g = Geometry.make(GEOMETRY.shape, GEOMETRY.spacing,
                          np.add(GEOMETRY.origin, (0.0, 0.0, 4.0)), DIRECTION)
        word = "extends beyond"
    else:
        g = Geometry.make(GEOMETRY.shape, GEOMETRY.spacing, GEOMETRY.origin,
                          DIRECTION[[0, 2, 1]] * np.array([[-1], [1], [1]]))
        word = "another orientation"
    write_volume(case / "labels" / "phase_01.nii.gz", label_map(), g)
    msg = _labels_error(case)
    assert "case/labels/phase_01.nii.gz" in msg and "\n" not in msg
    assert "geometry does not match" in msg and word in msg


def test_label_on_a_sub_grid_is_placed_exactly(case):
    """A label file covering only some slices (as tools crop to the heart) is placed onto
    the series' grid at its position, the rest background."""
    full = label_map()
    sub = Geometry.make((N_SLICES - 2, N_PIX, N_PIX), GEOMETRY.spacing,
                        np.asarray(GEOMETRY.origin) + DIRECTION[0] * GEOMETRY.spacing[0],
                        DIRECTION)
    write_volume(case / "labels" / "phase_01.nii.gz", full[1:-1], sub)
    expect = full.copy()
    expect[0] = expect[-1] = 0
    got = load_labels(case, scan_series(case / "dicom"), PreprocessConfig())[1]
    assert np.array_equal(got, expect)


def test_unexpected_label_values(case):
    arr = label_map()
    arr[2, 0, 0] = 7
    write_volume(case / "labels" / "phase_00.nii.gz", arr, GEOMETRY)
    msg = _labels_error(case)
    assert "case/labels/phase_00.nii.gz" in msg
    assert "unexpected label values 7" in msg


@pytest.mark.parametrize("content, missing", [
    ("all zero", "no blood pool and no myocardium"),
    ("blood pool only", "no myocardium"),
])
def test_empty_label_at_a_labelled_phase(case, content, missing):
    arr = label_map()
    arr = np.zeros_like(arr) if content == "all zero" else np.where(arr == 2, 0, arr)
    write_volume(case / "labels" / "phase_01.nii.gz", arr.astype(np.uint8), GEOMETRY)
    msg = _labels_error(case)
    assert "case/labels/phase_01.nii.gz" in msg
    assert "empty label" in msg and missing in msg


# --------------------------------------------------------------------------- 14. all at once
def test_all_problems_reported_at_once(case):
    truncated, mr = slice_file(case, 0, 1), slice_file(case, 2, 3)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    edit(mr, Modality="MR")
    problems = problems_of(case)
    one_with(problems, truncated.name, "truncated")
    one_with(problems, mr.name, "modality MR")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "notes.txt").write_text("nothing here")
    with pytest.raises(DicomError, match="no DICOM files"):
        scan_series(tmp_path / "dicom")


# --------------------------------------------------------------------------- 15. CLI
def _lvtl(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvtl.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_inspect_bad_case(case):
    path = slice_file(case, 1, 0)
    edit(path, Modality="MR")
    label = case / "labels" / "phase_00.nii.gz"
    r = _lvtl("inspect", case)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert path.name in r.stderr and "not CT" in r.stderr
    assert label.name not in r.stderr  # labels are not checked against a broken series


def test_cli_inspect_bad_label(case):
    arr = label_map()
    arr[0, 0, 0] = 7
    write_volume(case / "labels" / "phase_01.nii.gz", arr, GEOMETRY)
    r = _lvtl("inspect", case)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "phase_01.nii.gz" in r.stderr and "unexpected label values 7" in r.stderr


# --------------------------------------------------------------------------- 16. batch
def test_batch_good_cases_written_bad_case_reported(tmp_path):
    root = tmp_path / "site"
    for i, name in enumerate(("case-a", "case-b", "case-bad")):
        write_case(root / name, seed=i)
    bad = slice_file(root / "case-bad", 1, 2)
    bad.write_bytes(bad.read_bytes()[:-200])
    before = tree_hash(root)

    results = {r.case_id: r for r in preprocess_site(root, tmp_path / "out")}
    assert {k: r.status for k, r in results.items()} == {
        "case-a": "written", "case-b": "written", "case-bad": "failed"}
    reason = results["case-bad"].reason
    assert "case-bad" in reason and bad.name in reason and "truncated" in reason
    for name in ("case-a", "case-b"):
        assert (tmp_path / "out" / name / "meta.json").is_file()
        assert results[name].labelled == [0, 1]
    assert not (tmp_path / "out" / "case-bad").exists()
    assert tree_hash(root) == before

    out2 = tmp_path / "out-cli"
    r = _lvtl("preprocess", root, "--out", out2)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    bad_lines = [line for line in r.stderr.splitlines() if "case-bad" in line]
    assert bad_lines and any(bad.name in line for line in bad_lines), r.stderr
    assert "2 written" in r.stdout and "1 failed" in r.stdout
    for name in ("case-a", "case-b"):
        assert (out2 / name / "meta.json").is_file()
        assert (out2 / name / "image.npy").is_file()
    assert not (out2 / "case-bad").exists()
    assert tree_hash(root) == before
