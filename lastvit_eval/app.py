"""The Typer application object; command modules under `commands/` register themselves on it."""

from __future__ import annotations

import functools
import sys
import traceback

import typer

from .errors import LastvitError

state = {"debug": False}


def _guard(fn):
    """Turn our errors into `Error: ...` on stderr and the error's exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LastvitError as e:
            if state["debug"]:
                traceback.print_exc()
            print(f"Error: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


class _Typer(typer.Typer):
    def command(self, *args, **kwargs):
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
