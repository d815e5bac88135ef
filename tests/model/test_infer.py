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


# --------------------------------------------------------------------------- the cache grid
def _radius(shape, centre):
    """Distance (mm) of each 1 mm voxel centre from ``centre`` (voxel units)."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, centre, strict=True)],
                             indexing="ij")
    return np.sqrt(zz**2 + yy**2 + xx**2)


def _shell_labels(r, r_in, r_out):
    lab = np.zeros(r.shape, np.uint8)
    lab[r < r_out] = 2
    lab[r < r_in] = 1
    return lab


def _shell_proba(r, r_in, r_out, width=1.0):
    """Smooth class probabilities (background, blood pool, LVM) of a spherical shell, as a
    network gives them: logistic in the distance to each surface, ``width`` mm."""
    p_in = 1.0 / (1.0 + np.exp((r - r_in) / width))
    p_out = 1.0 / (1.0 + np.exp((r - r_out) / width))
    return np.stack([1.0 - p_out, p_in, p_out - p_in]).astype(np.float32)


def _downsampled(label, factor=2):
    from lvtl.data.cache import CachedCase, downsample
    from lvtl.io.geometry import Geometry

    n = label.shape
    case = CachedCase("c", np.zeros((1, *n), np.int16), label[None], np.ones(1, bool),
                      Geometry(n, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), {})
    return downsample(case, factor)


R_IN, R_OUT = 12.0, 17.0


@pytest.mark.parametrize("shape", [(42, 42, 42), (43, 41, 45)])
def test_an_upsampled_one_hot_prediction_keeps_each_coarse_voxel_at_its_cache_voxel(shape):
    """The coarse labels of lvtl.data.cache.downsample, one-hot, brought back to the 1 mm
    grid: every coarse voxel lands on its own cache voxel unchanged (no shift), and a voxel
    between coarse voxels differs from the 1 mm truth only where a surface passes within one
    coarse cell of it (sqrt(3) mm), even and odd sizes alike."""
    from lvtl.model.infer import upsample_proba

    r = _radius(shape, np.array(shape) / 2 + [0.3, -0.4, 0.2])
    truth = _shell_labels(r, R_IN, R_OUT)
    coarse = _downsampled(truth)
    assert coarse.factor == 2 and np.array_equal(coarse.native_label[0], truth)
    one_hot = np.stack([(coarse.label[0] == k) for k in range(3)]).astype(np.float32)
    up = upsample_proba(one_hot, shape, 2).argmax(axis=0)
    assert up.shape == shape
    nc = [n // 2 for n in shape]
    lattice = (slice(0, 2 * nc[0], 2), slice(0, 2 * nc[1], 2), slice(0, 2 * nc[2], 2))
    assert np.array_equal(up[lattice], truth[lattice])
    wrong = up != truth
    near = (np.abs(r - R_IN) < np.sqrt(3)) | (np.abs(r - R_OUT) < np.sqrt(3))
    assert wrong.any() and not (wrong & ~near).any()


@pytest.mark.parametrize("shape,centre", [((42, 42, 42), (0.3, -0.4, 0.2)),
                                          ((43, 41, 45), (-0.7, 0.1, 0.6))])
def test_upsampled_probabilities_put_the_surfaces_where_the_truth_has_them(shape, centre):
    """Smooth class probabilities of a shell at the 2 mm voxels (coarse voxel i at cache
    voxel 2i, as the test above checks against downsample), upsampled trilinearly, then the
    most probable class: Dice against the 1 mm truth labels.

    A surface of area A displaced by d on average mislabels about A * d of volume, so
    Dice = 1 - A d / (2 V) for a label of volume V. Upsampled at the right centres, the
    surfaces must lie within d = 0.1 mm (a twentieth of a coarse voxel). Upsampled as if the
    coarse voxels sat at their blocks' centres (torch's interpolate with align_corners=False:
    half a cache voxel further on along each axis, a shift of 0.87 mm, 0.43 mm on average
    normal to a sphere), the Dice must fall below 1 - A * 0.3 mm / (2 V)."""
    import torch

    from lvtl.model.infer import upsample_proba

    r = _radius(shape, np.array(shape) / 2 + centre)
    truth = _shell_labels(r, R_IN, R_OUT)
    nc = tuple(n // 2 for n in shape)
    coarse = _shell_proba(r[::2, ::2, ::2][:nc[0], :nc[1], :nc[2]], R_IN, R_OUT)
    up = upsample_proba(coarse, shape, 2)
    assert up.shape == (3, *shape) and np.allclose(up.sum(axis=0), 1.0, atol=1e-5)
    block = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], scale_factor=2,
                                            mode="trilinear", align_corners=False)[0].numpy()
    shifted = np.zeros_like(up)
    shifted[0] = 1.0
    shifted[:, :block.shape[1], :block.shape[2], :block.shape[3]] = block
    area = {1: 4 * np.pi * R_IN**2, 2: 4 * np.pi * (R_IN**2 + R_OUT**2)}
    volume = {1: 4 / 3 * np.pi * R_IN**3, 2: 4 / 3 * np.pi * (R_OUT**3 - R_IN**3)}
    for k in (1, 2):
        a_2v = area[k] / (2 * volume[k])
        assert dice(up.argmax(axis=0), truth, k) >= 1 - a_2v * 0.1
        assert dice(shifted.argmax(axis=0), truth, k) <= 1 - a_2v * 0.3


@pytest.mark.parametrize("factor", [2, 3])
def test_upsampling_sizes_not_divisible_by_the_factor(factor):
    from lvtl.model.infer import upsample_proba

    shape = (25, 23, 16)
    nc = tuple(n // factor for n in shape)
    prob = np.random.default_rng(factor).dirichlet(np.ones(3), nc).transpose(3, 0, 1, 2)
    up = upsample_proba(prob, shape, factor)
    assert up.shape == (3, *shape) and up.dtype == np.float32
    assert np.allclose(up.sum(axis=0), 1.0, atol=1e-5)
    f = factor
    # coarse voxel i is cache voxel f * i, exactly
    assert np.array_equal(up[:, ::f, ::f, ::f][:, :nc[0], :nc[1], :nc[2]],
                          prob.astype(np.float32))
    # between them, distance-weighted: one cache voxel after coarse voxel 0 along z
    assert np.allclose(up[:, 1, 0, 0], (prob[:, 0, 0, 0] * (f - 1) + prob[:, 1, 0, 0]) / f)
    # beyond the last coarse voxel (the tail, here f - 1 + n % f voxels), its values
    last = f * (nc[0] - 1)
    assert shape[0] - 1 - last == f - 1 + shape[0] % f
    for z in range(last, shape[0]):
        assert np.array_equal(up[:, z, ::f, ::f][:, :nc[1], :nc[2]],
                              prob[:, -1].astype(np.float32))
    with pytest.raises(ValueError, match="not the"):
        upsample_proba(prob, (shape[0] + factor, *shape[1:]), factor)
    assert np.array_equal(upsample_proba(prob, nc, 1), prob.astype(np.float32))  # factor 1
