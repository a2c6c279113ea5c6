"""The Typer application object; command modules under `commands/` register themselves on it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lastvit-eval",
    help="Evaluate frozen Vision Transformer checkpoints (point-in-box, k-NN, linear probe, zero-shot, ...)"
    " with CLS, GAP or LAST pooling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

state = {"debug": False}
