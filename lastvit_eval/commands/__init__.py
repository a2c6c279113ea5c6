"""CLI commands, one module per command family; each registers on `lastvit_eval.app.app`."""

import importlib
import pkgutil


def load_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{mod.name}")
