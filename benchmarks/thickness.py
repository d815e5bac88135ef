"""Wall-thickness benchmark: accuracy on analytic shells, speed against the Jacobi reference and
pyezzi, and growth with grid size.

Run: ``.venv/bin/python benchmarks/thickness.py [--pyezzi-python PATH] [--quick]``.

- Accuracy: spherical shells and open cylindrical shells (thickness 5 to 12 mm) rasterised at
  1 mm with random sub-voxel centres; errors at the epicardial points (lvtl: the outer-surface
  crossings; pyezzi: the wall voxels with a face on the outside).
- Speed: an LV-size wall (10 mm spherical shell, outer radius 45 mm, 98^3 grid): lvtl with
  conjugate gradients against the same discretisation solved by Jacobi iteration to the same
  relative residual (1e-6 and 1e-8), and pyezzi at its default tolerances.
- Scaling: the same 10 mm shell in grids from 64^3 to 192^3.

pyezzi is not a dependency of lvtl: it runs in its own environment (``--pyezzi-python``, or a
virtual environment this script makes in ``bench-run/pyezzi-venv``), fed through ``.npz`` files.
Results: stdout (markdown) and ``benchmarks/results/thickness.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOLERANCES = (1e-6, 1e-8)
REPEATS = 3  # timings: best of this many runs  # lvtl's default (and pyezzi's), and a stricter one


def shell(kind: str, r_in: float, thick: float, seed: int, n: int | None = None,
          length: float = 30.0) -> np.ndarray:
    """Rasterised spherical or open cylindrical shell (0/1/2) with a random sub-voxel centre."""
    rng = np.random.default_rng(seed)
    r_out = r_in + thick
    side = n if n is not None else int(np.ceil(2 * r_out + 8))
    shape = (int(length + 12) if kind == "cylinder" else side, side, side)
    centre = np.asarray(shape) / 2 + rng.uniform(-0.5, 0.5, 3)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - c for s, c in zip(shape, centre, strict=True)],
                             indexing="ij")
    if kind == "sphere":
        r, inside = np.sqrt(zz**2 + yy**2 + xx**2), np.ones(shape, bool)
    else:
        r, inside = np.sqrt(yy**2 + xx**2), np.abs(zz) < length / 2
    lab = np.zeros(shape, np.uint8)
    lab[(r < r_out) & inside] = 2
    lab[(r < r_in) & inside] = 1
    return lab


# --------------------------------------------------------------------------- pyezzi worker
def pyezzi_worker(inp: str, out: str) -> None:
    """Runs inside pyezzi's environment: labels in, thickness at epicardial voxels out."""
    import pyezzi

    data = np.load(inp)
    results = {}
    for key in data.files:
        lab = data[key]
        endo, epi = lab == 1, lab > 0
        seconds = 1e9
        for _ in range(REPEATS if key == "lv" else 1):  # best of several, as for lvtl
            t0 = time.perf_counter()
            thick = pyezzi.compute_thickness_cardiac(endo, epi, spacing=(1.0, 1.0, 1.0))
            seconds = min(seconds, time.perf_counter() - t0)
        wall = lab == 2
        out_pad = np.pad(~epi, 1, constant_values=True)
        n = epi.shape
        touches = np.zeros(n, bool)  # a face neighbour outside the epicardium
        for ax in range(3):
            for d in (0, 2):
                sl = [slice(1, 1 + n[0]), slice(1, 1 + n[1]), slice(1, 1 + n[2])]
                sl[ax] = slice(d, d + n[ax])
                touches |= out_pad[tuple(sl)]
        outer = wall & touches
        results[key] = thick[outer]
        results[key + "__seconds"] = np.array([seconds])
    np.savez(out, **results)


def _pyezzi_python(arg: str | None) -> str | None:
    if arg:
        return arg
    venv = REPO / "bench-run" / "pyezzi-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "pyezzi", "scipy"],
                           check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"pyezzi unavailable ({e}); skipped", file=sys.stderr)
            return None
    return str(py)


def run_pyezzi(python: str | None, volumes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if python is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **volumes)
        subprocess.run([python, __file__, "--pyezzi-worker", str(inp), str(out)], check=True)
        data = np.load(out)
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------- lvtl parts
def accuracy(cases, pyezzi_python):
    from lvtl.measure.thickness import wall_thickness

    vols = {f"{k}_{t:g}_{s}": shell(k, r, t, s) for k, r, t, s in cases}
    pz = run_pyezzi(pyezzi_python, vols)
    rows = []
    for (kind, r_in, t, seed), (key, lab) in zip(cases, vols.items(), strict=True):
        row = {"shape": kind, "r_in": r_in, "thickness": t, "seed": seed}
        for method in ("streamline", "pde"):
            res = wall_thickness(lab, method=method)
            err = res.values_mm - t
            row[method] = {"median_err": float(np.median(res.values_mm) - t),
                           "rms": float(np.sqrt(np.mean(err**2))), "n": int(len(err)),
                           "seconds": res.info["seconds"]}
        if key in pz:
            v = pz[key]
            v = v[np.isfinite(v)]
            row["pyezzi"] = {"median_err": float(np.median(v) - t),
                             "rms": float(np.sqrt(np.mean((v - t) ** 2))), "n": int(len(v)),
                             "seconds": float(pz[key + "__seconds"][0])}
        rows.append(row)
    return rows


