"""Discovery of 4D series in exports: real files from public collections (tests/data/dicom)
sorted into what is skipped and what is a CT series, and each CT series' geometry and HU
compared voxel for voxel with dcm2niix (an independent reader) through patient space."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lvtl.errors import DicomError, SeriesProblems
from lvtl.io.dicom import discover, scan_series
from lvtl.io.dicom_scan import Skip

DATA = Path(__file__).resolve().parent.parent / "data" / "dicom"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
DCM2NIIX = Path(sys.executable).with_name("dcm2niix")
SKIP_OF_KIND = {"dicomdir": Skip.DICOMDIR, "sr": Skip.REPORT, "localizer": Skip.LOCALIZER,
                "secondary-capture": Skip.SECONDARY, "other-modality": Skip.OTHER_MODALITY,
                "presentation-state": Skip.PRESENTATION, "key-object": Skip.KEY_OBJECT}
#: J2K codestream unsigned, header signed: the header's PixelRepresentation wins (PS3.5 8.2.4;
#: pydicom and lvtl sign-extend), dcm2niix keeps the codestream's, so negative values differ
#: by exactly 2**BitsStored there and nowhere else.
SIGNEDNESS_MISMATCH = {"J2K_pixelrep_mismatch.dcm": 2 ** 13}
CT_FILES = [e["file"] for e in MANIFEST if e["kind"] in ("ct-image", "enhanced-ct")]


def test_real_export_files_are_sorted_by_kind():
    found = discover(DATA)
    expected: dict[Skip, list[str]] = {}
    for e in MANIFEST:
        if e["kind"] in SKIP_OF_KIND:
            expected.setdefault(SKIP_OF_KIND[e["kind"]], []).append(e["file"])
    got = {k: sorted(v) for k, v in found.skipped.items() if k != Skip.NOT_DICOM}
    assert got == {k: sorted(v) for k, v in expected.items()}
    assert sorted(found.skipped[Skip.NOT_DICOM]) == [".gitignore", "README.md",
                                                     "manifest.json"][1:]
    # every CT image is in exactly one candidate, and nothing else is
    files = sorted(s.path.name for c in found.candidates for s in c.slices
                   if s.frame == 0)
    assert files == sorted(CT_FILES)
    assert not found.problems
    enhanced = [c for c in found.candidates if c.layout == "enhanced"]
    assert len(enhanced) == 1 and enhanced[0].n_slices == 2


@pytest.mark.parametrize("name", CT_FILES)
def test_geometry_and_hu_equal_dcm2niix(name, tmp_path):
    """lvtl's voxel (k, j, i) at its patient position holds the value dcm2niix has there."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(DATA / name, src / name)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-o", str(out), "-f", "v",
                          str(src)], capture_output=True, text=True, timeout=60)
    nii = out / "v.nii"
    assert nii.is_file(), run.stdout[-1000:] + run.stderr[-1000:]
    img = nib.load(nii)
    theirs = np.asarray(img.get_fdata(), np.float64)
    index = scan_series(src)
    ours = index.read_phase(0)
    assert theirs.size == ours.size
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in ours.shape), indexing="ij")
    ijk1 = np.stack([zz.ravel(), yy.ravel(), xx.ravel(), np.ones(zz.size)])
    lps = index.geometry.index_to_lps() @ ijk1
    ras = lps * np.array([[-1], [-1], [1], [1]])
    theirs_idx = np.linalg.inv(img.affine) @ ras
    rounded = np.rint(theirs_idx[:3])
    # within 1% of a voxel: NIfTI keeps the affine in float32 and dcm2niix orthonormalises an
    # oblique orientation (J2K_pixelrep_mismatch: 0.006 voxel); a flip or shift is >= 0.5
    assert np.abs(theirs_idx[:3] - rounded).max() < 0.01, "voxel centres do not coincide"
    i, j, k = rounded.astype(int)
    assert (i >= 0).all() and (j >= 0).all() and (k >= 0).all()
    values = theirs.reshape(theirs.shape[:3])[i, j, k]
    lossy = next(e["lossy"] for e in MANIFEST if e["file"] == name)
    diff = np.abs(values - ours.ravel())
    if name in SIGNEDNESS_MISMATCH:
        wrapped = diff > 0
        assert wrapped.any() and (diff[wrapped] == SIGNEDNESS_MISMATCH[name]).all()
        assert (ours.ravel()[wrapped] < 0).all()
        diff[wrapped] = 0
    assert diff.max() <= (1.0 if lossy else 1e-3), f"{name}: differs by up to {diff.max()}"


