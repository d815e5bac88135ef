"""The ``lvtl`` command line. One function per command; heavy imports inside the commands.

Errors print one line to stderr and exit non-zero (the code of the error's class); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lvtl.errors import LvtlError

app = typer.Typer(
    help="lvtl: cross-site transfer learning of a 4D cardiac CT LV segmentation model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = logging.getLogger("lvtl")
_state = {"debug": False}


class Size(str, Enum):
    small = "small"
    paper = "paper"


class RepairMode(str, Enum):
    two_d = "2d"
    three_d = "3d"


class LabelInterp(str, Enum):
    onehot = "onehot"
    nearest = "nearest"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lvtl {version('lvtl')}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


# --------------------------------------------------------------------------- phantom
@app.command()
def phantom(
    site: Annotated[str, typer.Option(help="Site profile: site-1 (dense labels) or site-2 "
                                            "(sparse ED/ES labels).")],
    out: Annotated[Path, typer.Option(help="Folder to write one folder per case into.")],
    cases: Annotated[int | None, typer.Option(help="Number of cases (default: 61 for site-1, "
                                                   "95 for site-2).")] = None,
    size: Annotated[Size, typer.Option(help="small (fast, tests and demo) or paper (512x512 "
                                            "at 0.5 mm).")] = Size.small,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same cases.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Rewrite cases that exist.")] = False,
) -> None:
    """Write a synthetic site: 4D cardiac CT series (DICOM) with labels and ground truth."""
    from lvtl.phantom import generate_site

    results = generate_site(site, cases, out, size=size.value, seed=seed, workers=workers,
                            overwrite=overwrite, progress=sys.stderr.isatty())
    failed = [(c, e) for c, e in results if e]
    for case_id, reason in failed:
        _err(f"{case_id}: {reason}")
    typer.echo(f"phantom: {len(results) - len(failed)} {site} cases in {out}"
               + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- inspect
def _dicom_folder(path: Path) -> tuple[Path, Path | None]:
    if (path / "dicom").is_dir():
        return path / "dicom", path
    return path, None


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A case folder (with dicom/ and labels/) or a "
                                              "folder of DICOM files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check a 4D CT series (and its labels): phases, shape, spacing, orientation, HU range."""
    from lvtl.dicom import scan_series
    from lvtl.errors import SeriesProblems
    from lvtl.preprocess import PreprocessConfig, load_labels

    folder, case_dir = _dicom_folder(path)
    report: dict = {"path": str(path), "problems": []}
    index = None
    try:
        index = scan_series(folder)
    except SeriesProblems as e:
        report["problems"] = [f"{folder}: {p}" for p in e.problems]
    except LvtlError as e:
        report["problems"] = [str(e)]
    if index is not None:
        g = index.geometry
        lo, hi = float("inf"), float("-inf")
        for _, hu in index.iter_phases():
            lo, hi = min(lo, float(hu.min())), max(hi, float(hu.max()))
        d = g.direction_matrix
        ds = index.first_header
        report.update({
            "phases": index.n_phases,
            "phase_attribute": index.phase_tag,
            "shape": list(index.shape),
            "spacing": [round(v, 6) for v in g.spacing],
            "orientation": {"axes": g.axis_codes(), "row": d[2].round(6).tolist(),
                            "column": d[1].round(6).tolist()},
            "hu_range": [lo, hi],
            "series_uid": index.series_uid,
            "manufacturer": str(getattr(ds, "Manufacturer", "")),
            "model": str(getattr(ds, "ManufacturerModelName", "")),
            "files": sum(len(p) for p in index.phases),
            "skipped": index.skipped,
        })
        if case_dir is not None and (case_dir / "labels").is_dir():
            try:
                labels = load_labels(case_dir, index, PreprocessConfig())
                report["labelled_phases"] = sorted(labels)
            except LvtlError as e:
                report["problems"].append(str(e))
    ok = not report["problems"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for p in report["problems"]:
            _err(p)
        if index is not None:
            _print_inspect(report)
    if not ok:
        raise typer.Exit(3)


def _print_inspect(r: dict) -> None:
    o = r["orientation"]
    lines = [
        f"{r['path']}: CT series, {r['files']} files ({r['manufacturer']} {r['model']})",
        f"  phases       {r['phases']} (by {r['phase_attribute']})",
        f"  shape        {r['shape']} (t, z, y, x)",
        f"  spacing      {r['spacing']} mm (z, y, x)",
        f"  orientation  {o['axes']} (row {o['row']}, column {o['column']})",
        f"  HU range     {r['hu_range'][0]:g} to {r['hu_range'][1]:g}",
    ]
    if "labelled_phases" in r:
        lines.append(f"  labels       phases {', '.join(map(str, r['labelled_phases']))}")
    if r["skipped"]:
        lines.append(f"  skipped      {len(r['skipped'])} non-DICOM files")
    typer.echo("\n".join(lines))


# --------------------------------------------------------------------------- preprocess
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
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    force: Annotated[bool, typer.Option(help="Redo cases that are cached.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Repair labels, resample to 1 mm and cache the 4D image-label pair of every case."""
    from dataclasses import replace

    from lvtl.config import load_site_config
    from lvtl.errors import ConfigError
    from lvtl.preprocess import PreprocessConfig, preprocess_site

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
        "repair_mode": repair_mode.value if repair_mode else None,
        "label_interp": label_interp.value if label_interp else None}.items() if v is not None}
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
                _err(f"skipped {r.reason}")
        typer.echo(f"preprocess: {counts['written']} written, {counts['cached']} cached, "
                   f"{counts['failed']} failed -> {out}")
    if counts["failed"]:
        raise typer.Exit(5)


# --------------------------------------------------------------------------- thickness
class Method(str, Enum):
    streamline = "streamline"
    pde = "pde"


class Solver(str, Enum):
    cg = "cg"
    jacobi = "jacobi"


@app.command()
def thickness(
    labels: Annotated[Path, typer.Argument(help="NIfTI label file (0 background, 1 blood pool, "
                                                "2 myocardium), 3D or 4D.")],
    phase: Annotated[int | None, typer.Option(help="Phase (0-based) of a 4D file.")] = None,
    method: Annotated[Method, typer.Option(help="streamline (the paper's) or pde "
                                                "(Yezzi-Prince).")] = Method.streamline,
    solver: Annotated[Solver, typer.Option(help="Laplace solver: cg or jacobi (the paper's "
                                                "reference).")] = Solver.cg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """LV wall thickness (Laplace method) of one label map: median, 95th percentile, max."""
    import numpy as np

    from lvtl.errors import ThicknessError
    from lvtl.nifti import read_volume
    from lvtl.thickness import wall_thickness

    arr, geom = read_volume(labels, phase=phase)
    try:
        res = wall_thickness(np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr,
                             geom.spacing, method=method.value, solver=solver.value)
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
    from lvtl.agreement import compare_raters

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
        _err(f"skipped {name}: {reason}")
    if rep.skipped:
        raise typer.Exit(6)


# --------------------------------------------------------------------------- artifact
artifact_app = typer.Typer(
    help="Signed model artifacts: make a signing key, sign a checkpoint, verify an artifact.",
    no_args_is_help=True,
)
app.add_typer(artifact_app, name="artifact")


def _passphrase(var: str | None) -> str | None:
    import os

    from lvtl.errors import ConfigError

    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} (the key's passphrase) is not set")
    return value


@artifact_app.command("keygen")
def artifact_keygen(
    out: Annotated[Path, typer.Option(help="Folder for signing_key.pem (private, 0600) and "
                                           "<key_id>.pub.pem (public, for the sites).")],
    passphrase_env: Annotated[str | None, typer.Option(help="Name of an environment variable "
                                                            "holding a passphrase to encrypt "
                                                            "the private key.")] = None,
) -> None:
    """Make a new Ed25519 signing key pair; print its key id."""
    from lvtl.artifact import PUBLIC_SUFFIX, keygen

    kid = keygen(out, passphrase=_passphrase(passphrase_env))
    typer.echo(f"key {kid}: private {out / 'signing_key.pem'}, "
               f"public {out / (kid + PUBLIC_SUFFIX)}")


@artifact_app.command("sign")
def artifact_sign(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by torch.save: "
                                               "{'state_dict', 'config', 'meta'} or a bare "
                                               "state dict.")],
    key: Annotated[Path, typer.Option(help="Private signing key (signing_key.pem).")],
    out: Annotated[Path, typer.Option(help="Artifact folder to create (must not exist).")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Semantic version, like 1.0.0.")],
    passphrase_env: Annotated[str | None, typer.Option(help="Environment variable holding "
                                                            "the key's passphrase.")] = None,
    metadata: Annotated[Path | None, typer.Option(help="JSON file of manifest sections "
                                                       "(architecture, input, labels, "
                                                       "preprocessing, provenance, metrics) "
                                                       "that override the checkpoint's.")] = None,
) -> None:
    """Package a checkpoint as a signed artifact (safetensors weights + signed manifest)."""
    from lvtl.artifact import sign
    from lvtl.errors import ConfigError

    extra = None
    if metadata is not None:
        try:
            extra = json.loads(metadata.read_text())
        except ValueError as e:
            raise ConfigError(f"{metadata}: not valid JSON ({e})") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"{metadata}: must hold a JSON object")
    art = sign(model, key, out, name=name, version=version,
               passphrase=_passphrase(passphrase_env), metadata=extra)
    typer.echo(f"signed {art.name} {art.version} with key {art.key_id} -> {art.path}")


