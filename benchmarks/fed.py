"""Fed-transfer overhead: the federated arm's rounds against the local transfer arm's training,
at the same sites, on the same machine, in one NVFlare simulator job.

Run: ``.venv/bin/python benchmarks/fed.py`` (the demo's model and schedule, about 5 minutes on
2 cores; options ``--cases``, ``--filters``, ``--blocks``, ``--crop``, ``--epochs``,
``--samples-per-epoch``, ``--fed-rounds``); ``--quick``: a tiny configuration that checks the
script end to end (about a minute once the sites' cases exist; results in ``WORK``, not in
``benchmarks/results``). Work folder: ``--work`` (default ``bench-run/fed``); the sites' cases
and caches are kept there for the next run with the same ``--cases``.

Set-up (not timed), as in ``lvtl demo --fed``: three synthetic sites (site-1, site-2,
site-3; ``--cases`` each, preprocessed to their caches), an untrained model of the chosen width
(``--filters``, ``--blocks``) signed as the artifact, and each site's own configuration allowing
weight sharing (``[federation] allow_weight_sharing = true``). Then one job
(``jobs/lvtl_study/job.py --env sim``, timed) with the arms ``transfer,fed-transfer`` at one
training size: FedAvg runs first (``--fed-rounds`` rounds; in each, every site trains
``epochs / fed_rounds`` epochs from the round's global model), then every site runs its local
transfer run (``--epochs`` epochs from the signed model, the same number of steps in all) and
evaluates both. The sites share the cores: ``OMP_NUM_THREADS = cores // sites`` (at least 1),
as the demo sets it; the sites run their rounds, and their local runs, concurrently.

From the server's report (``report.json``):

- time: the fed arm's wall time per round on the server (``round_seconds``: task out, the
  sites' training, the updates in, aggregation, the global model saved) against the local
  arm's time for the same training, each site's transfer ``train_seconds / fed_rounds`` (mean
  over the sites; the slowest too). ratio = fed / local per round: the cost of federation
  (model exchange, aggregation, each round's set-up at the site). The first round is shown on
  its own (it carries the signed artifact, which every site verifies, and the sites' loading of
  their cached cases). The local run validates once (``--val-every`` = epochs: at its end) and
  saves a checkpoint every epoch; a round does not validate and saves its state once: the ratio
  slightly understates the overhead.
- bytes: per round the server takes in one update per site (``update_bytes[r] / sites``), which
  must equal the model's float32 parameter bytes (``param_bytes``, and 4 x the parameter
  count; checked, the run fails if not). The bytes on the wire of one update: a site's
  recorded update of round 1, as the site's executor builds its reply
  (:func:`lvtl.flare.executor.fed_result`: the float32 difference with the number of training
  cases and steps), through the site's outgoing :class:`~lvtl.flare.filters.FedUpdateFilter`,
  serialised by NVFlare's ``fobs.dumps``. The download per site and round is the global model
  (computed: ``param_bytes``; the first round adds the signed artifact's files).

Results: stdout (a Markdown table) and ``benchmarks/results/fed.json`` (``--out``).
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
SIZE = 1  # the training size both arms train at (one case per site)

#: The default: the demo's model and schedule (``lvtl.demo.DemoScale``: 8 rounds x 5 epochs x 8
#: crops = the local run's 320 steps), three cases per site; about 5 minutes on 2 cores.
DEFAULT = {"cases": 3, "filters": 4, "blocks": "1,1,1", "crop": "4,24,32,32", "downsample": 2,
           "epochs": 40, "samples_per_epoch": 8, "fed_rounds": 8}
#: ``--quick``: a tiny configuration (the NVFlare tests' crop, half their model's width).
QUICK = {"cases": 3, "filters": 2, "blocks": "1,1", "crop": "2,24,32,32", "downsample": 2,
         "epochs": 2, "samples_per_epoch": 1, "fed_rounds": 2}


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",")]


def configuration(args: argparse.Namespace) -> dict:
    """The configuration: options given > ``--quick``'s > the default."""
    base = QUICK if args.quick else DEFAULT
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    cfg["blocks"], cfg["crop"] = _ints(cfg["blocks"]), _ints(cfg["crop"])
    if cfg["cases"] < 3:
        sys.exit(f"--cases must be at least 3 (train, validation, test), got {cfg['cases']}")
    if cfg["epochs"] % cfg["fed_rounds"]:
        sys.exit(f"--epochs ({cfg['epochs']}) must be a multiple of --fed-rounds "
                 f"({cfg['fed_rounds']})")
    return cfg


