"""``lvtl thickness``, ``lvtl agreement``: measurements on label files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app, err
from lvtl.measure.thickness import Method, Solver


@app.command()
def thickness(
    labels: Annotated[Path, typer.Argument(help="NIfTI label file (0 background, 1 blood pool, "
                                                "2 myocardium), 3D or 4D.")],
    phase: Annotated[int | None, typer.Option(help="Phase (0-based) of a 4D file.")] = None,
    method: Annotated[Method, typer.Option(help="streamline (the paper's) or pde "
                                                "(Yezzi-Prince).")] = Method.STREAMLINE,
    solver: Annotated[Solver, typer.Option(help="Laplace solver: cg (red-black CG), cg-full "
                                                "or jacobi (the paper's reference).")]
    = Solver.CG,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """LV wall thickness (Laplace method) of one label map: median, 95th percentile, max."""
    import numpy as np

    from lvtl.errors import ThicknessError
    from lvtl.io.nifti import read_volume
    from lvtl.measure.thickness import wall_thickness

    arr, geom = read_volume(labels, phase=phase)
    try:
        res = wall_thickness(np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr,
                             geom.spacing, method=method, solver=solver)
    except ThicknessError as e:
        raise ThicknessError(f"{labels}: {e}") from None
    out = {"file": str(labels), "phase": phase, **res.to_dict()}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo(f"{labels}{'' if phase is None else f' phase {phase}'}: wall thickness "
                   f"median {res.median:.2f} mm, p95 {res.p95:.2f} mm, max {res.max:.2f} mm "
                   f"({len(res.values_mm)} epicardial points, {res.method}, "
                   f"{res.info['solver']} {res.info['iterations']} iterations)")


@app.command()
def agreement(
    labels_a: Annotated[Path, typer.Argument(help="Rater A: a label file or a folder of them.")],
    labels_b: Annotated[Path, typer.Argument(help="Rater B: the same cases (matched by relative "
                                                  "path).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rater agreement over matching cases: Dice per label and wall-thickness differences."""
    from lvtl.measure.agreement import compare_raters

    rep = compare_raters(labels_a, labels_b)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        typer.echo("case | Dice blood pool | Dice LVM | thickness A / B (median, p95, max) mm")
        for c in rep.cases:
            ta, tb = c["thickness_a"], c["thickness_b"]
            typer.echo(f"{c['case']} | {c['dice']['blood_pool']:.3f} | {c['dice']['lvm']:.3f} | "
                       f"{ta['median']:.2f}/{tb['median']:.2f}, {ta['p95']:.2f}/{tb['p95']:.2f},"
                       f" {ta['max']:.2f}/{tb['max']:.2f}")
        s = rep.summary
        if s:
            typer.echo(f"{s['n']} cases: mean Dice blood pool {s['dice']['blood_pool']['mean']:.3f}"
                       f", LVM {s['dice']['lvm']['mean']:.3f}; mean difference B - A of the "
                       f"median thickness {s['thickness_diff']['median']['mean']:+.2f} mm")
    for name, reason in rep.skipped.items():
        err(f"skipped {name}: {reason}")
    if rep.skipped:
        raise typer.Exit(6)
