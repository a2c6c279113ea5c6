"""Evaluator plugins, registered by name (see `base.py` for the contract)."""

from __future__ import annotations

from .base import EVALUATORS, Evaluator, register

__all__ = ["EVALUATORS", "Evaluator", "available", "get", "register"]


def get(name: str) -> type[Evaluator]:
    """The evaluator class registered under `name` (`linear_probe` is accepted for `linear-probe`)."""
    from ..errors import InputError

    _load_builtin()
    key = name.strip().replace("_", "-")
    if key in EVALUATORS:
        return EVALUATORS[key]
    if name in EVALUATORS:
        return EVALUATORS[name]
    raise InputError(f"unknown evaluator {name!r}; available: {', '.join(available())}")


def available() -> list[str]:
    _load_builtin()
    return sorted(EVALUATORS)


def _load_builtin() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
