"""Laplace thickness on the synthetic LV phantoms against their analytic wall thickness.

For N cases per site at ED and ES, ``wall_thickness`` runs on the clean truth labels at the
scanner's own (anisotropic) spacing and, after resampling to the 1 mm cache grid, on the
resampled labels. Each epicardial point is compared with the analytic thickness at the nearest
voxel of the wall; per case the median, 95th percentile and maximum are compared with those of
the analytic thickness at the same points. Run:
``.venv/bin/python benchmarks/thickness_phantom.py [--cases N]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from lvtl.data.resample import canonical_grid, resample, resample_labels
from lvtl.measure.metrics import pearson
from lvtl.measure.thickness import wall_thickness
from lvtl.synth.case import Case
from lvtl.synth.profiles import draw_case


def measure(labels, analytic, spacing):
    res = wall_thickness(labels, spacing)
    # nearest voxel that carries an analytic value (resampled maps may differ from the labels)
    _, near = ndimage.distance_transform_edt(analytic <= 0, sampling=spacing,
                                             return_indices=True)
    idx = np.clip(np.rint(res.points).astype(int), 0, np.array(labels.shape) - 1)
    truth = analytic[tuple(near[k][tuple(idx.T)] for k in range(3))]
    return res.values_mm, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    args = ap.parse_args()
    out = {}
    for grid in ("native", "1mm"):
        pts_m, pts_t, stats = [], [], {k: ([], []) for k in ("median", "p95", "max")}
        for site in ("site-1", "site-2"):
            for i in range(args.cases):
                case = Case(draw_case(site, i))
                for t in (case.p.ed, case.p.es):
                    lab, th = case.truth(t)
                    sp = case.geometry.spacing
                    if grid == "1mm":
                        dst = canonical_grid(case.geometry, 1.0)
                        lab = resample_labels(lab, case.geometry, dst, "onehot")
                        th = resample(th, case.geometry, dst, order=0, fill=0.0)
                        sp = dst.spacing
                    m, tr = measure(lab, th, sp)
                    pts_m.append(m)
                    pts_t.append(tr)
                    for k, f in (("median", np.median), ("p95", lambda v: np.percentile(v, 95)),
                                 ("max", np.max)):
                        stats[k][0].append(float(f(m)))
                        stats[k][1].append(float(f(tr)))
        m, tr = np.concatenate(pts_m), np.concatenate(pts_t)
        out[grid] = {
            "points": int(len(m)),
            "point_r": pearson(m, tr)["r"],
            "point_bias_mm": float(np.mean(m - tr)),
            "point_rms_mm": float(np.sqrt(np.mean((m - tr) ** 2))),
            "cases": {k: {"r": pearson(*v)["r"], "bias_mm": float(np.mean(np.subtract(*v)))}
                      for k, v in stats.items()},
        }
        o = out[grid]
        print(f"{grid}: {o['points']} epicardial points in {len(stats['median'][0])} volumes; "
              f"per point r = {o['point_r']:.3f}, bias {o['point_bias_mm']:+.2f} mm, RMS "
              f"{o['point_rms_mm']:.2f} mm; per volume r (bias mm): " + ", ".join(
                  f"{k} {v['r']:.4f} ({v['bias_mm']:+.2f})" for k, v in o["cases"].items()))
    path = Path(__file__).parent / "results" / "thickness_phantom.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
