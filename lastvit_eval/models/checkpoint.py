"""Reading untrusted checkpoint files: weights_only by default, pickles only with an explicit opt-in."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_torchscript(path: Path) -> bool:
    """TorchScript archives (e.g. OpenAI's CLIP .pt files) are zip files with a code/ folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist()[:200])


def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """Load a checkpoint file's raw object onto the CPU.

    `.safetensors` needs no trust. Pickle files go through `torch.load(weights_only=True)`; a payload
    with arbitrary Python objects (an argparse Namespace, a custom class) is refused unless `trust`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    if is_torchscript(path):
        if not trust:
            raise InputError(
                f"{path}: is a TorchScript archive, which runs code when loaded; "
                "re-run with --trust-checkpoint if you trust its source"
            )
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = next((ln for ln in lines if "global" in ln.lower() and "unsupported" in ln.lower()), None)
        if glob is None:  # not a pickled object graph we refused, just bytes torch cannot parse
            detail = next((ln for ln in lines if ln.lower().startswith("unsupported")), lines[-1] if lines else "")
            raise InputError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
        if not trust:
            raise InputError(
                f"{path}: holds pickled Python objects that weights_only loading refuses ({glob}); "
                "re-run with --trust-checkpoint if you trust its source"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is an input error
        raise InputError(f"{path}: could not be unpickled ({type(e).__name__}: {e})") from None
