"""Federation overhead: the same one-site study run by ``lvtl study`` and through NVFlare.

Run: ``.venv/bin/python benchmarks/flare.py [--out bench-run/flare]``.

Set-up (not timed), as in ``lvtl demo``: synthetic site-1 and site-2, preprocessing, a small
Site-1 model, the owner's key, the signed artifact and site-2's own configuration. Then, for a
small and a larger protocol, each way in a fresh child process with fresh work folders:

- baseline: ``lvtl study CACHE --model ARTIFACT --trust KEYS ...`` (verify, study, results.json);
- federated: ``python -m lvtl.flare.job --env sim --clients site-2 ...`` (the NVFlare simulator:
  server, one site; the site verifies the artifact, checks its cache, runs the same study, sends
  the metrics through the filter; the server writes the report).

Both must report the same metrics (checked), so they did the same work. Overhead = federated
time - study time; the fixed part is read off the small protocol and the proportional part
from the growth between the two. Results: stdout and ``benchmarks/results/flare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORKLOADS = {
    "small": ["--arms", "baseline,transfer", "--sizes", "1", "--epochs", "2",
              "--samples-per-epoch", "2"],
    "larger": ["--arms", "baseline,random,transfer", "--sizes", "1,2", "--epochs", "10",
               "--samples-per-epoch", "4"],
}
COMMON = ["--crop", "4,24,32,32", "--downsample", "2", "--val-every", "5", "--seed", "0"]


def _timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{cmd[:4]} failed (exit {rc}); see {log}")
    return seconds


def _metrics(section: dict) -> list:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in section["runs"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench-run" / "flare"))
    args = ap.parse_args()
    from lvtl.demo import DemoScale, _prepare_sites, _pretrain, _sign, _site_configs

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scale = DemoScale(site1_cases=3, site2_cases=8, pretrain_epochs=4)
    _prepare_sites(out, scale, 2, print)
    art = _sign(out, _pretrain(out, scale, print), print)
    sites = _site_configs(out, print)
    lvtl = str(Path(sys.executable).with_name("lvtl"))
    rows = []
    for name, protocol in WORKLOADS.items():
        run_dir = out / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        env = {**os.environ, "LVTL_SITES_DIR": str(sites), "LVTL_WORK_DIR": str(run_dir / "work")}
        t_study = _timed([lvtl, "study", str(out / "cache" / "site-2"), "--model", str(art),
                          "--trust", str(out / "owner-keys"), "--out", str(run_dir / "study"),
                          "--site", "site-2", *protocol, *COMMON], env, run_dir / "study.log")
        t_fed = _timed([sys.executable, "-m", "lvtl.flare.job", "--artifact", str(art),
                        "--env", "sim", "--clients", "site-2", "--workspace",
                        str(run_dir / "flare"), "--report-dir", str(run_dir / "report"),
                        *protocol, *COMMON], env, run_dir / "flare.log")
        study = json.loads((run_dir / "study" / "results.json").read_text())["sites"]["site-2"]
        fed = json.loads((run_dir / "report" / "report.json").read_text())["sites"]["site-2"]
        if _metrics(study) != _metrics(fed):
            sys.exit(f"{name}: the federated run's metrics differ from lvtl study's")
        rows.append({"workload": name, "protocol": protocol + COMMON, "study_seconds": t_study,
                     "federated_seconds": t_fed, "overhead_seconds": t_fed - t_study,
                     "ratio": t_fed / t_study, "same_metrics": True})
        print(f"{name}: lvtl study {t_study:.1f} s, NVFlare simulator {t_fed:.1f} s, "
              f"overhead {t_fed - t_study:+.1f} s, ratio {t_fed / t_study:.3f}")
    small, larger = rows
    slope = ((larger["federated_seconds"] - small["federated_seconds"])
             / (larger["study_seconds"] - small["study_seconds"]))
    result = {"benchmark": "flare", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rows": rows, "fixed_overhead_seconds": small["overhead_seconds"],
              "proportional_factor": slope}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flare.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"fixed overhead (small protocol) {small['overhead_seconds']:.1f} s (goal <= 20 s); "
          f"growth of the federated time per second of study time {slope:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