def set_up(work: Path, cfg: dict, workers: int) -> tuple[Path, Path, int]:
    """Sites, caches, the signed model and the sites' configs in ``work``; returns the
    artifact, the sites' config folder and the model's parameter count. The sites' cases and
    caches of an earlier run with the same ``--cases`` are kept (they do not depend on the
    other options); everything else is made afresh."""
    import torch

    from lvtl.demo import FED_SITES, DemoScale, _prepare_sites, _sign, _site_configs
    from lvtl.model.checkpoint import model_checkpoint
    from lvtl.model.network import LVNet4d
    from lvtl.model.train import TrainConfig, init_weights

    n = cfg["cases"]
    marker = work / "setup.json"
    if work.is_dir() and any(work.iterdir()) and not marker.is_file():
        sys.exit(f"{work}: not empty and not this benchmark's work folder; choose another --work")
    same = marker.is_file() and json.loads(marker.read_text()).get("cases") == n
    if work.exists():
        for entry in work.iterdir():
            if not (same and entry.name in ("data", "cache", marker.name)):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"cases": n}) + "\n")
    scale = DemoScale(site1_cases=n, site2_cases=n, site3_cases=n, export_cases=0)
    _prepare_sites(work, scale, workers, print, FED_SITES)
    model = LVNet4d(init_filters=cfg["filters"], blocks_down=tuple(cfg["blocks"]),
                    groups=min(8, cfg["filters"]))
    init_weights(model, "default", 0)
    checkpoint = work / "model.pt"
    torch.save(model_checkpoint(model, TrainConfig(crop=tuple(cfg["crop"]),
                                                   spacing_mm=float(cfg["downsample"])), {}),
               checkpoint)
    art = _sign(work, checkpoint, print)
    sites = _site_configs(work, print, FED_SITES, share=True)
    return art, sites, sum(p.numel() for p in model.parameters())