def speed(pyezzi_python, repeats: int):
    from lvtl.measure.thickness import (
        Solver,
        _assemble,
        _check,
        _links,
        _prepare,
        solve_laplace,
        wall_thickness,
    )

    lab = shell("sphere", 35.0, 10.0, 21, n=98)
    best = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = wall_thickness(lab)
        best["lvtl_total"] = min(best.get("lvtl_total", 1e9), time.perf_counter() - t0)
        labels, sp = _check(lab, (1.0, 1.0, 1.0))
        g, _ = _prepare(labels, sp, 1.2)
        system = _assemble(g, _links(g, 60.0))
        for tol in TOLERANCES:
            for solver in Solver:
                _, info = solve_laplace(system, solver, tol)
                key = f"{solver}_{tol:g}"
                best[key] = min(best.get(key, 1e9), info["solve_seconds"])
                best[key + "_iterations"] = info["iterations"]
    out = {"grid": list(lab.shape), "unknowns": int(res.info["unknowns"]),
           "lvtl_total_seconds": best["lvtl_total"], "lvtl_tol": 1e-6,
           "lvtl_median_err": float(res.median - 10.0), "solvers": [
               {"tol": tol, **{f"{sv}_{what}": best[f"{sv}_{tol:g}{key}"]
                                for sv in Solver
                                for what, key in (("seconds", ""), ("iterations", "_iterations"))},
                "jacobi_over_cg": best[f"jacobi_{tol:g}"] / best[f"cg_{tol:g}"],
                "jacobi_over_cg_full": best[f"jacobi_{tol:g}"] / best[f"cg-full_{tol:g}"]}
               for tol in TOLERANCES]}
    pz = run_pyezzi(pyezzi_python, {"lv": lab})
    if pz:
        v = pz["lv"]
        out["pyezzi_seconds"] = float(pz["lv__seconds"][0])
        out["pyezzi_median_err"] = float(np.median(v[np.isfinite(v)]) - 10.0)
        out["pyezzi_over_lvtl"] = out["pyezzi_seconds"] / out["lvtl_total_seconds"]
    return out


def scaling(sizes):
    from lvtl.measure.thickness import wall_thickness

    rows = []
    for n in sizes:
        lab = shell("sphere", n / 2 - 14.0, 10.0, 31, n=n)
        t0 = time.perf_counter()
        res = wall_thickness(lab)
        rows.append({"grid": n, "unknowns": res.info["unknowns"],
                     "iterations": res.info["iterations"],
                     "solve_seconds": res.info["solve_seconds"],
                     "total_seconds": time.perf_counter() - t0,
                     "points": int(len(res.values_mm))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyezzi-python", help="python of an environment with pyezzi installed")
    ap.add_argument("--no-pyezzi", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and sizes")
    ap.add_argument("--pyezzi-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pyezzi_worker:
        pyezzi_worker(*args.pyezzi_worker)
        return
    py = None if args.no_pyezzi else _pyezzi_python(args.pyezzi_python)
    thick = (5.0, 12.0) if args.quick else (5.0, 8.0, 10.0, 12.0)
    seeds = (0,) if args.quick else (0, 1, 2)
    cases = [("sphere", 20.0, t, s) for t in thick for s in seeds]
    cases += [("cylinder", 18.0, t, s + 10) for t in thick for s in seeds]
    acc = accuracy(cases, py)
    spd = speed(py, 1 if args.quick else REPEATS)
    scl = scaling((64, 96) if args.quick else (64, 96, 128, 160, 192))
    result = {"benchmark": "thickness", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime()),
              "accuracy": acc, "speed": spd, "scaling": scl}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "thickness.json").write_text(json.dumps(result, indent=1) + "\n")

    from lvtl.measure.thickness import Solver

    methods = ["streamline", "pde"] + (["pyezzi"] if any("pyezzi" in r for r in acc) else [])
    print("| shape | thickness mm | " + " | ".join(f"{m} median err mm / RMS voxel"
                                                 for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for kind in ("sphere", "cylinder"):
        for t in thick:
            rs = [r for r in acc if r["shape"] == kind and r["thickness"] == t]
            cells = []
            for m in methods:
                med = max((r[m]["median_err"] for r in rs), key=abs)
                rms = max(r[m]["rms"] for r in rs)
                cells.append(f"{med:+.3f} / {rms:.3f}")
            print(f"| {kind} | {t:g} | " + " | ".join(cells) + " |")
    worst = {m: (max(abs(r[m]["median_err"]) for r in acc), max(r[m]["rms"] for r in acc))
             for m in methods}
    print("\nworst over all shapes (|median error| mm, RMS voxel): " + ", ".join(
        f"{m} {w[0]:.3f} / {w[1]:.3f}" for m, w in worst.items()))
    print(f"\nLV-size wall {spd['grid']}: lvtl total {spd['lvtl_total_seconds']:.2f} s"
          + (f"; pyezzi {spd['pyezzi_seconds']:.2f} s (pyezzi / lvtl "
             f"{spd['pyezzi_over_lvtl']:.2f}x)" if "pyezzi_seconds" in spd else ""))
    for row in spd["solvers"]:
        print(f"  tol {row['tol']:g}: " + ", ".join(
            f"{sv} {row[sv + '_seconds']:.3f} s ({row[sv + '_iterations']} it)" for sv in Solver)
            + f"; Jacobi / CG {row['jacobi_over_cg']:.1f}x, Jacobi / full-system CG "
            f"{row['jacobi_over_cg_full']:.1f}x")
    print("\n| grid | unknowns | CG iterations | solve s | total s |\n|---|---|---|---|---|")
    for r in scl:
        print(f"| {r['grid']}^3 | {r['unknowns']} | {r['iterations']} | "
              f"{r['solve_seconds']:.2f} | {r['total_seconds']:.2f} |")


if __name__ == "__main__":
    main()
