"""The lvtl study job: ship the signed Site-1 model, run the study at every site, report.

    python jobs/lvtl_study/job.py --artifact ART --env sim --clients site-1,site-2 --workspace WS
    python jobs/lvtl_study/job.py --artifact ART --export --export-dir jobs/exported
    python jobs/lvtl_study/job.py --artifact ART --env poc        # a running `nvflare poc`
    python jobs/lvtl_study/job.py --artifact ART --env prod --startup-kit ADMIN_KIT

The exported folder runs with ``nvflare simulator DIR/lvtl_study -w WS -n 2 -c site-1,site-2``
and ``nvflare job submit -j DIR/lvtl_study``. Sites find their data through their own
configuration (``LVTL_SITE_CONFIG`` or ``LVTL_SITES_DIR``), never through the job.
"""

from __future__ import annotations

import argparse

from lvtl.flare.recipe import StudyRecipe
from lvtl.study import Protocol


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, help="signed Site-1 model artifact folder")
    ap.add_argument("--env", choices=("sim", "poc", "prod"), default="sim")
    ap.add_argument("--clients", default="site-1,site-2", help="simulator sites")
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=0, help="seconds to wait for the sites")
    ap.add_argument("--export", action="store_true", help="write the job folder and stop")
    ap.add_argument("--export-dir", default="fl_job")
    args = ap.parse_args()
    protocol = Protocol(arms=tuple(args.arms.split(",")), sizes=_ints(args.sizes),
                        epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                        crop=_ints(args.crop), downsample=args.downsample,
                        val_every=args.val_every, seed=args.seed)
    clients = args.clients.split(",")
    recipe = StudyRecipe(args.artifact, protocol, min_clients=len(clients) if args.env == "sim"
                         else 1, timeout=args.timeout)
    if args.export:
        recipe.export(args.export_dir)
        print(f"{args.export_dir}/lvtl_study")
        return
    if args.env == "sim":
        from nvflare.recipe import SimEnv

        env = SimEnv(clients=clients, workspace_root=args.workspace)
    elif args.env == "poc":
        from nvflare.recipe import PocEnv

        env = PocEnv()
    else:
        from nvflare.recipe import ProdEnv

        env = ProdEnv(startup_kit_location=args.startup_kit, username=args.username)
    run = recipe.execute(env)
    print(run.get_result())


if __name__ == "__main__":
    main()
