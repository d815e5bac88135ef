"""``lvtl demo``: the whole story on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder of the demo.")] = Path("demo-run"),
    site1_cases: Annotated[int | None, typer.Option(
        help="Cases at site-1 (default: the demo's scale, lvtl.demo.DemoScale).")] = None,
    site2_cases: Annotated[int | None, typer.Option(help="Cases at site-2.")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(
        help="Site-1 pretraining epochs.")] = None,
    study_epochs: Annotated[int | None, typer.Option(
        help="Fine-tuning epochs per study run.")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 2,
    fed: Annotated[bool, typer.Option(
        help="Three sites (site-3 too) that share weight updates, and the fed-transfer arm "
             "(NVFlare FedAvg) beside the local ones: a longer run (docs/results.md).")] = False,
) -> None:
    """The whole story on this machine: synthetic sites, preprocessing, Site-1 pretraining,
    the signed model, the NVFlare simulator job at site-1 and site-2, the report. Prints the
    path of report.json last."""
    from lvtl.demo import DemoScale, run_demo

    given = {"site1_cases": site1_cases, "site2_cases": site2_cases,
             "pretrain_epochs": pretrain_epochs, "study_epochs": study_epochs}
    scale = DemoScale(**{k: v for k, v in given.items() if v is not None})
    report = run_demo(out, scale, workers=workers, fed=fed, say=typer.echo)
    typer.echo(str(report))
