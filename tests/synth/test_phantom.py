"""The synthetic sites: determinism, anatomy, motion, CT physics, labels, site profiles."""

import json

import numpy as np
import pytest
from scipy import ndimage

from lvtl.errors import ConfigError
from lvtl.io.nifti import read_volume
from lvtl.labels import BLOOD_POOL, MYOCARDIUM, label_file_name
from lvtl.synth.case import Case
from lvtl.synth.heart import contraction
from lvtl.synth.profiles import N_PHASES, SITES, draw_case

CASES = [(site, i) for site in SITES for i in range(3)]


@pytest.fixture(scope="module")
def ed_es():
    """ED and ES truth (labels, analytic thickness) of three cases per site."""
    out = {}
    for site, i in CASES:
        case = Case(draw_case(site, i))
        out[site, i] = (case, case.truth(case.p.ed), case.truth(case.p.es))
    return out


def test_same_seed_same_case_and_pixels():
    a, b = draw_case("site-2", 4, seed=7), draw_case("site-2", 4, seed=7)
    assert a == b
    assert draw_case("site-2", 4, seed=8) != a
    assert draw_case("site-2", 5, seed=7) != a
    img_a = Case(a).render(a.es, 10, 14)
    img_b = Case(b).render(b.es, 10, 14)
    assert np.array_equal(img_a, img_b)


def test_unknown_site_and_size_are_named():
    with pytest.raises(ConfigError, match="site-1, site-2"):
        draw_case("site-9", 0)
    with pytest.raises(ConfigError, match="small, paper"):
        draw_case("site-1", 0, size="huge")


def test_contraction_cycle():
    ed, es = 19, 6
    f = [contraction(t, ed, es) for t in range(N_PHASES)]
    assert f[ed] == 0.0 and f[es] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0) and min(f) == 0.0
    # monotone contraction from ED to ES, then relaxation back
    sys_phases = [(ed + k) % N_PHASES for k in range((es - ed) % N_PHASES + 1)]
    assert all(np.diff([f[t] for t in sys_phases]) > 0)


@pytest.mark.parametrize("site,i", CASES)
def test_wall_thickness_ranges_and_thickening(ed_es, site, i):
    case, (lab_ed, th_ed), (lab_es, th_es) = ed_es[site, i]
    t_ed, t_es = th_ed[lab_ed == MYOCARDIUM], th_es[lab_es == MYOCARDIUM]
    assert t_ed.min() >= 5.0 - 1e-6 and t_ed.max() <= 11.0 + 1e-6
    assert 6.5 < np.median(t_ed) < 9.5
    assert t_ed.max() - t_ed.min() > 2.0  # regional variation
    thickening = np.median(t_es) - np.median(t_ed)
    assert 2.5 < thickening < 5.0


@pytest.mark.parametrize("site,i", CASES)
def test_ejection_fraction_and_constant_myocardial_volume(ed_es, site, i):
    case, (lab_ed, _), (lab_es, _) = ed_es[site, i]
    edv, esv = (lab_ed == BLOOD_POOL).sum(), (lab_es == BLOOD_POOL).sum()
    ef = 1 - esv / edv
    assert 0.45 < ef < 0.70
    assert ef == pytest.approx(case.p.ef, abs=0.03)
    vox_ml = np.prod(case.geometry.spacing) / 1000
    assert 70 < edv * vox_ml < 200  # mL
    myo = [(case.truth(t)[0] == MYOCARDIUM).sum() for t in (case.p.ed, case.p.es, 3, 14)]
    assert max(myo) / min(myo) < 1.04


def test_papillary_muscles_are_blood_pool_and_holes_in_flood_fill(ed_es):
    case, (lab, _), _ = ed_es["site-2", 0]
    pap = case.papillary_mask(case.p.ed)
    assert pap.sum() > 50
    # attached to the wall: the part inside the cavity is blood pool, none is background
    assert np.all(lab[pap] > 0)
    assert (lab[pap] == BLOOD_POOL).mean() > 0.8
    ff = case.flood_fill_labels(lab, case.p.ed)
    assert np.all(ff[pap & (lab == BLOOD_POOL)] == 0)


def test_flood_fill_labels_have_gaps_and_holes_only(ed_es):
    case, (lab, _), _ = ed_es["site-1", 1]
    ff = case.flood_fill_labels(lab, case.p.ed)
    # nothing labelled that the truth does not have, with the same label
    assert np.all((ff == 0) | (ff == lab))
    lost = (lab > 0) & (ff == 0)
    assert lost.sum() > 0.05 * (lab > 0).sum()
    # a gap separates blood pool from myocardium in-plane
    disc = ndimage.generate_binary_structure(2, 1)[None]
    touching = ndimage.binary_dilation(ff == BLOOD_POOL, disc) & (ff == MYOCARDIUM)
    assert touching.sum() == 0


