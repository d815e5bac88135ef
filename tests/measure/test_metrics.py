import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from scipy import stats

from lvtl.labels import KEYS
from lvtl.measure.metrics import (
    bland_altman,
    case_dice,
    dice,
    pearson,
    summarize,
    thickness_stats,
)


def _monai_dice(pred, target, **kwargs):
    """MONAI Dice of labels 1 and 2 (background excluded) for one 3D label map pair."""
    def onehot(a):
        return one_hot(torch.from_numpy(a.astype(np.int64))[None, None], num_classes=3)

    metric = DiceMetric(include_background=False, reduction="none", **kwargs)
    return metric(onehot(pred), onehot(target))[0].double().numpy()


def _random_maps(seed, shape=(6, 9, 11)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 3, shape)
    pred = target.copy()
    flip = rng.random(shape) < 0.3 + 0.1 * (seed % 4)  # corrupt 30-60 % of the voxels
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    return pred, target


@pytest.mark.parametrize("seed", range(6))
def test_dice_matches_monai_on_random_maps(seed):
    pred, target = _random_maps(seed)
    ref = _monai_dice(pred, target)
    got = case_dice(pred, target)
    assert list(got) == ["blood_pool", "lvm"]
    for i, (name, label) in enumerate(KEYS.items()):
        assert dice(pred, target, label) == pytest.approx(ref[i], abs=1e-6)
        assert got[name] == pytest.approx(ref[i], abs=1e-6)
    assert 0.0 < got["blood_pool"] < 1.0 and 0.0 < got["lvm"] < 1.0


def test_labels_follow_the_label_map_contract():
    assert KEYS == {"blood_pool": 1, "lvm": 2}


def test_dice_hand_cases():
    a = np.zeros((4, 5, 6), np.uint8)
    a[1:3, 1:4, 2:5] = 1
    a[0, 0, :] = 2
    assert case_dice(a, a) == {"blood_pool": 1.0, "lvm": 1.0}

    b = np.zeros_like(a)
    b[3, 4, 0] = 1
    b[3, 0, 5] = 2
    assert case_dice(a, b) == {"blood_pool": 0.0, "lvm": 0.0}

    # half overlap: |P| = 2, |T| = 2, |P ∩ T| = 1 -> 2·1 / 4
    p, t = np.zeros((1, 1, 3), int), np.zeros((1, 1, 3), int)
    p[0, 0, :2] = 1
    t[0, 0, 1:] = 1
    assert dice(p, t, 1) == 0.5


def test_dice_is_one_where_monai_gives_nan_for_an_absent_label():
    # Label 2 is absent from both maps. MONAI's DiceMetric (default ignore_empty=True) returns
    # NaN for it; lvtl defines Dice as 1.0 there so means over cases stay NaN-free.
    rng = np.random.default_rng(7)
    target = rng.integers(0, 2, (5, 6, 7))
    pred = target.copy()
    pred[0] = 1 - pred[0]
    ref = _monai_dice(pred, target)
    assert math.isnan(ref[1])
    assert ref[0] == pytest.approx(dice(pred, target, 1), abs=1e-6)
    got = case_dice(pred, target)
    assert got["lvm"] == 1.0
    assert not any(math.isnan(v) for v in got.values())
    # with ignore_empty=False MONAI agrees with lvtl
    assert _monai_dice(pred, target, ignore_empty=False)[1] == pytest.approx(1.0)


def test_dice_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), 1)


@pytest.mark.parametrize("seed", range(4))
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 20 + 10 * seed
    x = rng.normal(size=n)
    y = (0.2 + 0.25 * seed) * x + rng.normal(size=n)
    res = pearson(x, y)
    ref = stats.pearsonr(x, y)
    assert res["n"] == n
    assert res["r"] == pytest.approx(ref.statistic, abs=1e-12)
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)
    assert -1.0 <= res["ci_low"] < res["r"] < res["ci_high"] <= 1.0


