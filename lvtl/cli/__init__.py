"""The ``lvtl`` command line: the typer app and one module per command group."""

from lvtl.cli import artifact, data, demo, measure, model, site, study  # noqa: F401 - registers
from lvtl.cli.app import app, main

__all__ = ["app", "main"]
