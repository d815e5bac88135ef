"""Predictions written for a viewer: NIfTI per phase and DICOM SEG on the source series."""

import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from lvtl.data.cache import load_cached
from lvtl.data.preprocess import PreprocessConfig, preprocess_case
from lvtl.data.resample import resample_labels
from lvtl.io.dicom import scan_series
from lvtl.io.nifti import read_volume
from lvtl.io.seg import write_seg
from lvtl.measure.metrics import dice
from lvtl.model.infer import write_prediction


@pytest.fixture(scope="module")
def cached_site2(site2_case, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    preprocess_case(site2_case, out, PreprocessConfig())
    return load_cached(out / site2_case.name)


def test_dicom_seg_references_the_phase_and_round_trips(site2_case, cached_site2, tmp_path):
    index = scan_series(site2_case / "dicom")
    phase = int(np.flatnonzero(cached_site2.labelled)[0])
    labels = np.asarray(cached_site2.label[phase])
    expect = resample_labels(labels, cached_site2.geometry, index.geometry, mode="nearest")
    path = write_seg(tmp_path / "seg.dcm", expect, index, phase)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["LV blood pool", "LV myocardium"]
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == index.series_uid
    phase_uids = {str(pydicom.dcmread(sl.path, stop_before_pixels=True).SOPInstanceUID)
                  for sl in index.phases[phase]}
    assert {str(r.ReferencedSOPInstanceUID) for r in ref.ReferencedInstanceSequence} <= phase_uids
    # read back on the source grid: the same voxels as the label map resampled there
    seg = hd.seg.segread(path)
    uids = [str(pydicom.dcmread(sl.path, stop_before_pixels=True).SOPInstanceUID)
            for sl in index.phases[phase]]
    vol = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                            combine_segments=True, skip_overlap_checks=True)
    assert vol.shape == expect.shape
    assert dice(vol, expect, 1) == 1.0 and dice(vol, expect, 2) == 1.0
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left


def test_dicom_seg_passes_dciodvfy(site2_case, cached_site2, tmp_path):
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("LVTL_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (dicom3tools) is required but not installed")
        pytest.skip("dciodvfy (dicom3tools) not installed")
    index = scan_series(site2_case / "dicom")
    phase = int(np.flatnonzero(cached_site2.labelled)[-1])
    labels = resample_labels(np.asarray(cached_site2.label[phase]), cached_site2.geometry,
                             index.geometry, mode="nearest")
    path = write_seg(tmp_path / "seg.dcm", labels, index, phase)
    out = subprocess.run([tool, str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "Segmentation" in text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error")]
    assert not errors, errors


def test_nifti_per_phase(cached_site2, tmp_path):
    phases = np.flatnonzero(cached_site2.labelled).tolist()
    labels = np.stack([np.asarray(cached_site2.label[p]) for p in phases])
    paths = write_prediction(tmp_path, labels, phases, cached_site2.geometry)
    assert [p.name for p in paths] == [f"phase_{p:02d}.nii.gz" for p in phases]
    back, geom = read_volume(paths[0])
    assert np.array_equal(back, labels[0]) and geom.shape == cached_site2.geometry.shape


def test_cli_infer_writes_nifti_and_seg(site2_case, tmp_path):
    import torch
    from typer.testing import CliRunner

    from lvtl.cli import app
    from lvtl.errors import ConfigError
    from lvtl.model.checkpoint import model_checkpoint
    from lvtl.model.network import LVNet4d
    from lvtl.model.train import TrainConfig, init_weights

    model = LVNet4d(init_filters=4, blocks_down=(1, 1), groups=4)
    init_weights(model, "default", 0)
    torch.save(model_checkpoint(model, TrainConfig(crop=(4, 16, 16, 16)), {}), tmp_path / "m.pt")
    args = ["infer", str(site2_case), "--model", str(tmp_path / "m.pt"), "--out",
            str(tmp_path / "out"), "--crop", "4,16,16,16"]
    r = CliRunner().invoke(app, [*args, "--phases", "0,7"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out" / "nifti").iterdir()) == [
        "phase_00.nii.gz", "phase_07.nii.gz"]
    segs = sorted((tmp_path / "out" / "seg").iterdir())
    assert [p.name for p in segs] == ["phase_00.dcm", "phase_07.dcm"]
    assert pydicom.dcmread(segs[0]).Modality == "SEG"
    r = CliRunner().invoke(app, [*args, "--phases", "0,99"])
    assert isinstance(r.exception, ConfigError) and "phases 0 to 19" in str(r.exception)


@pytest.mark.parametrize("t_all,ct,phases,n_windows", [
    (20, 4, range(0, 20, 2), 5),  # every other phase: each window covers two
    (20, 4, [0, 8], 2),  # ED and ES
    (20, 4, [19, 0, 1], 1),  # across the end of the cycle
    (20, 16, [0, 8], 1),  # the paper's 16-phase window holds both
    (3, 4, [0, 1, 2], 1),  # fewer phases than the window
])
def test_time_windows_cover_the_chosen_phases_with_the_fewest_windows(t_all, ct, phases,
                                                                     n_windows):
    from lvtl.model.infer import _time_windows

    wins = _time_windows(t_all, ct, list(phases))
    assert len(wins) == n_windows
    assert all(len(w) == min(ct, t_all) and len(set(w.tolist())) == len(w) for w in wins)
    assert set(phases) <= {int(t) for w in wins for t in w}
    assert len(_time_windows(20, 4, None)) == 10  # every phase: a window every ct // 2
