"""Entry point: a thin Typer app; bad input becomes one line on stderr and exit code 2."""

from __future__ import annotations

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


def main() -> None:
    """Console-script entry."""
    app()


if __name__ == "__main__":
    main()
