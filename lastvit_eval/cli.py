"""Entry point: a thin Typer app; bad input becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import traceback

import click
import typer

from . import __version__
from .app import app, state
from .commands import load_all


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lastvit-eval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    state["debug"] = debug


load_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry; with --debug, our one-line errors also print their traceback."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except click.ClickException as e:
        if state["debug"]:
            traceback.print_exc()
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