# --- synthetic exports: every layout, ambiguity, choosing ------------------------------------

def _study(folder, *, layout="one-series", syntax="explicit", export=False, n_phases=4,
           phases=None, seed=0, **info):
    """A small 4D study written as a scanner exports it; returns (folder, {phase: HU})."""
    from lvtl.io.dicom_write import SeriesInfo, new_uid, write_study
    from lvtl.io.geometry import Geometry

    g = Geometry.make((5, 16, 18), (2.0, 0.8, 0.8), (-10.0, -20.0, 30.0),
                      np.array([[0, 0, 1.0], [0, 1, 0], [1, 0, 0]]))
    rng = np.random.default_rng(seed)
    hu = {t: np.rint(rng.uniform(-1000, 1500, g.shape)) for t in range(n_phases)}
    keep = sorted(hu) if phases is None else phases
    meta = SeriesInfo(patient_id="P1", patient_name="Test^Export", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(),
                      n_phases=n_phases, **info)
    write_study(folder, [(t, hu[t]) for t in keep], g, meta, layout=layout,
                transfer_syntax=syntax, export=export)
    return folder, {t: hu[t] for t in keep}, g


LAYOUTS = ["one-series", "series-per-phase", "enhanced", "enhanced-per-phase"]
SYNTAXES = ["explicit", "jpeg-lossless", "jpeg-ls", "j2k-lossless", "rle", "deflate"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_every_layout_and_syntax_reads_back_exactly(layout, syntax, tmp_path):
    """With a DICOMDIR, a localizer, a dose report, a dose screen and a second reconstruction
    around it: the 4D series is found, chosen, and read back voxel for voxel, phases in
    order; the rest is skipped by kind; the input folder is left as it was."""
    folder, hu, g = _study(tmp_path / "export", layout=layout, syntax=syntax, export=True)
    before = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    index = scan_series(folder)
    assert index.n_phases == len(hu)
    assert index.geometry.matches(g, tol_mm=1e-4), index.geometry.differences(g)
    for t, expected in hu.items():
        assert np.array_equal(index.read_phase(t), expected), (layout, syntax, t)
    found = index.discovery
    assert {k: len(v) for k, v in found.skipped.items()} == {
        Skip.DICOMDIR: 1, Skip.LOCALIZER: 1, Skip.REPORT: 1, Skip.SECONDARY: 1}
    # the second reconstruction is a candidate of its own, not more phases
    assert len(found.candidates) == 2
    second = found.candidates[1]
    assert second.n_phases == len(hu) and second.thickness == 2 * index.candidate.thickness
    assert index.candidate.number == 1 and not index.candidate.lossy
    assert sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before


def test_phase_only_in_the_series_description(tmp_path):
    folder, hu, _ = _study(tmp_path / "e", layout="series-per-phase",
                           phase_in_description_only=True)
    index = scan_series(folder)
    assert index.phase_tag == "PhaseInDescription"
    assert index.phase_keys == [0.0, 25.0, 50.0, 75.0]
    for t, expected in hu.items():
        assert np.array_equal(index.read_phase(t), expected)


def test_a_missing_phase_in_a_per_phase_export_is_named(tmp_path):
    folder, _, _ = _study(tmp_path / "e", layout="series-per-phase", n_phases=5,
                          phases=[0, 1, 3, 4], phase_in_description_only=True)
    with pytest.raises(SeriesProblems, match=r"missing phase: 4 of 5 phases present "
                                             r"\(missing 40%\)"):
        scan_series(folder)


def test_two_equal_reconstructions_are_ambiguous_until_one_is_chosen(tmp_path):
    """Two series of the same phases, thickness and slices: no rule can choose; the error
    lists both, and a UID, a number or a description pattern picks one."""
    root = tmp_path / "export"
    _study(root / "a", description="Cardiac 1.0 B26f", seed=1)
    _study(root / "b", description="Cardiac 1.0 I26f iterative", seed=2)
    with pytest.raises(DicomError, match="no single best") as info:
        scan_series(root)
    message = str(info.value)
    assert "\n" not in message
    assert message.count("#1 ") == 1 and message.count("#2 ") == 1
    found = discover(root)
    by_uid = {c.uid: c for c in found.candidates}
    for uid, cand in by_uid.items():
        assert scan_series(root, uid).series_uid == uid
        assert scan_series(root, str(cand.number)).series_uid == uid
    iterative = scan_series(root, "*iterative*")
    assert "I26f" in iterative.candidate.first.description
    with pytest.raises(DicomError, match="2 series match"):
        scan_series(root, "cardiac*")
    with pytest.raises(DicomError, match="no series match"):
        scan_series(root, "9")


def test_inspect_lists_candidates_and_prints_json_even_when_it_refuses(tmp_path):
    root = tmp_path / "export"
    _study(root / "a", seed=1)
    _study(root / "b", seed=2)
    out = subprocess.run([sys.executable, "-m", "lvtl.cli", "inspect", "--json", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    report = json.loads(out.stdout)
    assert len(report["candidates"]) == 2 and "chosen" not in report
    assert len(report["problems"]) == 1 and "no single best" in report["problems"][0]
    out = subprocess.run([sys.executable, "-m", "lvtl.cli", "inspect", "--series", "2",
                          str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "* " in out.stdout and "2 candidate 4D series" in out.stdout


def test_a_case_chooses_its_series_with_series_txt(tmp_path):
    """preprocess refuses an ambiguous case, uses its series.txt, and redoes the cache when
    the choice changes (the choice is part of the cache key)."""
    from lvtl.data.preprocess import PreprocessConfig, preprocess_case

    case = tmp_path / "case"
    _study(case / "dicom" / "a", seed=1)
    _study(case / "dicom" / "b", seed=2)
    uids = {c.first.path.relative_to(case / "dicom").parts[0]: c.uid
            for c in discover(case / "dicom").candidates}
    cfg = PreprocessConfig(spacing_mm=2.0)
    with pytest.raises(DicomError, match="no single best"):
        preprocess_case(case, tmp_path / "cache", cfg)
    for pick in ("b", "a"):
        (case / "series.txt").write_text(f"# the reconstruction we contoured\n{uids[pick]}\n")
        res = preprocess_case(case, tmp_path / "cache", cfg)
        assert res.status == "written"
        meta = json.loads((tmp_path / "cache" / "case" / "meta.json").read_text())
        assert meta["series_uid"] == uids[pick]
    assert preprocess_case(case, tmp_path / "cache", cfg).status == "cached"


@pytest.mark.parametrize("layout", ["enhanced", "series-per-phase"])
def test_dicom_seg_of_any_layout_references_its_sources_and_round_trips(layout, tmp_path):
    import highdicom as hd

    from lvtl.io.seg import write_seg

    folder, _, g = _study(tmp_path / "e", layout=layout, syntax="jpeg-lossless")
    index = scan_series(folder)
    labels = np.zeros(g.shape, np.uint8)
    labels[1:4, 4:10, 5:12] = 1
    labels[2, 6:8, 7:9] = 2
    path = write_seg(tmp_path / "seg.dcm", labels, index, 2)
    seg = hd.seg.segread(path)
    sources = {sl.path for sl in index.phases[2]}
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence}
    assert len(refs) == len(sources)
    # each segmentation frame lies at a slice of phase 2: read back by position
    positions = [tuple(np.round(f.PlanePositionSequence[0].ImagePositionPatient, 3))
                 for f in seg.PerFrameFunctionalGroupsSequence]
    k_of = {tuple(np.round(sl.position, 3)): k for k, sl in enumerate(index.phases[2])}
    back = np.zeros_like(labels)
    frames = seg.pixel_array.reshape(len(positions), -1, *labels.shape[1:])
    numbers = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
               for f in seg.PerFrameFunctionalGroupsSequence]
    for pos, frame, number in zip(positions, frames[:, 0] if frames.ndim == 4 else frames,
                                  numbers, strict=True):
        back[k_of[pos]][frame.astype(bool)] = number
    assert np.array_equal(back, labels)
