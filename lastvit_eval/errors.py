"""Errors the CLI turns into one clear line and an exit code instead of a traceback.

Every command registered on `lastvit_eval.app.app` is wrapped so that these print `Error: <message>`
on stderr and exit with their code (also under Typer's CliRunner); `--debug` adds the traceback.
"""

from __future__ import annotations


class LastvitError(Exception):
    exit_code = 1

    @property
    def message(self) -> str:
        return str(self)


class InputError(LastvitError):
    """Bad user input (missing file, malformed annotation, wrong checkpoint...): exit code 2.

    The message names the file and the problem in one line.
    """

    exit_code = 2


class GateFailed(LastvitError):
    """A regression gate found a metric below its tolerance: exit code 1."""

    exit_code = 1
