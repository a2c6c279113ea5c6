"""The evaluator contract: one module per evaluator, one `@register` line, features in, Result out.

An evaluator declares what it needs and the pipeline (`plan.py` -> `engine/` -> here) provides it:

* `name`: the command-line name (`patch-hit`); metric keys use it with underscores (`patch_hit.top1`).
* `taps`: per-pooling arrays it reads from the forward pass (`pooled`, `patch_scores`, `votes`, `logits`,
  `embedding`), plus pooling-free ones (`patch_tokens`, and from the last block `keys`, `cls_attn`, plus
  `block_norms`: see `engine/internals.py`).
* `splits`: `("test",)` or `("train", "test")`.
* `needs`: annotations and model parts: `labels`, `boxes`, `seg_labels`, `head`, `text` (a CLIP text tower).
* `metrics`: unit and direction of every metric it writes (glob patterns over metric keys), so reports
  and the regression gate treat a cosine gap and a percentage differently.
* `Options`: a frozen dataclass of its settings (defaults = the published protocol).
* `check(plan)`: cheap validation without a forward pass; raise InputError with one line.
* `select(plan)`: which test images it evaluates (None: every labelled one), so a single-evaluator run
  forwards only those.
* `evaluate(inputs) -> Result`.
* `reduce(arrays, ids) -> arrays` (optional): a per-image reduction of the test taps to small per-image arrays
  (CorLoc: keys -> a box). When an evaluator is the only one reading the test taps, extraction applies it
  chunk by chunk as images are forwarded or read from the store, and keeps only its outputs, so a split's
  large taps are never all in memory; `evaluate` then receives those outputs in place of the taps (and must
  also accept the taps, reducing them itself, for runs where the taps are shared or come from a file).
* `dense` / `dense_request(plan)`: an evaluator that scores per pixel (zero-shot segmentation) asks the
  engine's dense forward (`engine/dense_forward.py`) instead of taps; its output arrives as `inputs.dense`.

An evaluator never loads images or checkpoints: the arrays it gets were computed once for every
evaluator of the run (and are usually read back from the feature store).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InputError
from ..result import Result

if TYPE_CHECKING:
    from ..plan import Plan
    from ..pooling import PoolingSpec

UNITS = ("percent", "cosine", "ratio", "count", "seconds", "score")
DIRECTIONS = ("higher", "lower", "none")
NEEDS = frozenset({"labels", "boxes", "seg_labels", "head", "text"})
SPLITS = ("train", "test")
POOLING_FREE_TAPS = frozenset({"patch_tokens", "keys", "cls_attn", "block_norms"})


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: its unit and which way is better."""

    unit: str = "percent"
    direction: str = "higher"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown metric unit {self.unit!r}; use one of {UNITS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown metric direction {self.direction!r}; use one of {DIRECTIONS}")


@dataclass(frozen=True)
class NoOptions:
    """For evaluators without settings."""


@dataclass
class SplitInputs:
    """One split's rows: image ids, integer labels (-1 unknown) and this pooling's tap arrays."""

    ids: list[str]
    labels: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, tap: str) -> np.ndarray:
        if tap not in self.arrays:
            raise InputError(f"no {tap!r} features for this run (have: {', '.join(sorted(self.arrays)) or 'none'})")
        return self.arrays[tap]

    def take(self, rows: np.ndarray) -> SplitInputs:
        return SplitInputs([self.ids[i] for i in rows], self.labels[rows], {k: v[rows] for k, v in self.arrays.items()})


@dataclass
class Inputs:
    """What `evaluate` receives for one pooling."""

    pooling: PoolingSpec
    test: SplitInputs
    train: SplitInputs | None
    classes: list[str]  # label index -> class name (wnid where known)
    plan: Plan  # read-only: annotations, class map, grid, seed, device
    skipped: list[str] = field(default_factory=list)  # test image ids that failed to decode
    dense: Any = None  # engine.dense_forward.DenseOutput for evaluators with `dense = True`


class Evaluator:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    taps: ClassVar[frozenset[str]] = frozenset()
    splits: ClassVar[tuple[str, ...]] = ("test",)
    needs: ClassVar[frozenset[str]] = frozenset()
    metrics: ClassVar[dict[str, MetricInfo]] = {}
    Options: ClassVar[type] = NoOptions
    dense: ClassVar[bool] = False  # True: scored by the engine's dense forward (see dense_request)

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @property
    def namespace(self) -> str:
        return self.name.replace("-", "_")

    def check(self, plan: Plan) -> None:
        """Validate inputs without a forward pass (one-line InputError)."""

    def select(self, plan: Plan) -> list[str] | None:
        """Test image ids this evaluator scores; None: every test image with a label."""
        return None

    def dense_request(self, plan: Plan) -> Any:
        """For `dense` evaluators: the engine.dense_forward.DenseRequest to run; None for tap evaluators."""
        return None

    def reduce(self, arrays: dict[str, np.ndarray], ids: list[str]) -> dict[str, np.ndarray]:
        """Optional: per-image taps of some test images (`ids`, rows aligned) -> small per-image arrays [n, ...].

        Must not depend on which other images are in the chunk. Not overridden: the taps are kept whole."""
        raise NotImplementedError

    def evaluate(self, inputs: Inputs) -> Result:
        raise NotImplementedError

    def metric_info(self, key: str) -> MetricInfo:
        for pattern, info in self.metrics.items():
            if fnmatch.fnmatchcase(key, pattern):
                return info
        raise KeyError(f"{self.name}: metric {key!r} has no declared unit/direction")


EVALUATORS: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: a new evaluator is one module and this one line."""
    for attr in ("name", "taps", "splits", "needs"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__}: evaluators declare {attr}")
    if set(cls.splits) - set(SPLITS) or "test" not in cls.splits:
        raise TypeError(f"{cls.__name__}: splits must be ('test',) or ('train', 'test'), got {cls.splits}")
    if set(cls.needs) - NEEDS:
        raise TypeError(f"{cls.__name__}: unknown needs {sorted(set(cls.needs) - NEEDS)}; known {sorted(NEEDS)}")
    EVALUATORS[cls.name] = cls
    return cls
