"""What ``lvtl inspect`` reports about a case or a DICOM folder: the series' phases, shape,
spacing, orientation, HU range, equipment, the labelled phases, and every problem found."""

from __future__ import annotations

from pathlib import Path

from lvtl.data.preprocess import PreprocessConfig, case_series, load_labels
from lvtl.errors import LvtlError, SeriesProblems, first_line
from lvtl.io.dicom import Discovery, discover, scan_series


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


def inspect_case(path: str | Path, series: str | None = None, verbose: bool = False) -> dict:
    """The inspection report of a case folder (``dicom/`` and ``labels/``) or of a folder of
    DICOM files (any export): a JSON-ready dict with ``problems`` (one line each; empty when
    all is well), ``candidates`` (the 4D series found, best first) and ``skipped`` (counts by
    kind; the names with ``verbose``), and, when the chosen series can be read, ``chosen``,
    ``phases``, ``shape`` ``[t, z, y, x]``, ``spacing`` ``[z, y, x]`` mm, ``orientation``,
    ``hu_range``, ``series_uid``, ``transfer_syntax``, ``lossy``, equipment, ``files`` and
    ``labelled_phases``. ``series`` chooses a series (else the case's ``series.txt``, else
    the rule)."""
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
        try:
            report["labelled_phases"] = sorted(load_labels(case_dir, index, PreprocessConfig()))
        except LvtlError as e:
            report["problems"].append(str(e))
    return report
