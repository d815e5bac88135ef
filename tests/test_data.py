import logging

import pytest

from lvtl.data import PAPER_SIZES, nested_subsets, split_cases
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