@artifact_app.command("verify")
def artifact_verify(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file, or a folder of "
                                                    "*.pub.pem keys.")] = None,
    revoked: Annotated[list[str] | None, typer.Option(help="A revoked key id (repeatable).")]
    = None,
    min_version: Annotated[str | None, typer.Option(help="Lowest version to accept.")] = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config whose [trust] section "
                                                     "gives keys, revoked and "
                                                     "min_version.")] = None,
) -> None:
    """Verify an artifact against pinned keys; exit 0 with a summary, or 7 with the reason."""
    from lvtl.artifact import verify

    typer.echo(verify(artifact, _trust_store(trust, revoked, min_version, config)).summary())


def _trust_store(trust: Path | None, revoked, min_version: str | None, config: Path | None):
    """Pinned keys from ``--trust`` or a site config's [trust] section, plus revocations."""
    from lvtl.artifact import TrustStore
    from lvtl.config import load_site_config
    from lvtl.errors import ConfigError

    if trust is None and config is None:
        raise ConfigError("give --trust PUBKEY_OR_DIR or a site --config with [trust] keys")
    site = load_site_config(config) if config is not None else None
    store = (TrustStore.from_path(trust) if trust is not None
             else TrustStore.from_site_config(site))
    rev = set(revoked or ()) | set(site.revoked_keys if site else ())
    return TrustStore(keys=store.keys, revoked=frozenset(rev),
                      min_version=min_version or (site.min_artifact_version if site else None))