def test_ct_intensities_and_noise(ed_es):
    case, (lab, _), _ = ed_es["site-2", 1]
    p = case.p
    img = case.render(p.ed)
    ball = ndimage.generate_binary_structure(3, 1)
    blood = ndimage.binary_erosion(lab == BLOOD_POOL, ball, iterations=3)
    blood &= ~ndimage.binary_dilation(case.papillary_mask(p.ed), ball, iterations=3)
    assert img[blood].mean() == pytest.approx(p.blood_hu, abs=15)
    assert img[blood].std() == pytest.approx(p.noise_hu, rel=0.25)
    myo = ndimage.binary_erosion(lab == MYOCARDIUM, ball, iterations=1)
    assert img[myo].mean() == pytest.approx(p.myo_hu, abs=35)
    assert 300 <= p.blood_hu <= 450 and 80 <= p.myo_hu <= 150 and 20 <= p.noise_hu <= 40
    assert img.min() < -700  # lung and air are in the field of view


@pytest.mark.parametrize("site", list(SITES))
def test_right_ventricle_follows_the_site_contrast_protocol(ed_es, site):
    """Site 1's saline chaser leaves the RV faint, site 2's contrast-saline mix keeps it
    bright: the RV blood in the image has the site's share of the LV blood's HU."""
    case, (lab, _), _ = ed_es[site, 1]
    p = case.p
    lo, hi = SITES[site].rv_ratio
    assert lo <= p.rv_ratio <= hi
    ball = ndimage.generate_binary_structure(3, 1)
    rv = ndimage.binary_erosion(case.right_ventricle_mask(p.ed), ball, iterations=2)
    assert rv.sum() > 500 and not (rv & (lab > 0)).any()
    img = case.render(p.ed)
    assert img[rv].mean() == pytest.approx(p.blood_hu * p.rv_ratio, abs=20)


def test_site_profiles_differ_like_two_hospitals():
    s1, s2 = SITES["site-1"], SITES["site-2"]
    assert s1.dense_labels and not s2.dense_labels
    assert (s1.default_cases, s2.default_cases) == (61, 95)
    assert s1.noise_hu[1] < s2.noise_hu[0]  # noise ranges do not overlap
    assert s1.blood_hu != s2.blood_hu and s1.blur_mm[1] < s2.blur_mm[0]
    assert s1.patient_position != s2.patient_position
    assert s1.rv_ratio[1] < s2.rv_ratio[0]  # faint against opacified right ventricle
    assert s1.sizes["small"].slice_mm != s2.sizes["small"].slice_mm
    paper = s2.sizes["paper"]
    assert paper.matrix == 512 and paper.pixel_mm == (0.5, 0.5) and paper.slice_mm == 0.7
    assert paper.slices == (146, 249)


def test_the_third_site_is_a_third_kind_of_hospital():
    """Site 3 (the federated arm's third receiving site) differs from both others in vendor
    and scanner, and its contrast protocol lies between theirs: three non-IID sites."""
    s1, s2, s3 = (SITES[f"site-{k}"] for k in (1, 2, 3))
    assert s3.manufacturer not in {s1.manufacturer, s2.manufacturer}
    assert s1.rv_ratio[1] < s3.rv_ratio[0] and s3.rv_ratio[1] < s2.rv_ratio[0]
    assert s3.noise_hu[1] < s1.noise_hu[0]  # the lowest noise of the three
    assert s3.blood_hu[0] > s2.blood_hu[1]
    assert not s3.dense_labels and s3.transfer_syntax == "jpeg-lossless"
    grids = {s.name: s.sizes["small"] for s in (s1, s2, s3)}
    assert len({(g.matrix, g.slice_mm) for g in grids.values()}) == 3


@pytest.mark.parametrize("site", list(SITES))
def test_labelled_phases(site):
    for i in range(6):
        case = Case(draw_case(site, i))
        lp, ed, es = case.labelled_phases, case.p.ed, case.p.es
        assert ed in lp and es in lp
        if not SITES[site].dense_labels:
            assert lp == sorted({ed, es})
        else:
            assert set(lp) >= {(ed + 2 * k) % N_PHASES for k in range(10)}
            assert len(lp) in (10, 11)


def test_written_case_layout(site2_case):
    meta = json.loads((site2_case / "truth" / "case.json").read_text())
    case = Case(draw_case("site-2", 0))
    assert meta["labelled_phases"] == case.labelled_phases
    assert len(list((site2_case / "dicom").glob("*.dcm"))) == N_PHASES * case.geometry.shape[0]
    for t in case.labelled_phases:
        ff, g = read_volume(site2_case / "labels" / label_file_name(t))
        truth, g2 = read_volume(site2_case / "truth" / "labels" / label_file_name(t))
        assert g.matches(case.geometry) and g2.matches(case.geometry)
        assert np.array_equal(truth, case.truth(t)[0])
        assert set(np.unique(ff)) == {0, 1, 2}
    th, _ = read_volume(site2_case / "truth" / "thickness_ed.nii.gz")
    assert th.max() > 5.0
    assert not (site2_case.parent / ".tmp-site-2-000").exists()
