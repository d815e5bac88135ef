"""``lvtl phantom``, ``lvtl inspect``, ``lvtl preprocess``: synthetic sites and a site's data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app, err
from lvtl.data.repair import RepairMode
from lvtl.data.resample import LabelInterp
from lvtl.synth.profiles import Size


@app.command()
def phantom(
    site: Annotated[str, typer.Option(help="Site profile: site-1 (dense labels) or site-2 "
                                            "(sparse ED/ES labels).")],
    out: Annotated[Path, typer.Option(help="Folder to write one folder per case into.")],
    cases: Annotated[int | None, typer.Option(help="Number of cases (default: 61 for site-1, "
                                                   "95 for site-2).")] = None,
    size: Annotated[Size, typer.Option(help="small (fast, tests and demo) or paper (512x512 "
                                            "at 0.5 mm).")] = Size.SMALL,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same cases.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Rewrite cases that exist.")] = False,
    layout: Annotated[str | None, typer.Option(help="How the phases are split into series: "
                                                    "one-series, series-per-phase, enhanced "
                                                    "or enhanced-per-phase (default: the "
                                                    "site's).")] = None,
    transfer_syntax: Annotated[str | None, typer.Option(help="DICOM encoding: explicit, "
                                                             "jpeg-lossless, jpeg-ls, "
                                                             "j2k-lossless, rle or deflate "
                                                             "(default: the site's).")] = None,
    export: Annotated[bool | None, typer.Option(
        "--export/--no-export", help="Write each dicom/ as a CD/PACS export: DICOMDIR, "
                                     "localizer, dose report and screen, a second "
                                     "reconstruction (default: the site's).")] = None,
    labels: Annotated[str, typer.Option(
        help="Label files: nifti (masks), nrrd, seg (DICOM SEG) or rtstruct (endocardial and "
             "epicardial contours).")] = "nifti",
) -> None:
    """Write a synthetic site: 4D cardiac CT series (DICOM) with labels and ground truth."""
    from lvtl.synth.site import generate_site

    results = generate_site(site, cases, out, size=size, seed=seed, workers=workers,
                            overwrite=overwrite, progress=sys.stderr.isatty(), layout=layout,
                            transfer_syntax=transfer_syntax, export=export, labels=labels)
    failed = [(c, e) for c, e in results if e]
    for case_id, reason in failed:
        err(f"{case_id}: {reason}")
    typer.echo(f"phantom: {len(results) - len(failed)} {site} cases in {out}"
               + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A case folder (with dicom/ and labels/) or any "
                                              "DICOM export folder (PACS, CD, any depth).")],
    series: Annotated[str | None, typer.Option(
        help="Which 4D series: a series UID, its number in the list, or a description "
             "pattern such as '*B26f*' (default: the case's series.txt, else most phases, "
             "then thinnest slices, then most slices).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Name every skipped file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a 4D CT export (and its labels): the candidate series, what was skipped, and the
    chosen series' phases, shape, spacing, orientation, HU range and encoding."""
    from lvtl.data.inspect import inspect_case

    report = inspect_case(path, series=series, verbose=verbose)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_inspect(report)
        for p in report["problems"]:
            err(p)
    if report["problems"]:
        raise typer.Exit(3)


def _print_inspect(r: dict) -> None:
    lines = []
    chosen = r.get("chosen")
    if r.get("candidates"):
        lines.append(f"{r['path']}: {len(r['candidates'])} candidate 4D series "
                     "(most phases, then thinnest slices, then most slices)")
        lines.append("     #  phases  slices  pixel mm      thick mm  kernel    layout"
                     "                 description / series UID")
        for c in r["candidates"]:
            mark = "*" if c["number"] == chosen else " "
            px = "x".join(f"{v:g}" for v in c["pixel_spacing"])
            thick = "?" if c["slice_thickness"] is None else f"{c['slice_thickness']:g}"
            lossy = "  LOSSY" if c["lossy"] else ""
            lines.append(f"  {mark} {c['number']:>2}  {c['phases']:>6}  {c['slices']:>6}  "
                         f"{px:<12}  {thick:>8}  {c['kernel'][:8]:<8}  {c['layout']:<21}  "
                         f"{c['description'] or '-'} / {c['series_uid']}{lossy}")
    if r.get("skipped"):
        lines.append("  skipped      " + ", ".join(f"{n} {k}" for k, n in r["skipped"].items()))
        for kind, names in r.get("skipped_files", {}).items():
            lines += [f"    {kind}: {n}" for n in names]
    if "phases" in r:
        o = r["orientation"]
        lines += [
            f"  chosen       #{chosen}: {r['files']} files ({r['manufacturer']} {r['model']}), "
            f"{r['layout']}",
            f"  phases       {r['phases']} (by {r['phase_attribute']})",
            f"  shape        {r['shape']} (t, z, y, x)",
            f"  spacing      {r['spacing']} mm (z, y, x)",
            f"  orientation  {o['axes']} (row {o['row']}, column {o['column']})",
            f"  HU range     {r['hu_range'][0]:g} to {r['hu_range'][1]:g}",
            f"  encoding     {', '.join(r['transfer_syntax'])}"
            + ("  (LOSSY compression: HU values are approximate)" if r["lossy"] else ""),
        ]
        for lab in r.get("labels", []):
            what = (", ".join(f"{k} {n}" for k, n in lab["voxels"].items()) + " voxels"
                    if lab["ok"] else "NOT READ (see below)")
            lines.append(f"  label        phase {lab['phase']:>2}: {lab['file']} ({lab['format']}, "
                         f"phase from {lab['phase_from']}): {what}")
    if lines:
        typer.echo("\n".join(lines))