# --------------------------------------------------------------------------- train, study
def _ints(text: str, name: str, n: int | None = None) -> tuple[int, ...]:
    from lvtl.config import parse_ints

    return parse_ints(text, name, n)


@app.command()
def train(
    cache: Annotated[Path, typer.Argument(help="Cache folder of preprocessed cases "
                                               "(lvtl preprocess).")],
    out: Annotated[Path, typer.Option(help="Run folder: best.pt, last.pt, history.json.")],
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 500).")] = 500,
    samples_per_epoch: Annotated[int, typer.Option(help="Crops per epoch (0: one per "
                                                        "training case).")] = 0,
    crop: Annotated[str, typer.Option(help="Crop t,z,y,x (the paper: 16,64,96,96).")]
    = "16,64,96,96",
    filters: Annotated[int, typer.Option(help="Filters at the first level (the paper: 8).")] = 8,
    blocks: Annotated[str, typer.Option(help="Residual blocks per level (the paper: 1,2,4).")]
    = "1,2,4",
    downsample: Annotated[int, typer.Option(help="Train at this multiple of the 1 mm grid "
                                                 "(2 for a CPU demo).")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam).")] = 1e-3,
    init: Annotated[str, typer.Option(help="default (Kaiming) or normal (the paper's "
                                           "N(0, 1)).")] = "default",
    seed: Annotated[int, typer.Option(help="Seed of split, crops and weights.")] = 0,
    val_every: Annotated[int, typer.Option(help="Epochs between validations.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    bf16: Annotated[bool, typer.Option(help="bfloat16 autocast (GPU).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile (GPU).")]
    = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the 4D model on a site's cases (Site 1: dense labels) from random initialisation;
    writes the checkpoint that `lvtl artifact sign` takes and prints its path. Rerun to
    resume after an interruption."""
    from lvtl.train import TrainConfig, train_site

    cfg = TrainConfig(epochs=epochs, samples_per_epoch=samples_per_epoch,
                      crop=_ints(crop, "crop", 4), lr=lr, seed=seed, val_every=val_every,
                      device=device, bf16=bf16, compile=compile_model, progress=progress)
    res = train_site(cache, out, cfg, filters=filters, blocks=_ints(blocks, "blocks"),
                     downsample=downsample, init=init, say=typer.echo, warn=_err)
    typer.echo(f"best validation Dice {res.best_val_dice:.3f} at epoch {res.best_epoch}; "
               f"{res.seconds:.0f} s; crops took {100 * res.loading_share:.1f}% of step time")
    typer.echo(str(res.best_path))


def _phase_list(text: str, n: int) -> list[int]:
    from lvtl.errors import ConfigError

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--phases: expected 'all' or 0-based phases, got {text!r}") from None
    if not vals or min(vals) < 0 or max(vals) >= n:
        raise ConfigError(f"--phases {text!r}: the series has phases 0 to {n - 1}")
    return vals


@app.command()
def infer(
    case: Annotated[Path, typer.Argument(help="Case folder (dicom/, optional labels/).")],
    model: Annotated[Path, typer.Option(help="Signed artifact folder (with --trust or "
                                             "--config) or a checkpoint from lvtl train.")],
    out: Annotated[Path, typer.Option(help="Output folder: nifti/phase_NN.nii.gz and "
                                           "seg/phase_NN.dcm.")],
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file or folder.")]
    = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config ([trust]).")] = None,
    phases: Annotated[str, typer.Option(help="all, or comma-separated 0-based phases.")]
    = "all",
    crop: Annotated[str, typer.Option(help="Window t,z,y,x (the model's training crop).")]
    = "16,64,96,96",
    seg: Annotated[bool, typer.Option(help="Also write DICOM SEG per phase.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Segment every (or the chosen) phase of a case: NIfTI label maps on the 1 mm grid and
    DICOM SEG objects referencing the source series, for a viewer."""
    import tempfile

    import numpy as np
    import torch

    from lvtl.dicom import scan_series
    from lvtl.infer import predict_labels, write_dicom_seg, write_prediction
    from lvtl.preprocess import PreprocessConfig, load_cached, preprocess_case
    from lvtl.study import build_model, load_source

    store = (_trust_store(trust, None, None, config)
             if trust is not None or config is not None else None)
    state, source_config = load_source(model, store)
    net = build_model(source_config)
    net.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        preprocess_case(case, tmp, PreprocessConfig(), force=True)
        cached = load_cached(Path(tmp) / case.name)
        n = cached.image.shape[0]
        wanted = None if phases == "all" else _phase_list(phases, n)
        with torch.inference_mode():
            labels, done = predict_labels(net, np.asarray(cached.image), _ints(crop, "crop", 4),
                                          device, wanted)
        paths = write_prediction(out / "nifti", labels, done, cached.geometry)
        if seg:
            index = scan_series(case / "dicom")
            for i, p in enumerate(done):
                paths.append(write_dicom_seg(out / "seg" / f"phase_{p:02d}.dcm", labels[i],
                                             cached.geometry, index, p))
    typer.echo(f"{case.name}: {len(done)} phase(s) segmented; {len(paths)} file(s) in {out}")


@app.command()
def study(
    cache: Annotated[Path, typer.Argument(help="Cache folder of this site's preprocessed "
                                               "cases.")],
    model: Annotated[Path, typer.Option(help="The Site-1 model: a signed artifact folder "
                                             "(verified with --trust or --config) or a "
                                             "checkpoint from lvtl train.")],
    out: Annotated[Path, typer.Option(help="Study folder: results.json and the runs.")],
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file or folder.")]
    = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config ([trust]).")] = None,
    arms: Annotated[str, typer.Option(help="Arms: baseline,random,transfer.")]
    = "baseline,random,transfer",
    sizes: Annotated[str, typer.Option(help="Training sizes.")] = "5,10,15,20,25,30",
    epochs: Annotated[int, typer.Option(help="Epochs per training run.")] = 500,
    samples_per_epoch: Annotated[int, typer.Option(help="Crops per epoch (0: one per "
                                                        "case).")] = 0,
    crop: Annotated[str, typer.Option(help="Crop t,z,y,x.")] = "16,64,96,96",
    downsample: Annotated[int, typer.Option(help="Study at this multiple of the 1 mm grid; "
                                                 "must match the model's training.")] = 1,
    init: Annotated[str, typer.Option(help="Random arm init: default or normal.")]
    = "default",
    lr_random: Annotated[float, typer.Option(help="Learning rate of the random arm (the "
                                                  "paper: 1e-3).")] = 1e-3,
    lr_transfer: Annotated[float, typer.Option(help="Learning rate of the transfer arm (the "
                                                    "paper: 1e-4).")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of training.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the split and subsets.")] = 0,
    val_every: Annotated[int, typer.Option(help="Epochs between validations.")] = 1,
    site: Annotated[str, typer.Option(help="Site name in the results.")] = "site",
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
) -> None:
    """The transfer-learning study at one site: baseline, random and transfer arms at nested
    training sizes, evaluated on the test split; writes results.json (metrics only)."""
    from lvtl.study import Protocol, load_site_cases, load_source, run_study

    store = (_trust_store(trust, None, None, config)
             if trust is not None or config is not None else None)
    state, source_config = load_source(model, store)
    protocol = Protocol(arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
                        sizes=_ints(sizes, "sizes"), epochs=epochs,
                        samples_per_epoch=samples_per_epoch, crop=_ints(crop, "crop", 4),
                        seed=seed, split_seed=split_seed, init=init, val_every=val_every,
                        downsample=downsample, device=device, lr_random=lr_random,
                        lr_transfer=lr_transfer)
    protocol.check()
    cases, excluded = load_site_cases(cache, downsample)
    run_study(cases, state, source_config, protocol, out, site=site, excluded=excluded,
              progress=progress, say=typer.echo)
    typer.echo(str(Path(out) / "results.json"))


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="Results files (lvtl.report/1): a "
                                                      "site's results.json or a report.json.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and plots.")],
) -> None:
    """The coordinator's cross-site report from results files; prints report.json's path."""
    from lvtl.report import merge_results, write_report

    typer.echo(str(write_report(merge_results(results), out)))


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder of the demo.")] = Path("demo-run"),
    site1_cases: Annotated[int, typer.Option(help="Cases at site-1.")] = 6,
    site2_cases: Annotated[int, typer.Option(help="Cases at site-2.")] = 8,
    pretrain_epochs: Annotated[int, typer.Option(help="Site-1 pretraining epochs.")] = 60,
    study_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per study run.")] = 10,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 2,
) -> None:
    """The whole story on this machine: synthetic sites, preprocessing, Site-1 pretraining,
    the signed model, the NVFlare simulator job at site-1 and site-2, the report. Prints the
    path of report.json last."""
    from lvtl.demo import DemoScale, run_demo

    scale = DemoScale(site1_cases=site1_cases, site2_cases=site2_cases,
                      pretrain_epochs=pretrain_epochs, study_epochs=study_epochs)
    report = run_demo(out, scale, workers=workers, echo=typer.echo)
    typer.echo(str(report))


def main() -> None:
    """Console-script entry point: one clear line per error, no traceback unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except LvtlError as e:
        if debug:
            raise
        _err(f"error: {e}")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        _err(f"error: {e.filename or ''}: {e.strerror or e}".replace(": : ", ": "))
        sys.exit(1)
    except Exception as e:
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # a usage error from the argument parser
            sys.exit(e.exit_code)
        if debug:
            raise
        _err(f"error: unexpected {type(e).__name__}: {e} (run with --debug for details)")
        sys.exit(1)


if __name__ == "__main__":
    main()
