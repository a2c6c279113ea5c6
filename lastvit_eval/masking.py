"""The masking probe's names and arithmetic, shared by the forward (`engine/taps.py`) and the evaluator.

A probe drops the given fraction of a pooling's highest- (`top`) or lowest- (`bottom`) scoring patches and
re-runs the forward; its logits are the tap `masked_logits@<side><fraction>/<pooling>`.
"""

from __future__ import annotations

import math
import re

MASKED = "masked_logits"
_MASKED_RE = re.compile(r"masked_logits@(top|bottom)(0\.[0-9]+)")


def masked_tap(side: str, fraction: float) -> str:
    """The tap name of the masking probe: `masked_logits@top0.25` (a valid store column name)."""
    if side not in ("top", "bottom") or not 0 < fraction < 1:
        raise ValueError(f"masked tap: side top|bottom and a fraction in (0, 1), got {side!r} {fraction!r}")
    text = f"{fraction:.6f}".rstrip("0")
    return f"{MASKED}@{side}{text}"


def parse_masked(tap: str) -> tuple[str, float] | None:
    """(side, fraction) of a masking-probe tap name, None for any other tap."""
    m = _MASKED_RE.fullmatch(tap)
    return (m.group(1), float(m.group(2))) if m else None


def drop_count(fraction: float, patches: int) -> int:
    """Patches the probe drops: fraction x patches rounded half up, at least one."""
    return max(1, math.floor(fraction * patches + 0.5))