def run_job(work: Path, art: Path, sites_dir: Path, cfg: dict, threads: int,
            timeout: int) -> float:
    """The simulator job with both arms; returns its wall time in seconds."""
    from lvtl.demo import FED_SITES

    for d in ("flare", "site-work", "report"):  # a fresh job: nothing to resume
        shutil.rmtree(work / d, ignore_errors=True)
    env = {**os.environ, "LVTL_SITES_DIR": str(sites_dir), "LVTL_WORK_DIR": str(work / "site-work"),
           "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.pop("LVTL_SITE_CONFIG", None)
    cmd = [sys.executable, str(REPO / "jobs" / "lvtl_study" / "job.py"), "--artifact", str(art),
           "--env", "sim", "--clients", ",".join(FED_SITES), "--workspace", str(work / "flare"),
           "--report-dir", str(work / "report"), "--arms", "transfer,fed-transfer",
           "--sizes", str(SIZE), "--epochs", str(cfg["epochs"]),
           "--fed-rounds", str(cfg["fed_rounds"]),
           "--samples-per-epoch", str(cfg["samples_per_epoch"]),
           "--crop", ",".join(map(str, cfg["crop"])), "--downsample", str(cfg["downsample"]),
           "--val-every", str(cfg["epochs"]), "--seed", "0", "--timeout", str(timeout)]
    log = work / "job.log"
    print(f"[bench] NVFlare simulator job: {', '.join(FED_SITES)}, OMP_NUM_THREADS={threads}; "
          f"log {log}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc:
        sys.exit(f"the job failed (exit {rc}); see {log}")
    return seconds


def site_threads(omp: int) -> int:
    """The torch threads a site process gets under ``OMP_NUM_THREADS=omp`` (asked of torch in
    a fresh process)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env={**os.environ, "OMP_NUM_THREADS": str(omp)}, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


def timing(report: dict, sites: list[str], rounds: int) -> dict:
    """Seconds per round: the fed arm's (server) against the local transfer runs' per
    equivalent round."""
    (run,) = [r for r in report["federation"]["runs"] if r["size"] == SIZE]
    fed = [float(s) for s in run["round_seconds"]]
    if run["completed"] != rounds or len(fed) != rounds:
        sys.exit(f"the fed arm completed {run['completed']} of {rounds} rounds "
                 f"({len(fed)} timed); events: {run['events']}")
    if run["events"] or sorted(run["sites"]) != sorted(sites):
        sys.exit(f"not every site took part in every round: sites {run['sites']}, events "
                 f"{run['events']}")
    local = {}
    for site in sites:
        sec = report["sites"][site]
        if sec["status"] != "ok":
            sys.exit(f"{site}: {sec['status']} ({sec.get('reason')})")
        (t,) = [r for r in sec["runs"] if r["arm"] == "transfer" and r["train_size"] == SIZE]
        local[site] = float(t["train_seconds"])
    if min(local.values()) <= 0:
        sys.exit(f"a local transfer run reports no training time: {local}")
    per_round = {s: v / rounds for s, v in local.items()}
    local_mean = sum(per_round.values()) / len(per_round)
    later = fed[1:] or fed
    return {
        "fed_round_seconds": fed,
        "fed_mean": sum(fed) / rounds,
        "fed_first": fed[0],
        "fed_later_mean": sum(later) / len(later),
        "fed_total": sum(fed),
        "local_train_seconds": local,
        "local_per_round": per_round,
        "local_per_round_mean": local_mean,
        "local_per_round_slowest": max(per_round.values()),
        "local_total_mean": sum(local.values()) / len(local),
        "ratio_mean": sum(fed) / rounds / local_mean,
        "ratio_first": fed[0] / local_mean,
        "ratio_later": sum(later) / len(later) / local_mean,
        "ratio_slowest_site": sum(fed) / rounds / max(per_round.values()),
        "ratio_total": sum(fed) / (sum(local.values()) / len(local)),
    }


def volume(report: dict, sites: list[str], n_params: int) -> dict:
    """Bytes per round: the updates the server took in, checked against the model's float32
    parameter bytes (exits if they differ)."""
    (run,) = [r for r in report["federation"]["runs"] if r["size"] == SIZE]
    param_bytes = int(run["param_bytes"])
    per_site = [b / len(sites) for b in run["update_bytes"]]
    problems = []
    if param_bytes != 4 * n_params:
        problems.append(f"param_bytes {param_bytes} != 4 x {n_params} float32 parameters")
    bad = [(r + 1, b) for r, b in enumerate(per_site) if b != param_bytes]
    if bad:
        problems.append("update bytes per site differ from param_bytes in round(s) "
                        + ", ".join(f"{r}: {b:g}" for r, b in bad))
    if problems:
        sys.exit("BYTES CHECK FAILED: " + "; ".join(problems))
    return {"param_bytes": param_bytes, "n_params": n_params,
            "update_bytes": run["update_bytes"], "update_bytes_per_site": per_site,
            "bytes_check": "ok: update_bytes[r] / sites == param_bytes == 4 x parameters, "
                           f"every round ({len(per_site)})"}


def wire_bytes(work: Path, sites_dir: Path, site: str, cfg: dict) -> dict:
    """Bytes of one update message as NVFlare serialises it: the site's recorded round-1
    update, as its executor replies, through its outgoing filter, ``fobs.dumps``."""
    import numpy as np
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.utils.decomposers import flare_decomposers
    from nvflare.app_common.decomposers import common_decomposers, numpy_decomposers
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils
    from nvflare.fuel.utils import fobs

    from lvtl.flare.executor import fed_result
    from lvtl.flare.fed import FED_TASK, FILTER
    from lvtl.flare.filters import FedUpdateFilter
    from lvtl.flare.site import FedReply

    found = sorted((work / "site-work" / site).glob(f"*/fed/size-{SIZE}/update-round-0.npz"))
    if not found:
        sys.exit(f"{site}: no recorded update of round 1 under {work / 'site-work'}")
    with np.load(found[0]) as z:
        update = {k: z[k] for k in z.files}
    steps = cfg["epochs"] // cfg["fed_rounds"] * cfg["samples_per_epoch"]
    reply = FLModelUtils.to_shareable(fed_result(FedReply(update=update, n_train=SIZE,
                                                          steps=steps)))
    os.environ["LVTL_SITES_DIR"] = str(sites_dir)
    os.environ.pop("LVTL_SITE_CONFIG", None)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_NAME, FED_TASK, private=True, sticky=False)
    sent = FedUpdateFilter().process(reply, ctx)
    meta = FLModelUtils.from_shareable(sent).meta or {}
    if FILTER not in meta:
        sys.exit(f"{site}: the outgoing filter did not pass the update: {meta}")
    for decomposers in (flare_decomposers, common_decomposers, numpy_decomposers):
        decomposers.register()  # as NVFlare's runtime does before it sends anything
    data = fobs.dumps(sent)
    return {"site": site, "wire_bytes": len(data),
            "array_bytes": int(sum(v.nbytes for v in update.values())),
            "arrays": len(update), "meta": {str(k): v for k, v in meta.items()}}


def table(t: dict, b: dict, w: dict, cfg: dict, job_seconds: float, artifact_bytes: int) -> str:
    r = cfg["fed_rounds"]
    p = b["param_bytes"]
    later = f"rounds 2–{r}" if r > 2 else "round 2" if r == 2 else "round 1"
    each = ", ".join(f"{x:.2f}" for x in t["fed_round_seconds"])
    rows = [
        "| per round | fed-transfer (server) | local transfer (train_seconds / rounds) | "
        "fed / local |",
        "|---|---:|---:|---:|",
        f"| seconds per round, mean of {r} rounds | {t['fed_mean']:.2f} | "
        f"{t['local_per_round_mean']:.2f} | **{t['ratio_mean']:.2f}×** |",
        f"| seconds per round, {later} | {t['fed_later_mean']:.2f} | "
        f"{t['local_per_round_mean']:.2f} | {t['ratio_later']:.2f}× |",
        f"| first round (artifact verified, cases loaded) | {t['fed_first']:.2f} | "
        f"{t['local_per_round_mean']:.2f} | {t['ratio_first']:.2f}× |",
        f"| each round | {each} | | |",
        f"| against the slowest site's local run | {t['fed_mean']:.2f} | "
        f"{t['local_per_round_slowest']:.2f} | {t['ratio_slowest_site']:.2f}× |",
        f"| whole arm: {r} rounds against one local run | {t['fed_total']:.1f} | "
        f"{t['local_total_mean']:.1f} | {t['ratio_total']:.2f}× |",
        f"| the job (set-up excluded), wall time | {job_seconds:.1f} | | |",
        "",
        "| bytes per site per round | bytes | / param_bytes |",
        "|---|---:|---:|",
        f"| model parameters (param_bytes: {b['n_params']:,} float32) | {p:,} | 1 |",
        f"| upload, received by the server (update_bytes / sites) | "
        f"{b['update_bytes_per_site'][0]:,.0f} | "
        f"{b['update_bytes_per_site'][0] / p:.3f} |",
        f"| upload on the wire (fobs of the filtered reply) | {w['wire_bytes']:,} | "
        f"{w['wire_bytes'] / p:.3f} |",
        f"| download, the global model (computed from param_bytes) | {p:,} | 1 |",
        f"| first round only: the signed artifact, in addition | {artifact_bytes:,} | "
        f"{artifact_bytes / p:.2f} |",
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny configuration: checks the script runs")
    ap.add_argument("--cases", type=int, help=f"cases per site (default {DEFAULT['cases']})")
    ap.add_argument("--filters", type=int,
                    help=f"the model's init_filters (default {DEFAULT['filters']})")
    ap.add_argument("--blocks", help=f"blocks per level (default {DEFAULT['blocks']})")
    ap.add_argument("--crop", help=f"crop t,z,y,x (default {DEFAULT['crop']})")
    ap.add_argument("--downsample", type=int,
                    help=f"grid, multiple of 1 mm (default {DEFAULT['downsample']})")
    ap.add_argument("--epochs", type=int, help=f"local epochs (default {DEFAULT['epochs']})")
    ap.add_argument("--samples-per-epoch", type=int,
                    help=f"crops per epoch (default {DEFAULT['samples_per_epoch']})")
    ap.add_argument("--fed-rounds", type=int,
                    help=f"FedAvg rounds (default {DEFAULT['fed_rounds']})")
    ap.add_argument("--workers", type=int, default=2, help="set-up processes")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds the server waits")
    ap.add_argument("--work", default=str(REPO / "bench-run" / "fed"),
                    help="work folder (made afresh but for the sites' cases and caches)")
    ap.add_argument("--out", help="the results JSON (default: benchmarks/results/fed.json; "
                                  "with --quick: WORK/fed-quick.json)")
    args = ap.parse_args()
    cfg = configuration(args)
    work = Path(args.work).resolve()
    from lvtl.demo import FED_SITES

    sites = list(FED_SITES)
    cores = os.cpu_count() or 1
    threads = max(1, cores // len(sites))
    t0 = time.perf_counter()
    art, sites_dir, n_params = set_up(work, cfg, args.workers)
    setup_seconds = time.perf_counter() - t0
    job_seconds = run_job(work, art, sites_dir, cfg, threads, args.timeout)
    report = json.loads((work / "report" / "report.json").read_text())
    t = timing(report, sites, cfg["fed_rounds"])
    b = volume(report, sites, n_params)
    w = wire_bytes(work, sites_dir, sites[0], cfg)
    artifact_bytes = sum(f.stat().st_size for f in art.iterdir() if f.is_file())
    import nvflare
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train import lvtl_version

    result = {
        "benchmark": "fed", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "lvtl": lvtl_version(None),
        "machine": {"cpu_count": cores, "sites": len(sites),
                    "omp_num_threads_per_site": threads,
                    "torch_threads_per_site": site_threads(threads),
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "nvflare": nvflare.__version__},
        "config": {**cfg, "quick": args.quick, "size": SIZE,
                   "arms": ["transfer", "fed-transfer"], "val_every": cfg["epochs"],
                   "epochs_per_round": cfg["epochs"] // cfg["fed_rounds"],
                   "steps_per_round": cfg["epochs"] // cfg["fed_rounds"]
                   * cfg["samples_per_epoch"]},
        "setup_seconds": round(setup_seconds, 1), "job_seconds": round(job_seconds, 1),
        "timing": t, "bytes": {**b, "wire": w, "download_per_site_per_round": b["param_bytes"],
                               "artifact_bytes_first_round": artifact_bytes},
    }
    out = Path(args.out or (work / "fed-quick.json" if args.quick else RESULTS / "fed.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{b['bytes_check']}")
    print(f"wire: one update message {w['wire_bytes']:,} bytes = "
          f"{w['wire_bytes'] / b['param_bytes']:.4f} x param_bytes "
          f"({w['wire_bytes'] - b['param_bytes']:+,} bytes: {w['arrays']} arrays' headers, "
          "the meta, the envelope)")
    print(f"machine: {cores} CPU cores, {len(sites)} sites x "
          f"{result['machine']['torch_threads_per_site']} torch thread(s); "
          f"set-up {setup_seconds:.0f} s (not in the table); results {out}\n")
    print(table(t, b, w, cfg, job_seconds, artifact_bytes))


if __name__ == "__main__":
    main()
