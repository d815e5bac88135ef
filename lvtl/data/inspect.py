"""What ``lvtl inspect`` reports about a case or a DICOM folder: the series' phases, shape,
spacing, orientation, HU range, equipment, the labelled phases, and every problem found."""

from __future__ import annotations

from pathlib import Path

from lvtl.data.preprocess import PreprocessConfig, load_labels
from lvtl.errors import LvtlError, SeriesProblems
from lvtl.io.dicom import scan_series


def dicom_folder(path: Path) -> tuple[Path, Path | None]:
    """``(folder of DICOM files, case folder or None)`` of a case folder or a DICOM folder."""
    if (path / "dicom").is_dir():
        return path / "dicom", path
    return path, None


def inspect_case(path: str | Path) -> dict:
    """The inspection report of a case folder (``dicom/`` and ``labels/``) or of a folder of
    DICOM files: a JSON-ready dict with ``problems`` (one line each; empty when all is well)
    and, when the series can be read, ``phases``, ``shape`` ``[t, z, y, x]``, ``spacing``
    ``[z, y, x]`` mm, ``orientation``, ``hu_range``, ``series_uid``, equipment, ``files``,
    ``skipped`` and ``labelled_phases``."""
    path = Path(path)
    folder, case_dir = dicom_folder(path)
    report: dict = {"path": str(path), "problems": []}
    try:
        index = scan_series(folder)
    except SeriesProblems as e:
        report["problems"] = [f"{folder}: {p}" for p in e.problems]
        return report
    except LvtlError as e:
        report["problems"] = [str(e)]
        return report
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
            report["labelled_phases"] = sorted(load_labels(case_dir, index, PreprocessConfig()))
        except LvtlError as e:
            report["problems"].append(str(e))
    return report
