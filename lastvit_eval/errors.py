"""Errors the CLI turns into one clear line and an exit code instead of a traceback.

They subclass click's ClickException so Typer (and its CliRunner in tests) prints `Error: <message>`
on stderr and exits with the code below, without a traceback.
"""

from __future__ import annotations

import click


class InputError(click.ClickException):
    """Bad user input (missing file, malformed annotation, wrong checkpoint...): exit code 2.

    The message names the file and the problem in one line.
    """

    exit_code = 2


class GateFailed(click.ClickException):
    """A regression gate found a metric below its tolerance: exit code 1."""

    exit_code = 1
