"""The lvtl study job on NVFlare 2.9's Recipe API: build it, export it, or run it.

    python jobs/lvtl_study/job.py --artifact ART --env sim --clients site-1,site-2 --workspace WS
    python jobs/lvtl_study/job.py --artifact ART --export --export-dir jobs/exported
    python jobs/lvtl_study/job.py --artifact ART --env poc --project sites/project.yml
    python jobs/lvtl_study/job.py --artifact ART --env prod --startup-kit ADMIN_KIT

``sim`` runs the NVFlare simulator on this machine (which applies none of the kits' policies);
``poc`` prepares and starts a fresh ``nvflare poc`` from ``--project`` (server and clients as
separate processes on localhost, in ``$NVFLARE_POC_WORKSPACE``, with the same kit policy as
production: ``lvtl.flare.provision``), submits the job through the admin API, waits, downloads
the result and stops the POC; ``prod`` submits to a provisioned federation with an admin
startup kit.
Every way ends by copying the server's report (``report.json``, ``report.md``, the plot) to
``--report-dir`` and printing the path of ``report.json`` last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nvflare.lighter.utils import load_yaml
from nvflare.recipe import PocEnv, ProdEnv, SimEnv

from lvtl.errors import ConfigError, LvtlError
from lvtl.flare.alive import ALIVE_EVERY, DEAD_AFTER
from lvtl.flare.controller import DEFAULT_TIMEOUT
from lvtl.flare.fed import FED_STATE_ENV
from lvtl.flare.provision import allow_in_simulator
from lvtl.flare.recipe import StudyRecipe
from lvtl.io.atomic import copy_file
from lvtl.study import protocol as proto
from lvtl.study.protocol import Protocol

REPORT_FILES = ("report.json", "report.md", "dice_by_size.png")
ENVS = ("sim", "poc", "prod")


@dataclass(frozen=True)
class JobSettings:
    """Where and how the job runs (everything but the protocol).

    Args:
        artifact: the signed Site-1 model artifact folder.
        env: ``sim`` (simulator), ``poc`` (a fresh local POC) or ``prod`` (a provisioned
            federation through an admin startup kit).
        clients: the sites (sim and poc; in poc, sites of the project file).
        workspace: the simulator's workspace.
        startup_kit: the admin startup kit (prod); ``username`` its admin user (prod and
            poc: the project file's project admin).
        project: the NVFlare project file the POC is provisioned from (poc), so its kits
            enforce the production kits' policy.
        timeout: seconds the server waits for each site (0: no limit).
        report_dir: where the server's report is copied when the job ends.
        fed_state: the server's folder for the fed-transfer arm's state across jobs (a rerun
            resumes after the last completed round); default: ``$LVTL_FED_STATE`` at the
            server, else the server's workspace; ``--env sim`` sets ``LVTL_FED_STATE`` to
            ``<workspace>/lvtl-fed-state`` (the simulator's job folder is made anew each run).
        dead_after: seconds of silence after which the server takes a site as lost.
    """

    artifact: Path
    env: str = "sim"
    clients: tuple[str, ...] = ("site-1", "site-2")
    workspace: Path = Path("/tmp/nvflare/lvtl_study")
    startup_kit: Path | None = None
    username: str = "coordinator@example.org"
    project: Path = Path("sites/project.yml")
    timeout: int = DEFAULT_TIMEOUT
    report_dir: Path = Path("lvtl-report")
    fed_state: Path | None = None
    dead_after: float = DEAD_AFTER


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="job.py", description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, help="signed Site-1 model artifact folder")
    ap.add_argument("--env", choices=ENVS, default="sim")
    ap.add_argument("--clients", default="site-1,site-2",
                    help="sites (sim and poc; in poc, sites of the --project file)")
    ap.add_argument("--workspace", default="/tmp/nvflare/lvtl_study", help="simulator workspace")
    ap.add_argument("--startup-kit", help="admin startup kit (prod)")
    ap.add_argument("--username", default="coordinator@example.org",
                    help="admin user of the startup kit (prod and poc; the project file's "
                         "project admin)")
    ap.add_argument("--project", default="sites/project.yml",
                    help="the NVFlare project file the POC's kits are provisioned from (poc)")
    for o in proto.options():  # the study protocol's options, declared once in lvtl.study
        if o.site_only:
            continue
        ap.add_argument(o.flag, dest=o.name, default=None, help=f"{o.help} Default: {o.default}",
                        type=None if o.kind is str else o.kind)
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                    help="seconds the server waits for each site's results (default: a week; "
                         "0: no limit); a site not heard from for --dead-after seconds is taken "
                         "as lost")
    ap.add_argument("--dead-after", type=float, default=DEAD_AFTER,
                    help="seconds of silence after which the server takes a site as lost "
                         f"(its task says it is alive every {ALIVE_EVERY:g} s; default: "
                         f"{DEAD_AFTER:g})")
    ap.add_argument("--fed-state",
                    help="the server's folder for the fed-transfer arm's state across jobs "
                         "(default: $LVTL_FED_STATE at the server, else its workspace; with "
                         "--env sim, WORKSPACE/lvtl-fed-state)")
    ap.add_argument("--report-dir", default="lvtl-report",
                    help="where the server's report is copied when the job ends")
    ap.add_argument("--export", action="store_true", help="write the job folder and stop")
    ap.add_argument("--export-dir", default="fl_job")
    return ap


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The protocol the job sends: the options given on the command line, defaults for the
    others."""
    return proto.from_options({o.name: getattr(args, o.name) for o in proto.options()
                               if not o.site_only and getattr(args, o.name) is not None})


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
            copy_file(report.parent / name, out / name)
    return (out / "report.json").resolve()


def recipe(protocol: Protocol, settings: JobSettings) -> StudyRecipe:
    fed_state = settings.fed_state
    return StudyRecipe(settings.artifact, protocol,
                       min_clients=len(settings.clients) if settings.env != "prod" else 1,
                       timeout=settings.timeout, dead_after=settings.dead_after,
                       mandatory_clients=settings.clients if settings.env == "poc" else (),
                       fed_state=str(Path(fed_state).resolve()) if fed_state else "")


def project_clients(project: Path) -> list[str]:
    """The client sites of an NVFlare project file."""
    try:
        conf = load_yaml(str(project))
        return [p["name"] for p in conf["participants"] if p.get("type") == "client"]
    except Exception as e:  # noqa: BLE001 - missing, unreadable or not a project file
        raise ConfigError(f"{project}: not a readable NVFlare project file ({e})") from e


def poc_env(settings: JobSettings) -> PocEnv:
    """A fresh POC provisioned from ``settings.project``: its kits carry the production kits'
    privacy scope, authorization and class allow-list (``lvtl.flare.provision``)."""
    sites = project_clients(settings.project)
    unknown = sorted(set(settings.clients) - set(sites))
    if unknown:
        raise ConfigError(f"{settings.project} has no site {', '.join(unknown)} (its sites: "
                          f"{', '.join(sites)}); the POC runs the project file's sites")
    return PocEnv(num_clients=len(sites), project_conf_path=str(settings.project.resolve()),
                  username=settings.username)


def stop_poc(env: PocEnv, wait: float = 60.0) -> None:
    """Stop every POC process the way a site stops its own (``shutdown.fl`` in its kit
    folder: the kits deny the coordinator the ``operate`` right, so no remote shutdown), then
    remove the POC workspace."""
    kits = [start.parent.parent
            for start in Path(env.poc_workspace).glob("*/prod_*/*/startup/sub_start.sh")]
    for kit in kits:
        if (kit / "daemon_pid.fl").exists():
            (kit / "shutdown.fl").touch()
    deadline = time.monotonic() + wait
    while any((k / "daemon_pid.fl").exists() for k in kits) and time.monotonic() < deadline:
        time.sleep(1.0)
    env.stop(clean_up=True)


def run_job(protocol: Protocol, settings: JobSettings) -> Path:
    """Run the study job in ``settings.env`` and copy the server's report to
    ``settings.report_dir``; returns the path of the copied ``report.json``."""
    study = recipe(protocol, settings)
    if settings.env == "sim":
        if settings.fed_state is None:  # beside the simulator's job folder, made anew each run
            os.environ[FED_STATE_ENV] = str((settings.workspace / "lvtl-fed-state").resolve())
        env = SimEnv(clients=list(settings.clients), workspace_root=str(settings.workspace))
        # the simulator has no kits: only its class allow-list must admit lvtl's classes
        allow_in_simulator(Path(env.workspace_root) / study.name)
    elif settings.env == "poc":
        env = poc_env(settings)
    elif settings.env == "prod":
        env = ProdEnv(startup_kit_location=str(settings.startup_kit),
                      username=settings.username)
    else:
        raise ConfigError(f"unknown env {settings.env!r}; choose one of: {', '.join(ENVS)}")
    try:
        job = study.execute(env)
        # keep the POC workspace until the report is copied out of the downloaded result
        result = job.get_result(clean_up=False)
        if not result:
            raise ConfigError(f"the job {job.get_job_id()} finished with status "
                              f"{job.get_status()} and no result")
        return copy_report(find_report(result), settings.report_dir)
    finally:
        if settings.env == "poc":
            stop_poc(env)


def run(argv: list[str] | None = None) -> Path | None:
    """Build the job from the command line and export or run it; the report's path."""
    args = parser().parse_args(argv)
    protocol = protocol_from_args(args)
    settings = JobSettings(
        artifact=Path(args.artifact), env=args.env,
        clients=tuple(c for c in args.clients.split(",") if c), workspace=Path(args.workspace),
        startup_kit=Path(args.startup_kit) if args.startup_kit else None,
        username=args.username, project=Path(args.project), timeout=args.timeout,
        report_dir=Path(args.report_dir),
        fed_state=Path(args.fed_state) if args.fed_state else None,
        dead_after=args.dead_after)
    if args.export:
        recipe(protocol, settings).export(args.export_dir)
        print(f"{args.export_dir}/lvtl_study")
        return None
    return run_job(protocol, settings)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the report's path printed last, or one error line."""
    try:
        report = run(argv)
    except LvtlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if report is not None:
        print(report)


if __name__ == "__main__":
    main()
