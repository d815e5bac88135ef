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

log = logging.getLogger(__name__)

PAPER_SPLIT = {"test": 45, "val": 20, "train": 30}
PAPER_SIZES = (5, 10, 15, 20, 25, 30)


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
    if n < 3:
        raise ConfigError(f"need at least 3 cases to split into train, val and test, got {n}")
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


def ed_es(label: np.ndarray, labelled: np.ndarray) -> dict[str, int]:
    """End-diastole and end-systole among the labelled phases of ``label`` ``(t, z, y, x)``:
    the phases with the largest and the smallest blood pool (label 1)."""
    phases = np.flatnonzero(labelled)
    if not len(phases):
        raise ConfigError("no labelled phase")
    volumes = [int(np.count_nonzero(np.asarray(label[p]) == 1)) for p in phases]
    return {"ED": int(phases[int(np.argmax(volumes))]),
            "ES": int(phases[int(np.argmin(volumes))])}


# --------------------------------------------------------------------------- crops
HU_WINDOW = (-200.0, 800.0)


def normalize_hu(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale it to [0, 1] (float32)."""
    lo, hi = window
    if not hi > lo:
        raise ConfigError(f"HU window must be (low, high) with high > low, got {window}")
    out = np.clip(np.asarray(hu, np.float32), lo, hi)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def random_crop(image: np.ndarray, label: np.ndarray, labelled: np.ndarray,
                crop: tuple[int, int, int, int], rng: np.random.Generator,
                foreground: float = 0.67, window: tuple[float, float] = HU_WINDOW):
    """One training sample from a cached case: a ``crop`` of ``(t, z, y, x)``.

    With probability ``foreground`` the crop is centred (with jitter) on a random foreground
    voxel of a random labelled phase, otherwise anywhere. Time is cyclic (the cardiac cycle), so
    a window of ``crop[0]`` phases wraps around; it always holds the chosen labelled phase.
    Space outside the volume is air (label 0). Returns ``(image (1, t, z, y, x) float32,
    label (t, z, y, x) int64, labelled (t,) bool)``.
    """
    t_all = image.shape[0]
    ct, *cs = (int(c) for c in crop)
    if image.shape != label.shape or labelled.shape != (t_all,):
        raise ConfigError("image, label and labelled-phase mask do not match")
    if not 1 <= ct <= t_all or min(cs) < 1:
        raise ConfigError(f"crop {tuple(crop)} does not fit {t_all} phases")
    phases = np.flatnonzero(labelled)
    if not len(phases):
        raise ConfigError("a case with no labelled phase cannot give a training crop")
    t0 = int(rng.choice(phases))
    fg = np.argwhere(label[t0] > 0) if rng.random() < foreground else np.empty((0, 3))
    if len(fg):
        centre = fg[rng.integers(len(fg))] + rng.integers(-8, 9, 3)
    else:
        centre = np.array([rng.integers(s) for s in image.shape[1:]])
    start_t = t0 - int(rng.integers(ct))  # the window holds t0 at a random position
    times = (start_t + np.arange(ct)) % t_all
    starts = [int(c) - s // 2 for c, s in zip(centre, cs, strict=True)]
    out_img = np.full((ct, *cs), window[0], np.float32)
    out_lab = np.zeros((ct, *cs), np.int64)
    src, dst = [], []
    for st, size, n in zip(starts, cs, image.shape[1:], strict=True):
        a, b = max(st, 0), min(st + size, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - st, a - st + max(b - a, 0)))
    for k, t in enumerate(times):
        out_img[(k, *dst)] = image[(t, *src)]
        out_lab[(k, *dst)] = label[(t, *src)]
    return normalize_hu(out_img, window)[None], out_lab, labelled[times].copy()
