"""The ``lvtl`` typer app, its global options and the console-script entry point.

Commands live in one module per group (:mod:`lvtl.cli.data`, ``measure``, ``artifact``,
``model``, ``study``, ``demo``); each command parses its options, calls one library function and
prints. Heavy imports (torch, NVFlare, pydicom) are deferred into the commands, so
``lvtl --help`` starts fast. Errors print one line to stderr and exit non-zero (the code of the
error's class); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from lvtl.errors import LvtlError

app = typer.Typer(
    help="lvtl: cross-site transfer learning of a 4D cardiac CT LV segmentation model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = logging.getLogger("lvtl")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lvtl {version('lvtl')}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


def err(msg: str) -> None:
    """One line to stderr."""
    typer.echo(msg, err=True)


def protocol_options(command: Callable) -> Callable:
    """Give ``command`` the study protocol's options, as :func:`lvtl.study.protocol.options`
    declares them (the job's options come from the same declaration); the command receives
    them as one ``protocol`` argument, a checked :class:`~lvtl.study.protocol.Protocol`."""
    from lvtl.study import protocol as proto

    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items()
           if name != "protocol"]
    added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                               annotation=Annotated[o.kind, typer.Option(o.flag, help=o.help)])
             for o in proto.options()]

    @functools.wraps(command)
    def run(**kw):
        values = {p.name: kw.pop(p.name) for p in added}
        return command(protocol=proto.from_options(values), **kw)

    params = own + added
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def main() -> None:
    """Console-script entry point: one clear line per error, no traceback unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except LvtlError as e:
        if debug:
            raise
        err(f"error: {e}")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        err(f"error: {e.filename or ''}: {e.strerror or e}".replace(": : ", ": "))
        sys.exit(1)
    except Exception as e:
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # a usage error from the argument parser
            sys.exit(e.exit_code)
        if debug:
            raise
        err(f"error: unexpected {type(e).__name__}: {e} (run with --debug for details)")
        sys.exit(1)


if __name__ == "__main__":
    main()
