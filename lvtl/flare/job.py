"""The lvtl study job on NVFlare 2.9's Recipe API: build it, export it, or run it.

    python jobs/lvtl_study/job.py --artifact ART --env sim --clients site-1,site-2 --workspace WS
    python jobs/lvtl_study/job.py --artifact ART --export --export-dir jobs/exported
    python jobs/lvtl_study/job.py --artifact ART --env poc --clients site-1,site-2
    python jobs/lvtl_study/job.py --artifact ART --env prod --startup-kit ADMIN_KIT

``sim`` runs the NVFlare simulator on this machine; ``poc`` prepares and starts a fresh
``nvflare poc`` (server and clients as separate processes on localhost, in
``$NVFLARE_POC_WORKSPACE``), submits the job through the admin API, waits, downloads the result
and stops the POC; ``prod`` submits to a provisioned federation with an admin startup kit.
Every way ends by copying the server's report (``report.json``, ``report.md``, the plot) to
``--report-dir`` and printing the path of ``report.json`` last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from lvtl.config import parse_ints
from lvtl.errors import ConfigError
from lvtl.flare.recipe import StudyRecipe
from lvtl.study import Protocol

REPORT_FILES = ("report.json", "report.md", "dice_by_size.png")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="job.py", description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, help="signed Site-1 model artifact folder")
    ap.add_argument("--env", choices=("sim", "poc", "prod"), default="sim")
    ap.add_argument("--clients", default="site-1,site-2", help="sites (sim and poc)")
    ap.add_argument("--workspace", default="/tmp/nvflare/lvtl_study", help="simulator workspace")
    ap.add_argument("--startup-kit", help="admin startup kit (prod)")
    ap.add_argument("--username", default="coordinator@example.org",
                    help="admin user of the startup kit (prod; sites/project.yml's admin)")
    ap.add_argument("--arms", default="baseline,random,transfer")
    ap.add_argument("--sizes", default="5,10,15,20,25,30")
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--samples-per-epoch", type=int, default=0)
    ap.add_argument("--crop", default="16,64,96,96")
    ap.add_argument("--downsample", type=int, default=1)
    ap.add_argument("--val-every", type=int, default=1)
    ap.add_argument("--lr-random", type=float, default=1e-3,
                    help="learning rate of the random arm (the paper: 1e-3)")
    ap.add_argument("--lr-transfer", type=float, default=1e-4,
                    help="learning rate of the transfer arm (the paper: 1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=0, help="seconds to wait for the sites")
    ap.add_argument("--report-dir", default="lvtl-report",
                    help="where the server's report is copied when the job ends")
    ap.add_argument("--export", action="store_true", help="write the job folder and stop")
    ap.add_argument("--export-dir", default="fl_job")
    return ap


def find_report(result: str | Path) -> Path:
    """The ``report.json`` the server wrote, somewhere under a job's result folder."""
    found = sorted(Path(result).rglob("report.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"{result}: the job left no report.json (see the server's log)")
    return found[-1]


def copy_report(report: Path, out_dir: str | Path) -> Path:
    """Copy the report's files next to ``report`` into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (report.parent / name).is_file():
            tmp = out / f".{name}.partial"
            shutil.copy2(report.parent / name, tmp)
            os.replace(tmp, out / name)
    return (out / "report.json").resolve()


def run(argv: list[str] | None = None) -> Path | None:
    """Build the job from the command line and export or run it; the report's path."""
    args = parser().parse_args(argv)
    protocol = Protocol(arms=tuple(args.arms.split(",")), sizes=parse_ints(args.sizes, "sizes"),
                        epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                        crop=parse_ints(args.crop, "crop", 4), downsample=args.downsample,
                        val_every=args.val_every, seed=args.seed, lr_random=args.lr_random,
                        lr_transfer=args.lr_transfer)
    clients = args.clients.split(",")
    recipe = StudyRecipe(args.artifact, protocol, min_clients=len(clients) if args.env != "prod"
                         else 1, timeout=args.timeout)
    if args.export:
        recipe.export(args.export_dir)
        print(f"{args.export_dir}/lvtl_study")
        return None
    if args.env == "sim":
        from nvflare.recipe import SimEnv

        env = SimEnv(clients=clients, workspace_root=args.workspace)
    elif args.env == "poc":
        from nvflare.recipe import PocEnv

        env = PocEnv(clients=clients)
    else:
        from nvflare.recipe import ProdEnv

        env = ProdEnv(startup_kit_location=args.startup_kit, username=args.username)
    job = recipe.execute(env)
    # keep the POC workspace until the report is copied out of the downloaded result
    result = job.get_result(clean_up=False)
    try:
        if not result:
            raise ConfigError(f"the job {job.get_job_id()} finished with status "
                              f"{job.get_status()} and no result")
        report = copy_report(find_report(result), args.report_dir)
    finally:
        if args.env == "poc":
            env.stop(clean_up=True)
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point: the report's path printed last, or one error line."""
    from lvtl.errors import LvtlError

    try:
        report = run(argv)
    except LvtlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if report is not None:
        print(report)


if __name__ == "__main__":
    main()