def _data_with_r(r, n, seed=0):
    """Paired samples whose sample correlation is exactly ``r`` (to rounding)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x = (x - x.mean()) / np.linalg.norm(x - x.mean())
    e = rng.normal(size=n)
    e -= e.mean()
    e -= (e @ x) * x
    e /= np.linalg.norm(e)
    return x, r * x + math.sqrt(1 - r * r) * e


def test_pearson_ci_matches_fisher_z_by_hand():
    r, n = 0.5, 45
    x, y = _data_with_r(r, n)
    res = pearson(x, y)
    assert res["r"] == pytest.approx(r, abs=1e-12)
    # by hand: z = ½·ln((1+r)/(1-r)), se = 1/√(n-3), back-transform (e^{2z}-1)/(e^{2z}+1)
    z = 0.5 * math.log((1 + r) / (1 - r))
    half = 1.959964 / math.sqrt(n - 3)
    back = [(math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) for v in (z - half, z + half)]
    assert res["ci_low"] == pytest.approx(back[0], abs=1e-9)
    assert res["ci_high"] == pytest.approx(back[1], abs=1e-9)
    assert res["ci_low"] == pytest.approx(0.24, abs=0.005)
    assert res["ci_high"] == pytest.approx(0.69, abs=0.005)


@pytest.mark.parametrize("r", [-0.9, -0.3, 0.0, 0.3, 0.95])
def test_pearson_ci_contains_r_and_stays_in_range(r):
    res = pearson(*_data_with_r(r, 12, seed=3))
    assert -1.0 <= res["ci_low"] <= res["r"] <= res["ci_high"] <= 1.0
    assert 0.0 <= res["p"] <= 1.0


def test_pearson_perfect_correlation_has_a_point_ci():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    up, down = pearson(x, 2 * x + 1), pearson(x, -3 * x)
    assert (up["r"], up["ci_low"], up["ci_high"], up["p"]) == (1.0, 1.0, 1.0, 0.0)
    assert (down["r"], down["ci_low"], down["ci_high"], down["p"]) == (-1.0, -1.0, -1.0, 0.0)


def test_pearson_with_three_pairs_has_the_widest_ci():
    res = pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert res["r"] == pytest.approx(0.5)
    assert (res["ci_low"], res["ci_high"]) == (-1.0, 1.0)
    assert res["p"] == pytest.approx(stats.pearsonr([1, 2, 3], [1, 3, 2]).pvalue)


def test_pearson_errors():
    with pytest.raises(ValueError, match="at least 3"):
        pearson([1.0, 2.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="input x is constant"):
        pearson([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="input y is constant"):
        pearson([1.0, 2.0, 3.0, 5.0], [0.7] * 4)
    with pytest.raises(ValueError, match="differ in length"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="non-finite"):
        pearson([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])


def test_bland_altman_hand_example():
    truth = [10.0, 12.0, 9.0, 11.0]
    pred = [11.0, 12.0, 11.0, 11.0]  # differences 1, 0, 2, 0: mean 0.75
    res = bland_altman(pred, truth)
    sd = math.sqrt((0.25**2 + 2 * 0.75**2 + 1.25**2) / 3)  # = √(2.75/3)
    assert res["n"] == 4
    assert res["bias"] == pytest.approx(0.75)
    assert res["sd"] == pytest.approx(sd)
    assert res["loa_low"] == pytest.approx(0.75 - 1.96 * sd)
    assert res["loa_high"] == pytest.approx(0.75 + 1.96 * sd)


def test_bland_altman_errors():
    with pytest.raises(ValueError, match="at least 2"):
        bland_altman([1.0], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        bland_altman([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="truth holds 1 non-finite"):
        bland_altman([1.0, 2.0], [1.0, np.inf])


@pytest.mark.parametrize("seed", range(3))
def test_thickness_stats_match_numpy(seed):
    values = np.random.default_rng(seed).gamma(4.0, 2.0, size=(37 + seed * 50,))
    res = thickness_stats(values)
    assert res["median"] == pytest.approx(np.median(values))
    assert res["p95"] == pytest.approx(np.percentile(values, 95))
    assert res["max"] == values.max()
    assert res["median"] <= res["p95"] <= res["max"]


def test_thickness_stats_hand_example_and_errors():
    res = thickness_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    # 95th percentile, linear: position 0.95·4 = 3.8 -> 4 + 0.8·(5-4)
    assert res == pytest.approx({"median": 3.0, "p95": 4.8, "max": 5.0})
    with pytest.raises(ValueError, match="empty"):
        thickness_stats(np.array([]))
    with pytest.raises(ValueError, match="non-finite"):
        thickness_stats([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="negative"):
        thickness_stats([1.0, -0.5])


def test_summarize_hand_example():
    res = summarize([0.8, 0.9, 0.7, 0.6])
    assert res["n"] == 4
    assert res["mean"] == pytest.approx(0.75)
    assert (res["max"], res["min"]) == (0.9, 0.6)
    # sample SD: squared deviations 0.0025 + 0.0225 + 0.0025 + 0.0225 = 0.05, / (n-1)
    assert res["std"] == pytest.approx(math.sqrt(0.05 / 3))
    assert summarize([0.42]) == {"mean": 0.42, "max": 0.42, "min": 0.42, "std": 0.0, "n": 1}


def test_summarize_errors():
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([0.5, float("nan")])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([0.5, float("inf")])
