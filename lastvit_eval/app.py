"""The Typer application object; command modules under `commands/` register themselves on it.

Nothing heavy is imported here or at the top of any command module: `--help`, `--version` and errors
in the options answer before torch is loaded (`tests/test_startup.py`).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import LastvitError

state = {"debug": False}
HELP_WIDTH = 100  # help without a terminal (CI logs, pipes); on a terminal, its own width


def _guard(fn):
    """Turn our errors into `Error: ...` on stderr and the error's exit code, without a traceback;
    Ctrl-C into one line saying what was kept (the message of the KeyboardInterrupt) and exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LastvitError as e:
            if state["debug"]:
                traceback.print_exc()
            print(f"Error: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            if state["debug"]:
                traceback.print_exc()
            print(f"\nInterrupted: {e}" if str(e) else "\nInterrupted.", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None

    return wrapper


def _quiet_flags(params) -> None:
    """Flags take no value, so their help shows no `<bool>` type (Typer prints one for every option)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""


def _help_width() -> None:
    """Help at 100 columns when not on a terminal (Rich would use 80 and cut option names); `COLUMNS` or
    Typer's `TERMINAL_WIDTH` still win."""
    from typer import rich_utils

    if rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS", "").strip() and not sys.stdout.isatty():
        rich_utils.MAX_WIDTH = HELP_WIDTH


class _PlainHelp:
    """Mixed into our command and group classes: flags without `<bool>`, help that fits."""

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            _quiet_flags([opt])
        return opt

    def format_help(self, ctx, formatter) -> None:
        _quiet_flags(self.params)
        _help_width()
        return super().format_help(ctx, formatter)


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


class _Typer(typer.Typer):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("cls", _Group)
        super().__init__(*args, **kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        register = super().command(*args, **kwargs)

        def deco(fn):
            register(_guard(fn))
            return fn

        return deco


app = _Typer(
    name="lastvit-eval",
    help="Evaluate frozen Vision Transformer checkpoints (point-in-box, k-NN, linear probe, zero-shot, ...)"
    " with CLS, GAP or LAST pooling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
