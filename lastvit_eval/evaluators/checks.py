"""Input validation shared by the feature evaluators, so every bad input fails the same clear way.

Each check raises InputError (exit code 2 at the CLI) with one line naming the array and the problem.
Features are converted to torch without copying where possible: a 1.28M x 768 bank must not double.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import InputError

ArrayLike = np.ndarray | torch.Tensor

_FINITE_CHUNK_ROWS = 65536  # bounded memory for the NaN/Inf scan over a large bank


def as_features(x: ArrayLike, name: str) -> torch.Tensor:
    """A non-empty 2-D float tensor with only finite values (dtype kept; no copy for numpy input)."""
    t = _as_tensor(x, name)
    if t.ndim != 2:
        raise InputError(f"{name}: expected a 2-D feature array [N, D], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name}: empty feature array, shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    for start in range(0, t.shape[0], _FINITE_CHUNK_ROWS):
        chunk = t[start : start + _FINITE_CHUNK_ROWS]
        # a NaN or Inf term makes any sum non-finite, so a finite sum clears the chunk (20x faster than
        # isfinite(chunk).all(), which writes a bool per value); a sum that overflowed on large finite
        # values falls through to the exact check
        if bool(torch.isfinite(chunk.sum())) or bool(torch.isfinite(chunk).all()):
            continue
        bad = start + int((~torch.isfinite(chunk)).any(dim=1).nonzero()[0, 0])
        raise InputError(f"{name}: non-finite value (NaN/Inf) in row {bad}")
    return t


def as_labels(y: ArrayLike, name: str, n: int) -> torch.Tensor:
    """A 1-D int64 tensor of length n with non-negative integer values."""
    t = _as_tensor(y, name)
    if t.ndim != 1:
        raise InputError(f"{name}: expected a 1-D label array, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise InputError(f"{name}: {t.shape[0]} labels for {n} feature rows")
    if n == 0:
        raise InputError(f"{name}: empty label array")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise InputError(f"{name}: labels must be integers")
    elif t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name}: labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if int(t.min()) < 0:
        raise InputError(f"{name}: negative label {int(t.min())}")
    return t


def same_width(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature width mismatch: {name_a} has D={a.shape[1]}, {name_b} has D={b.shape[1]}")


def resolve_num_classes(train_labels: torch.Tensor, num_classes: int | None) -> int:
    """Class count from the TRAINING labels (or given explicitly), never from the test labels."""
    seen = int(train_labels.max()) + 1
    if num_classes is None:
        return seen
    if num_classes < 1:
        raise InputError(f"num_classes must be positive, got {num_classes}")
    if seen > num_classes:
        raise InputError(f"train_labels: label {seen - 1} out of range for num_classes={num_classes}")
    return int(num_classes)


def labels_in_range(labels: torch.Tensor, num_classes: int, name: str) -> None:
    top = int(labels.max())
    if top >= num_classes:
        raise InputError(
            f"{name}: label {top} outside the {num_classes} training classes (0..{num_classes - 1})"
        )


def empty_classes(train_labels: torch.Tensor, num_classes: int) -> list[int]:
    """Classes with no training sample: reported, since a test sample of such a class cannot be won."""
    counts = torch.bincount(train_labels, minlength=num_classes)
    return [int(c) for c in (counts == 0).nonzero().flatten()]


def as_ids(ids: ArrayLike | list | None, n: int, name: str = "test_ids") -> list:
    """Per-sample ids for result rows; positional indices when none are given."""
    if ids is None:
        return list(range(n))
    ids = list(np.asarray(ids).tolist()) if not isinstance(ids, list) else ids
    if len(ids) != n:
        raise InputError(f"{name}: {len(ids)} ids for {n} samples")
    return ids


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when asked for or available, CPU otherwise; an unusable request is an input error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device: cannot parse {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} requested but CUDA is not available")
    return dev


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not an array ({e})") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InputError(f"{name}: not a numeric array (dtype {arr.dtype})")
    with warnings.catch_warnings():  # read-only memmaps are fine: nothing here writes to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)
