"""Cases, splits and nested training subsets for the one-site study.

The paper split Site 2's 95 cases into 45 test, 20 validation and 30 training cases, and drew
nested training sets of 5, 10, ..., 30 cases (each adds 5 random cases to the previous one).
A site with another number of cases gets the same proportions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvtl.errors import ConfigError
from lvtl.labels import BLOOD_POOL

log = logging.getLogger(__name__)

PAPER_SPLIT = {"test": 45, "val": 20, "train": 30}
PAPER_SIZES = (5, 10, 15, 20, 25, 30)
MIN_CASES = 3  # one per part: training, validation, test


@dataclass(frozen=True)
class Split:
    """Disjoint case ids for training, validation and test."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_cases(case_ids: Sequence[str], seed: int = 0) -> Split:
    """Split cases in the paper's proportions (45 : 20 : 30 of 95), drawn from ``seed``.

    The result depends only on the set of ids and the seed (not on their order). Needs at least
    three distinct cases (one per part).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ConfigError("case ids must be unique")
    n = len(ids)
    if n < MIN_CASES:
        raise ConfigError(f"need at least {MIN_CASES} cases to split into train, val and test, "
                          f"got {n}")
    total = sum(PAPER_SPLIT.values())
    n_test = max(1, round(n * PAPER_SPLIT["test"] / total))
    n_val = max(1, round(n * PAPER_SPLIT["val"] / total))
    n_test = min(n_test, n - 2)
    n_val = min(n_val, n - n_test - 1)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    return Split(train=tuple(order[n_test + n_val:]), val=tuple(order[n_test: n_test + n_val]),
                 test=tuple(order[:n_test]))


def nested_subsets(train: Sequence[str], sizes: Sequence[int] = PAPER_SIZES,
                   seed: int = 0) -> dict[int, tuple[str, ...]]:
    """Nested training sets: each size's cases include every smaller size's cases.

    Sizes larger than the training split are clipped to it (with a warning) and duplicates
    dropped; sizes must be positive.
    """
    if not train:
        raise ConfigError("the training split is empty")
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"training sizes must be positive, got {list(sizes)}")
    order = [sorted(train)[i] for i in np.random.default_rng(seed).permutation(len(train))]
    out: dict[int, tuple[str, ...]] = {}
    for size in sorted(set(int(s) for s in sizes)):
        if size > len(order):
            log.warning("training size %d exceeds the %d training cases; clipped to %d",
                        size, len(order), len(order))
            size = len(order)
        out[size] = tuple(order[:size])
    return out


#: The two phases evaluated: end-diastole (largest blood pool) and end-systole (smallest).
ED_ES = ("ED", "ES")


def ed_es(label: np.ndarray, labelled: np.ndarray) -> dict[str, int]:
    """End-diastole and end-systole among the labelled phases of ``label`` ``(t, z, y, x)``:
    the phases with the largest and the smallest blood pool (label 1)."""
    phases = np.flatnonzero(labelled)
    if not len(phases):
        raise ConfigError("no labelled phase")
    volumes = [int(np.count_nonzero(np.asarray(label[p]) == BLOOD_POOL)) for p in phases]
    ed, es = ED_ES
    return {ed: int(phases[int(np.argmax(volumes))]), es: int(phases[int(np.argmin(volumes))])}
