"""``lvtl demo``: the whole story on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder of the demo.")] = Path("demo-run"),
    site1_cases: Annotated[int, typer.Option(help="Cases at site-1.")] = 6,
    site2_cases: Annotated[int, typer.Option(help="Cases at site-2.")] = 8,
    pretrain_epochs: Annotated[int, typer.Option(help="Site-1 pretraining epochs.")] = 60,
    study_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per study run.")] = 10,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 2,
) -> None:
    """The whole story on this machine: synthetic sites, preprocessing, Site-1 pretraining,
    the signed model, the NVFlare simulator job at site-1 and site-2, the report. Prints the
    path of report.json last."""
    from lvtl.demo import DemoScale, run_demo

    scale = DemoScale(site1_cases=site1_cases, site2_cases=site2_cases,
                      pretrain_epochs=pretrain_epochs, study_epochs=study_epochs)
    report = run_demo(out, scale, workers=workers, say=typer.echo)
    typer.echo(str(report))
