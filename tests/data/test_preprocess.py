"""Label repair, relabelling, resampling geometry and the cached 4D pair."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from lvtl.data import preprocess as pp
from lvtl.data import resample as rs
from lvtl.data.cache import load_cached
from lvtl.data.crops import random_crop
from lvtl.data.preprocess import PreprocessConfig, preprocess_case
from lvtl.data.repair import relabel, repair_labels
from lvtl.data.resample import CANONICAL, canonical_grid, resample, resample_labels
from lvtl.errors import ConfigError, LabelError
from lvtl.io.geometry import Geometry
from lvtl.measure.metrics import dice
from lvtl.synth.case import Case
from lvtl.synth.profiles import draw_case


def _tree_hash(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_mtime_ns}|".encode() + p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- kernels
def test_relabel_maps_values_and_names_unexpected_ones():
    lab = np.array([[0, 100, 200], [200, 0, 100]])
    out = relabel(lab, blood_pool_value=200, myocardium_value=100)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 2, 1], [1, 0, 2]]
    with pytest.raises(LabelError, match=r"case-7/labels/phase_03.nii.gz: unexpected .* 3"):
        relabel(np.array([0, 1, 2, 3]), source="case-7/labels/phase_03.nii.gz")


@pytest.mark.parametrize("site,i", [("site-1", 0), ("site-2", 1)])
def test_repair_recovers_flood_fill_labels(site, i):
    case = Case(draw_case(site, i))
    truth, _ = case.truth(case.p.ed)
    ff = case.flood_fill_labels(truth, case.p.ed)
    rep = repair_labels(ff, radius=5, mode="2d")
    for label in (1, 2):
        before, after = dice(ff, truth, label), dice(rep, truth, label)
        assert after > before + 0.03
        assert after > 0.96
    assert np.array_equal(rep[ff > 0], ff[ff > 0])  # labelled voxels keep their label
    assert np.array_equal(repair_labels(ff, radius=0), ff)


def test_repair_fills_an_enclosed_hole_and_a_ring_gap():
    lab = np.zeros((1, 41, 41), np.uint8)
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    lab[0][r < 10] = 1
    lab[0][(r >= 12) & (r < 17)] = 2  # ring gap 10..12 between blood pool and wall
    lab[0][(np.abs(yy - 20) <= 2) & (np.abs(xx - 18) <= 2)] = 0  # hole in blood pool
    rep = repair_labels(lab, 5, "2d")[0]
    assert np.all(rep[r < 10] == 1)
    assert np.all(rep[(r >= 10.5) & (r < 11.5)] > 0)
    assert np.all(rep[r >= 17.5] == 0)  # nothing grows outside


def test_config_validation_names_the_choices():
    with pytest.raises(ConfigError, match="did you mean '3d'"):
        PreprocessConfig(repair_mode="3D".lower() + "x")
    with pytest.raises(ConfigError, match="onehot, nearest"):
        PreprocessConfig(label_interp="linear")
    with pytest.raises(ConfigError, match="spacing"):
        PreprocessConfig(spacing_mm=0)


def _geoms():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return {
        "HFS": Geometry.make((30, 40, 36), (0.7, 0.5, 0.5), (-9.0, -10.0, -8.0),
                             [[0, 0, 1], [0, 1, 0], [1, 0, 0]]),
        "FFS": Geometry.make((24, 30, 34), (2.0, 1.2, 1.2), (12.0, -10.0, 25.0),
                             [[0, 0, -1], [0, 1, 0], [-1, 0, 0]]),
        "sagittal": Geometry.make((20, 30, 26), (1.3, 0.9, 1.1), (-5.0, -12.0, 14.0),
                                  [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
        "oblique": Geometry.make((22, 24, 26), (1.1, 0.9, 1.0), (-3.0, 2.0, -4.0),
                                 q * np.sign(np.linalg.det(q))),
    }


@pytest.mark.parametrize("name", list(_geoms()))
def test_resampling_puts_every_value_at_its_patient_position(name):
    """A field linear in patient coordinates is reproduced exactly by linear resampling."""
    src = _geoms()[name]
    coef = np.array([0.7, -1.3, 2.1])

    def field(geom):
        zz, yy, xx = np.meshgrid(*[np.arange(n) for n in geom.shape], indexing="ij")
        idx = np.stack([zz, yy, xx, np.ones_like(zz)], -1).astype(float)
        lps = idx @ geom.index_to_lps().T
        return (lps[..., :3] @ coef + 5.0).astype(np.float32)

    dst = canonical_grid(src, 1.0)
    assert np.allclose(dst.direction_matrix, CANONICAL)
    out = resample(field(src), src, dst, order=1, fill=np.nan)
    expected = field(dst)
    inside = ~np.isnan(out)
    assert np.allclose(out[inside], expected[inside], atol=2e-3)
    if name == "oblique":  # a rotated box fills part of its patient-aligned bounding box
        assert inside.mean() > 0.15
    else:  # the grid lies within the source box, so every voxel is inside
        assert inside.all()


def test_separable_and_affine_paths_agree():
    src = _geoms()["FFS"]
    arr = np.random.default_rng(0).normal(size=src.shape).astype(np.float32)
    dst = canonical_grid(src, 1.0)
    fast = resample(arr, src, dst, order=1, fill=-5.0)
    slow = rs._resample_affine(arr, src, dst, 1, -5.0)
    assert np.allclose(fast, slow, atol=1e-4)


@pytest.mark.parametrize("mode", ["nearest", "onehot"])
def test_label_resampling_keeps_a_sphere(mode):
    src = Geometry.make((60, 80, 80), (0.7, 0.5, 0.5), (20.0, -20.0, 21.0),
                        [[0, 0, -1], [0, 1, 0], [-1, 0, 0]])
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in src.shape], indexing="ij")
    lps = np.stack([zz, yy, xx, np.ones_like(zz)], -1) @ src.index_to_lps().T
    r = np.linalg.norm(lps[..., :3], axis=-1)
    lab = np.where(r < 8, 1, np.where(r < 14, 2, 0)).astype(np.uint8)
    dst = canonical_grid(src, 1.0)
    out = resample_labels(lab, src, dst, mode)
    for label, vol in ((1, 4 / 3 * np.pi * 8**3), (2, 4 / 3 * np.pi * (14**3 - 8**3))):
        assert (out == label).sum() == pytest.approx(vol, rel=0.05)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in dst.shape], indexing="ij")
    centre = (np.stack([zz, yy, xx], -1)[out == 1]).mean(axis=0)
    centre_lps = dst.index_to_lps() @ np.r_[centre, 1.0]
    assert np.allclose(centre_lps[:3], 0.0, atol=0.3)


# --------------------------------------------------------------------------- cases
@pytest.fixture(scope="module")
def cache_root(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    before = _tree_hash(phantom_root)
    for site in ("site-1", "site-2"):
        r = preprocess_case(phantom_root / f"{site}-000", out)
        assert r.status == "written"
    assert _tree_hash(phantom_root) == before  # inputs are read-only
    return out


@pytest.mark.parametrize("site", ["site-1", "site-2"])
def test_cached_pair(phantom_root, cache_root, site):
    c = load_cached(cache_root / f"{site}-000")
    truth = json.loads((phantom_root / f"{site}-000" / "truth" / "case.json").read_text())
    assert c.image.dtype == np.int16 and c.label.dtype == np.uint8
    assert c.image.shape == c.label.shape and c.image.shape[0] == 20
    assert c.image.shape[1:] == c.geometry.shape
    assert c.geometry.spacing == (1.0, 1.0, 1.0)
    assert np.allclose(c.geometry.direction_matrix, CANONICAL)
    assert np.flatnonzero(c.labelled).tolist() == truth["labelled_phases"]
    assert c.meta["ed_phase"] == truth["ed_phase"] and c.meta["es_phase"] == truth["es_phase"]
    for t in range(20):
        has = c.label[t].any()
        assert has == c.labelled[t]
    # the labelled blood pool is bright contrast, the myocardium is not
    ed = truth["ed_phase"]
    blood = c.image[ed][c.label[ed] == 1].mean()
    myo = c.image[ed][c.label[ed] == 2].mean()
    assert 250 < blood < 480 and 0 < myo < 250
    vol = c.meta["volumes"][str(ed)]["blood_pool_ml"]
    assert vol == pytest.approx(truth["blood_pool_ml"][str(ed)], rel=0.06)


def test_crops_with_the_cached_foreground_are_the_same(cache_root):
    """A cached case finds each phase's foreground once; the training crops drawn with it
    are those drawn by scanning the label each time (same draws of the generator)."""
    c = load_cached(cache_root / "site-2-000")
    for ph in np.flatnonzero(c.labelled):
        assert np.array_equal(c.foreground(int(ph)), np.argwhere(c.label[ph] > 0))
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    on_foreground = 0
    for _ in range(12):
        with_cache = random_crop(c.image, c.label, c.labelled, (4, 24, 32, 32), a,
                                 foreground_voxels=c.foreground)
        scanned = random_crop(c.image, c.label, c.labelled, (4, 24, 32, 32), b)
        assert all(np.array_equal(x, y) for x, y in zip(with_cache, scanned, strict=True))
        on_foreground += bool(with_cache[1].any())
    assert on_foreground >= 6  # most crops centre on the foreground (the cache is used)


def test_head_first_and_feet_first_cases_look_alike(cache_root):
    """Both sites' caches have the apex towards the patient's left, anterior and inferior."""
    for site in ("site-1", "site-2"):
        c = load_cached(cache_root / f"{site}-000")
        ed = c.meta["ed_phase"]
        myo = np.argwhere(c.label[ed] == 2).astype(float)
        blood = np.argwhere(c.label[ed] == 1).astype(float)
        apex = myo[myo[:, 0] < np.percentile(myo[:, 0], 5)].mean(axis=0)
        centre = blood.mean(axis=0)
        assert apex[0] < centre[0] - 10  # inferior (z runs to superior)
        assert apex[1] < centre[1] - 2  # anterior (y runs to posterior)
        assert apex[2] > centre[2] + 3  # left (x runs to the patient's left)


def test_cache_is_resumable_and_follows_its_inputs(site2_case, tmp_path):
    case = tmp_path / "in" / site2_case.name
    shutil.copytree(site2_case, case)
    out = tmp_path / "cache"
    first = preprocess_case(case, out)
    assert first.status == "written"
    stamp = (out / case.name / "image.npy").stat().st_mtime_ns
    assert preprocess_case(case, out).status == "cached"
    assert (out / case.name / "image.npy").stat().st_mtime_ns == stamp
    assert preprocess_case(case, out, PreprocessConfig(repair_radius=3)).status == "written"
    label = next((case / "labels").iterdir())
    label.touch()
    assert preprocess_case(case, out, PreprocessConfig(repair_radius=3)).status == "written"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_failure_midway_leaves_the_old_cache_and_no_debris(site2_case, tmp_path, monkeypatch):
    case = tmp_path / "in" / site2_case.name
    shutil.copytree(site2_case, case)
    out = tmp_path / "cache"
    preprocess_case(case, out)
    before = _tree_hash(out / case.name)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pp, "resample_labels", boom)
    with pytest.raises(RuntimeError):
        preprocess_case(case, out, force=True)
    assert _tree_hash(out / case.name) == before
    assert sorted(p.name for p in out.iterdir()) == [case.name]


@pytest.mark.parametrize("name", ["HFS", "FFS", "sagittal", "oblique"])
def test_streamed_phase_resampling_equals_whole_volume_resampling(tmp_path, name):
    from lvtl.io.dicom import scan_series
    from lvtl.io.dicom_write import SeriesInfo, new_uid, write_phase

    src = _geoms()[name]
    vol = np.random.default_rng(2).integers(-1000, 1000, src.shape).astype(np.float32)
    info = SeriesInfo(patient_id="p", patient_name="p", study_uid=new_uid(),
                      series_uid=new_uid(), frame_of_reference_uid=new_uid(), n_phases=1)
    write_phase(tmp_path, vol, src, 0, info, first_instance=1)
    index = scan_series(tmp_path)
    dst = canonical_grid(index.geometry, 1.0)
    streamed = rs.resample_phase(index, 0, dst)
    whole = resample(index.read_phase(0), index.geometry, dst)
    assert streamed.shape == dst.shape
    assert np.allclose(streamed, whole, atol=1e-3)