@app.command()
def preprocess(
    data: Annotated[Path | None, typer.Argument(help="Site data root (case folders) or one "
                                                     "case folder; default: the config's.")] = None,
    out: Annotated[Path | None, typer.Option(help="Cache folder; default: the config's.")] = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config ([data], "
                                                     "[preprocess]).")] = None,
    spacing: Annotated[float | None, typer.Option(help="Target isotropic spacing, mm "
                                                       "(default 1).")] = None,
    repair_radius: Annotated[int | None, typer.Option(help="Closing radius in pixels (default "
                                                           "5; 0 = no repair).")] = None,
    repair_mode: Annotated[RepairMode | None, typer.Option(help="2d (per slice) or 3d.")] = None,
    label_interp: Annotated[LabelInterp | None, typer.Option(help="onehot or nearest.")] = None,
    series: Annotated[str | None, typer.Option(
        help="Which 4D series of each case's export (see `lvtl inspect`): a series UID, a "
             "number, or a description pattern; a case's own series.txt wins.")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    force: Annotated[bool, typer.Option(help="Redo cases that are cached.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Repair labels, resample to 1 mm and cache the 4D image-label pair of every case."""
    from dataclasses import replace

    from lvtl.config import load_site_config
    from lvtl.data.preprocess import PreprocessConfig, preprocess_site
    from lvtl.errors import ConfigError

    cfg = PreprocessConfig()
    if config is not None:
        site = load_site_config(config)
        cfg = site.preprocess
        data = data or site.data_root
        out = out or site.cache_root
    if data is None or out is None:
        raise ConfigError("give the data folder and --out, or a --config that names them")
    overrides = {k: v for k, v in {
        "spacing_mm": spacing, "repair_radius": repair_radius,
        "repair_mode": repair_mode, "label_interp": label_interp,
        "series": series}.items() if v is not None}
    cfg = replace(cfg, **overrides)
    results = preprocess_site(data, out, cfg, workers=workers, force=force,
                              progress=sys.stderr.isatty())
    counts = {s: sum(r.status == s for r in results) for s in ("written", "cached", "failed")}
    if as_json:
        typer.echo(json.dumps({"out": str(out), "counts": counts,
                               "cases": [r.__dict__ for r in results]}, indent=2))
    else:
        for r in results:
            if r.status == "failed":
                err(f"skipped {r.reason}")
        typer.echo(f"preprocess: {counts['written']} written, {counts['cached']} cached, "
                   f"{counts['failed']} failed -> {out}")
    if counts["failed"]:
        raise typer.Exit(5)


labels_app = typer.Typer(help="A case's label files (NIfTI, NRRD, 3D Slicer .seg.nrrd, DICOM "
                              "SEG, RTSTRUCT) as lvtl reads them.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("convert")
def labels_convert(
    case: Annotated[Path, typer.Argument(help="A case folder (dicom/ and labels/).")],
    out: Annotated[Path, typer.Option(help="Folder to write phase_NN.nii.gz or phase_NN.dcm "
                                           "into (not inside the case).")],
    to: Annotated[str, typer.Option(help="nifti (on the series' grid) or seg (DICOM SEG "
                                         "referencing the phase's images).")] = "nifti",
    series: Annotated[str | None, typer.Option(help="Which series of the case's export "
                                                    "(default: its series.txt, else the "
                                                    "rule).")] = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config (its [preprocess] "
                                                     "label values).")] = None,
) -> None:
    """Write what lvtl reads from a case's label files, to check it in your own viewer."""
    from lvtl.config import load_site_config
    from lvtl.data.labelfiles import convert_labels
    from lvtl.data.preprocess import PreprocessConfig, case_series

    cfg = load_site_config(config).preprocess if config is not None else PreprocessConfig()
    written = convert_labels(case, out, to, series or case_series(case, cfg),
                             cfg.label_mapping())
    for phase, path in written:
        typer.echo(f"phase {phase}: {path}")
    if not written:
        err(f"{case}: no label files")
        raise typer.Exit(4)
