"""Rater agreement between two sites' label maps of the same cases (before transfer).

The paper had five cases segmented blindly by one expert at each site. For every label file
present in both folders (matched by relative path) this compares Dice per label and the wall
thickness statistics (median, 95th percentile, max), and summarises the differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvtl.errors import ConfigError, LvtlError
from lvtl.io.nifti import read_volume
from lvtl.labels import KEYS
from lvtl.measure.metrics import THICKNESS_STATS as STATS
from lvtl.measure.metrics import bland_altman, case_dice, summarize
from lvtl.measure.thickness import wall_thickness


@dataclass
class AgreementReport:
    """Per-case comparisons, a summary, and the cases that could not be compared."""

    cases: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": "lvtl.agreement/1", "cases": self.cases, "skipped": self.skipped,
                "summary": self.summary}


def _label_files(root: Path) -> dict[str, Path]:
    if root.is_file():
        return {root.name: root}
    if not root.is_dir():
        raise ConfigError(f"{root}: no such file or folder")
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and (p.name.endswith(".nii.gz") or p.name.endswith(".nii"))}


def compare_raters(a: str | Path, b: str | Path) -> AgreementReport:
    """Compare the label files of rater A and rater B that share a relative path."""
    files_a, files_b = _label_files(Path(a)), _label_files(Path(b))
    if Path(a).is_file() and Path(b).is_file():
        files_b = {next(iter(files_a)): Path(b)}
    common = sorted(set(files_a) & set(files_b))
    if not common:
        raise ConfigError(f"no label files in common between {a} and {b} "
                          "(matched by relative path)")
    rep = AgreementReport()
    for name in common:
        try:
            la, ga = read_volume(files_a[name])
            lb, gb = read_volume(files_b[name])
            diffs = ga.differences(gb, tol_mm=0.01, tol_dir=1e-3)
            if diffs:
                raise ConfigError(f"geometry differs between the raters ({'; '.join(diffs)})")
            la, lb = np.rint(la).astype(np.uint8), np.rint(lb).astype(np.uint8)
            ta = wall_thickness(la, ga.spacing)
            tb = wall_thickness(lb, gb.spacing)
        except LvtlError as e:
            rep.skipped[name] = str(e)
            continue
        row = {"case": name, "dice": case_dice(la, lb),
               "thickness_a": {k: getattr(ta, k) for k in STATS},
               "thickness_b": {k: getattr(tb, k) for k in STATS}}
        row["thickness_diff"] = {k: row["thickness_b"][k] - row["thickness_a"][k]
                                 for k in STATS}
        rep.cases.append(row)
    if rep.cases:
        rep.summary = {
            "n": len(rep.cases),
            "dice": {lab: summarize([c["dice"][lab] for c in rep.cases])
                     for lab in KEYS},
            "thickness_diff": {k: summarize([c["thickness_diff"][k] for c in rep.cases])
                               for k in STATS},
        }
        if len(rep.cases) >= 2:
            rep.summary["bland_altman"] = {
                k: bland_altman([c["thickness_b"][k] for c in rep.cases],
                                [c["thickness_a"][k] for c in rep.cases]) for k in STATS}
    return rep
