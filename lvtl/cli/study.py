"""``lvtl study``, ``lvtl report``: the study at one site and the cross-site report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app, protocol_options
from lvtl.study.protocol import Protocol


@app.command()
@protocol_options
def study(
    cache: Annotated[Path, typer.Argument(help="Cache folder of this site's preprocessed "
                                               "cases.")],
    model: Annotated[Path, typer.Option(help="The Site-1 model: a signed artifact folder "
                                             "(verified with --trust or --config) or a "
                                             "checkpoint from lvtl train.")],
    out: Annotated[Path, typer.Option(help="Study folder: results.json and the runs.")],
    protocol: Protocol,
    trust: Annotated[Path | None, typer.Option(help="Trusted public key file or folder.")]
    = None,
    config: Annotated[Path | None, typer.Option(help="Site TOML config ([trust]; its "
                                                     "split_seed replaces --split-seed).")]
    = None,
    site: Annotated[str, typer.Option(help="Site name in the results.")] = "site",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
) -> None:
    """The transfer-learning study at one site: baseline, random and transfer arms at nested
    training sizes, evaluated on the test split; writes results.json (metrics only)."""
    from dataclasses import replace

    from lvtl.artifact import load_model_source
    from lvtl.config import load_site_config, trust_store
    from lvtl.data.cache import load_site_cases
    from lvtl.study.run import run_study

    store = trust_store(trust, config=config) if trust is not None or config is not None else None
    if config is not None:
        protocol = replace(protocol, split_seed=load_site_config(config).split_seed)
    state, source_config = load_model_source(model, store)
    cases, excluded = load_site_cases(cache, protocol.downsample)
    run_study(cases, state, source_config, protocol, out, site=site, excluded=excluded,
              progress=progress, say=typer.echo)
    typer.echo(str(Path(out) / "results.json"))


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="Results files (lvtl.report/1): a "
                                                      "site's results.json or a report.json.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and plots.")],
) -> None:
    """The coordinator's cross-site report from results files; prints report.json's path."""
    from lvtl.study.report import merge_results, write_report

    typer.echo(str(write_report(merge_results(results), out)))
