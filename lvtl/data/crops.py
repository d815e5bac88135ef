"""Training crops of cached cases and the HU window the network sees."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lvtl.errors import ConfigError

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
                foreground: float = 0.67, window: tuple[float, float] = HU_WINDOW,
                foreground_voxels: Callable[[int], np.ndarray] | None = None):
    """One training sample from a cached case: a ``crop`` of ``(t, z, y, x)``.

    With probability ``foreground`` the crop is centred (with jitter) on a random foreground
    voxel of a random labelled phase, otherwise anywhere. Time is cyclic (the cardiac cycle), so
    a window of ``crop[0]`` phases wraps around; it always holds the chosen labelled phase.
    Space outside the volume is air (label 0). ``foreground_voxels(t)``, when given, returns
    ``np.argwhere(label[t] > 0)`` (e.g. :meth:`lvtl.data.cache.CachedCase.foreground`, found
    once); the crops are the same either way. Returns ``(image (1, t, z, y, x) float32,
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
    if rng.random() < foreground:
        fg = foreground_voxels(t0) if foreground_voxels else np.argwhere(label[t0] > 0)
    else:
        fg = np.empty((0, 3))
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
