import logging

import pytest

from lvtl.data.splits import PAPER_SIZES, nested_subsets, split_cases
from lvtl.errors import ConfigError

IDS = [f"site-2-{i:03d}" for i in range(95)]


def test_paper_split_of_95_cases():
    s = split_cases(IDS, seed=2)
    assert (len(s.test), len(s.val), len(s.train)) == (45, 20, 30)
    assert not (set(s.test) & set(s.val) or set(s.test) & set(s.train) or set(s.val) & set(s.train))
    assert set(s.test) | set(s.val) | set(s.train) == set(IDS)


def test_split_is_deterministic_and_order_free():
    assert split_cases(IDS, seed=5) == split_cases(list(reversed(IDS)), seed=5)
    assert split_cases(IDS, seed=5) != split_cases(IDS, seed=6)


@pytest.mark.parametrize("n,expected", [(19, (9, 4, 6)), (10, (5, 2, 3)), (3, (1, 1, 1))])
def test_split_scales_with_fewer_cases(n, expected):
    s = split_cases(IDS[:n])
    assert (len(s.test), len(s.val), len(s.train)) == expected


def test_split_refuses_too_few_or_duplicate_cases():
    with pytest.raises(ConfigError, match="at least 3"):
        split_cases(IDS[:2])
    with pytest.raises(ConfigError, match="unique"):
        split_cases(IDS[:3] + IDS[:1])


def test_nested_subsets_grow_by_adding_cases():
    train = split_cases(IDS, seed=1).train
    subsets = nested_subsets(train, PAPER_SIZES, seed=3)
    assert list(subsets) == list(PAPER_SIZES)
    sizes = sorted(subsets)
    for small, big in zip(sizes, sizes[1:], strict=False):
        assert set(subsets[small]) < set(subsets[big])
        assert len(subsets[big]) - len(subsets[small]) == 5
    assert set(subsets[30]) == set(train)


def test_sizes_beyond_the_training_split_are_clipped_with_a_warning(caplog):
    train = split_cases(IDS[:19]).train  # 6 training cases
    with caplog.at_level(logging.WARNING):
        subsets = nested_subsets(train, PAPER_SIZES)
    assert list(subsets) == [5, 6]
    assert "clipped to 6" in caplog.text
    with pytest.raises(ConfigError, match="positive"):
        nested_subsets(train, [0, 5])


def _case(t=20, shape=(30, 40, 40)):
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 600, (t, *shape)).astype(np.int16)
    label = np.zeros((t, *shape), np.uint8)
    labelled = np.zeros(t, bool)
    for ph in (0, 7):
        label[ph, 10:20, 15:25, 15:25] = 2
        label[ph, 12:18, 17:23, 17:23] = 1
        labelled[ph] = True
    return image, label, labelled


def test_crops_hold_a_labelled_phase_and_mostly_foreground():
    import numpy as np

    from lvtl.data.crops import random_crop

    image, label, labelled = _case()
    rng = np.random.default_rng(1)
    fg_hits = 0
    for _ in range(60):
        img, lab, lbl = random_crop(image, label, labelled, (16, 16, 24, 24), rng)
        assert img.shape == (1, 16, 16, 24, 24) and img.dtype == np.float32
        assert lab.shape == (16, 16, 24, 24) and lbl.shape == (16,)
        assert lbl.any() and 0.0 <= img.min() and img.max() <= 1.0
        assert not lab[~lbl].any()  # unlabelled phases carry no labels
        fg_hits += bool((lab > 0).any())
    assert fg_hits >= 30  # foreground sampling: about two thirds of crops, plus chance hits


def test_crop_time_window_wraps_and_space_pads_with_air():
    import numpy as np

    from lvtl.data.crops import normalize_hu, random_crop

    image, label, labelled = _case(t=20, shape=(8, 10, 10))
    img, lab, lbl = random_crop(image, label, labelled, (20, 16, 16, 16),
                                np.random.default_rng(2))
    assert lbl.sum() == 2  # all 20 phases, cyclically shifted: both labelled phases
    assert img.shape == (1, 20, 16, 16, 16)
    assert (img == 0.0).sum() > 0  # air beyond the volume is the bottom of the window
    assert normalize_hu(np.array([-1000.0, 300.0, 2000.0])).tolist() == [0.0, 0.5, 1.0]


def test_crops_are_reproducible_and_refuse_cases_without_labels():
    import numpy as np

    from lvtl.data.crops import random_crop

    image, label, labelled = _case()
    a = random_crop(image, label, labelled, (8, 8, 8, 8), np.random.default_rng(5))
    b = random_crop(image, label, labelled, (8, 8, 8, 8), np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="no labelled phase"):
        random_crop(image, label, np.zeros(20, bool), (8, 8, 8, 8), np.random.default_rng(0))
