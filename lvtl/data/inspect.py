"""What ``lvtl inspect`` reports about a case or a DICOM folder: the series' phases, shape,
spacing, orientation, HU range, equipment, the labelled phases, and every problem found."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvtl.data.labelfiles import find_label_files, read_label_file
from lvtl.data.preprocess import PreprocessConfig, case_series
from lvtl.errors import LvtlError, SeriesProblems, first_line
from lvtl.io.dicom import Discovery, discover, scan_series
from lvtl.labels import KEYS


def dicom_folder(path: Path) -> tuple[Path, Path | None]:
    """``(folder of DICOM files, case folder or None)`` of a case folder or a DICOM folder."""
    if (path / "dicom").is_dir():
        return path / "dicom", path
    return path, None


def _export(found: Discovery, verbose: bool) -> dict:
    """What the export holds: the candidate series (best first) and what was skipped."""
    out = {"candidates": [c.describe() for c in found.candidates],
           "skipped": found.skipped_counts()}
    if verbose:
        out["skipped_files"] = {str(k): v for k, v in found.skipped.items()}
    return out


def inspect_case(path: str | Path, series: str | None = None, verbose: bool = False,
                 config: PreprocessConfig | None = None) -> dict:
    """The inspection report of a case folder (``dicom/`` and ``labels/``) or of a folder of
    DICOM files (any export): a JSON-ready dict with ``problems`` (one line each; empty when
    all is well), ``candidates`` (the 4D series found, best first) and ``skipped`` (counts by
    kind; the names with ``verbose``), and, when the chosen series can be read, ``chosen``,
    ``phases``, ``shape`` ``[t, z, y, x]``, ``spacing`` ``[z, y, x]`` mm, ``orientation``,
    ``hu_range``, ``series_uid``, ``transfer_syntax``, ``lossy``, equipment, ``files``,
    ``labels`` (per label file: phase, file, format, how its phase was found, voxels per
    label, whether it reads) and ``labelled_phases`` (those that read). ``series`` chooses a
    series (else the case's ``series.txt``, else the rule)."""
    path = Path(path)
    folder, case_dir = dicom_folder(path)
    report: dict = {"path": str(path), "problems": []}
    if series is None and case_dir is not None:
        series = case_series(case_dir)
    try:
        found = discover(folder)
        report.update(_export(found, verbose))
        index = scan_series(folder, series, found=found)
        lo, hi = float("inf"), float("-inf")
        for _, hu in index.iter_phases():
            lo, hi = min(lo, float(hu.min())), max(hi, float(hu.max()))
    except SeriesProblems as e:
        report["problems"] = [f"{folder}: {p}" for p in e.problems]
        return report
    except LvtlError as e:
        report["problems"] = [str(e)]
        return report
    except Exception as e:  # noqa: BLE001 - inspect always reports, even what lvtl did not foresee
        report["problems"] = [f"{folder}: unexpected {type(e).__name__}: {first_line(e)}"]
        return report
    g = index.geometry
    d = g.direction_matrix
    ds = index.first_header
    cand = index.candidate
    report.update({
        "chosen": cand.number,
        "layout": cand.layout,
        "phases": index.n_phases,
        "phase_attribute": index.phase_tag,
        "shape": list(index.shape),
        "spacing": [round(v, 6) for v in g.spacing],
        "orientation": {"axes": g.axis_codes(), "row": d[2].round(6).tolist(),
                        "column": d[1].round(6).tolist()},
        "hu_range": [lo, hi],
        "series_uid": index.series_uid,
        "transfer_syntax": cand.describe()["transfer_syntax"],
        "lossy": cand.lossy,
        "manufacturer": str(getattr(ds, "Manufacturer", "")),
        "model": str(getattr(ds, "ManufacturerModelName", "")),
        "files": len({sl.path for p in index.phases for sl in p}),
    })
    if case_dir is not None and (case_dir / "labels").is_dir():
        report["labels"], problems = _labels(case_dir, index, config or PreprocessConfig())
        report["problems"] += problems
        report["labelled_phases"] = [lab["phase"] for lab in report["labels"] if lab["ok"]]
    return report


def _labels(case_dir: Path, index, config: PreprocessConfig) -> tuple[list[dict], list[str]]:
    """Per label file: its phase, source, format and voxels per label, or its problem."""
    try:
        files = find_label_files(case_dir, index)
    except LvtlError as e:
        return [], [str(e)]
    out, problems = [], []
    for lf in files:
        row = {"phase": lf.phase, "file": lf.name(case_dir), "format": str(lf.format),
               "phase_from": lf.phase_from, "ok": False}
        try:
            lab = read_label_file(lf, index, config.label_mapping(), name=lf.name(case_dir))
        except LvtlError as e:
            problems.append(str(e))
        else:
            counts = np.bincount(lab.ravel(), minlength=3)
            row.update(ok=True, voxels={k: int(counts[v]) for k, v in KEYS.items()})
        out.append(row)
    return out, problems
