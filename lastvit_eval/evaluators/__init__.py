"""Evaluator plugins, registered by name. An evaluator takes features and annotations, never a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

EVALUATORS: dict[str, EvaluatorInfo] = {}


@dataclass(frozen=True)
class EvaluatorInfo:
    name: str
    fn: Callable
    taps: tuple[str, ...]  # tap kinds it needs from the forward pass: pooled, patch_scores, logits, ...
    description: str


def register(name: str, taps: tuple[str, ...], description: str = "") -> Callable[[Callable], Callable]:
    """Decorator: a new evaluator is one module and one line."""

    def deco(fn: Callable) -> Callable:
        EVALUATORS[name] = EvaluatorInfo(name=name, fn=fn, taps=taps, description=description or (fn.__doc__ or ""))
        return fn

    return deco


def get(name: str) -> EvaluatorInfo:
    from ..errors import InputError

    _load_builtin()
    for alias in (name, name.replace("-", "_"), name.replace("_", "-")):
        if alias in EVALUATORS:
            return EVALUATORS[alias]
    if name not in EVALUATORS:
        raise InputError(f"unknown evaluator {name!r}; available: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[name]


def _load_builtin() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
