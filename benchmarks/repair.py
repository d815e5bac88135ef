"""How much of the clean truth does label repair recover on the synthetic sites?

For N cases per site, at ED and ES, compares the flood-fill style labels (as a contouring tool
delivers them) and the repaired labels with the clean ground truth: Dice per label, mean and
minimum over cases. Run: ``.venv/bin/python benchmarks/repair.py [--cases N]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lvtl.data.repair import repair_labels
from lvtl.measure.metrics import dice
from lvtl.synth.case import Case
from lvtl.synth.profiles import draw_case

SETTINGS = [("none", 0, "2d"), ("2d r=3", 3, "2d"), ("2d r=5 (default)", 5, "2d"),
            ("3d r=3", 3, "3d"), ("3d r=5", 5, "3d")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "repair.json")
    args = ap.parse_args()
    scores: dict[str, dict[str, list[float]]] = {s[0]: {"bp": [], "lvm": []} for s in SETTINGS}
    seconds: dict[str, float] = {s[0]: 0.0 for s in SETTINGS}
    for site in ("site-1", "site-2"):
        for i in range(args.cases):
            case = Case(draw_case(site, i))
            for t in (case.p.ed, case.p.es):
                truth, _ = case.truth(t)
                ff = case.flood_fill_labels(truth, t)
                for name, radius, mode in SETTINGS:
                    t0 = time.perf_counter()
                    rep = repair_labels(ff, radius, mode)
                    seconds[name] += time.perf_counter() - t0
                    scores[name]["bp"].append(dice(rep, truth, 1))
                    scores[name]["lvm"].append(dice(rep, truth, 2))
    n = len(scores["none"]["bp"])
    rows = ["| repair | blood pool Dice mean (min) | LVM Dice mean (min) | ms per volume |",
            "|---|---|---|---|"]
    for name, _, _ in SETTINGS:
        bp, lvm = np.array(scores[name]["bp"]), np.array(scores[name]["lvm"])
        rows.append(f"| {name} | {bp.mean():.3f} ({bp.min():.3f}) | {lvm.mean():.3f} "
                    f"({lvm.min():.3f}) | {1000 * seconds[name] / n:.0f} |")
    table = "\n".join(rows)
    print(f"{n} label volumes ({args.cases} cases per site, ED and ES, small size)\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"volumes": n, "scores": scores, "seconds": seconds},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
