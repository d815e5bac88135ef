"""``lvtl site check``: hospital IT's pre-flight check of a site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvtl.cli.app import app

site_app = typer.Typer(help="The site's own set-up: configuration, data, trust, NVFlare kit.",
                       no_args_is_help=True)
app.add_typer(site_app, name="site")


@site_app.command("check")
def site_check(
    config: Annotated[Path, typer.Option(help="The site's TOML configuration.")],
    kit: Annotated[Path | None, typer.Option(help="The site's NVFlare startup kit (the folder "
                                                  "with startup/ and local/).")] = None,
    account: Annotated[str | None, typer.Option(help="The account the NVFlare client runs as "
                                                     "(default: the one running this check); "
                                                     "it must not be able to change the config "
                                                     "or the trusted keys.")] = None,
) -> None:
    """Check the site's config, data, cache, trusted keys, revocations and minimum version,
    that the client's account cannot change its trust, and with --kit the startup kit's
    privacy scope, authorization and log streaming; one line per finding, exit 1 on any
    problem."""
    from lvtl.sitecheck import Account, Finding, check_site

    findings = check_site(config, Account.named(account))
    if kit is not None:
        from lvtl.flare.provision import check_site_kit

        findings += [Finding(ok, what) for ok, what in check_site_kit(kit)]
    for f in findings:
        typer.echo(f.line())
    if not all(f.ok for f in findings):
        raise typer.Exit(1)
