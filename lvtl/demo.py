"""``lvtl demo``: the story on one machine, as far as it is built.

Synthetic site-1 and site-2 -> inspection of one case per site -> preprocessing of every case
to the cached 1 mm 4D pairs. Writes ``summary.json`` and returns its path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from lvtl.atomic import write_text
from lvtl.dicom import scan_series
from lvtl.phantom import generate_site
from lvtl.preprocess import PreprocessConfig, preprocess_site


def run_demo(out: str | Path, site1_cases: int = 4, site2_cases: int = 6, *, workers: int = 2,
             echo: Callable[[str], None] = print) -> Path:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"schema": "lvtl.demo/1", "sites": {}}
    t_start = time.perf_counter()
    for site, n in (("site-1", site1_cases), ("site-2", site2_cases)):
        data = out / "data" / site
        cache = out / "cache" / site
        t0 = time.perf_counter()
        made = generate_site(site, n, data, workers=workers)
        failed = [c for c, e in made if e]
        echo(f"[{site}] synthetic cases: {len(made) - len(failed)} in {data} "
             f"({time.perf_counter() - t0:.0f} s)")
        first = data / made[0][0] / "dicom"
        index = scan_series(first)
        g = index.geometry
        echo(f"[{site}] inspect {made[0][0]}: {index.n_phases} phases, shape "
             f"{list(index.shape)}, spacing {[round(s, 3) for s in g.spacing]} mm, "
             f"orientation {g.axis_codes()}")
        t0 = time.perf_counter()
        results = preprocess_site(data, cache, PreprocessConfig(), workers=workers)
        ok = [r for r in results if r.status != "failed"]
        echo(f"[{site}] preprocessed {len(ok)} of {len(results)} cases to {cache} "
             f"({time.perf_counter() - t0:.0f} s)")
        for r in results:
            if r.status == "failed":
                echo(f"[{site}] skipped {r.reason}")
        summary["sites"][site] = {
            "data": str(data),
            "cache": str(cache),
            "cases": [r.case_id for r in ok],
            "failed": {r.case_id: r.reason for r in results if r.status == "failed"},
            "labelled_phases": {r.case_id: r.labelled for r in ok},
        }
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    path = out / "summary.json"
    write_text(path, json.dumps(summary, indent=2) + "\n")
    echo("Not in the demo yet: Site-1 pretraining, signing and the NVFlare job; they exist as "
         "`lvtl train`, `lvtl artifact sign` and jobs/lvtl_study/job.py (docs/coordinator.md).")
    return path
