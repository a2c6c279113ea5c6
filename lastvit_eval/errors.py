"""Errors the CLI turns into one clear line and an exit code instead of a traceback.

They subclass click's ClickException so Typer (and its CliRunner in tests) prints `Error: <message>`
on stderr and exits with the code below, without a traceback.
"""

from __future__ import annotations

import click

try:  # recent Typer (0.29 here) vendors click; its runner only turns *its* ClickException into an exit code.
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # older Typer uses the real click
    _TyperClickException = click.ClickException
_BASES = tuple(dict.fromkeys((click.ClickException, _TyperClickException)))


class InputError(*_BASES):
    """Bad user input (missing file, malformed annotation, wrong checkpoint...): exit code 2.

    The message names the file and the problem in one line.
    """

    exit_code = 2


class GateFailed(*_BASES):
    """A regression gate found a metric below its tolerance: exit code 1."""

    exit_code = 1
