"""Reading untrusted checkpoint files: weights_only by default, pickles only with an explicit opt-in.

The container is told by the file's first bytes, not its name: a `.pth` renamed `.safetensors` (or a Git LFS
pointer, an HTML error page, a half-copied file) gets one line saying what the file really is and what to do,
instead of the parser's message about bytes it never expected.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # pickle protocol >= 2 starts with PROTO; torch's legacy format is such a pickle
SNIFF_BYTES = 1024
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own header limit


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


def _text_kind(head: bytes) -> str | None:
    """'text' (with a hint for the usual culprits) when the first bytes read as text, else None."""
    if not head or b"\x00" in head:
        return None
    for cut in range(4):  # the sniffed prefix may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    low = text.lstrip().lower()
    if low.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the weights; run `git lfs pull` to fetch the file"
    if low.startswith(("<!doctype html", "<html")):
        return "an HTML page (a failed download?), not a checkpoint; download the file again"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file, not a checkpoint (starts with {first!r})"


def sniff(path: Path) -> tuple[str, str]:
    """The file's real container from its first bytes: (kind, detail).

    kind is one of: empty, text, torch-zip, torchscript, zip, zip-truncated, pickle, safetensors,
    safetensors-truncated, unknown. detail is a human phrase used in messages.
    """
    size = path.stat().st_size
    if size == 0:
        return "empty", "empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        if head.startswith(ZIP_MAGIC):
            if not zipfile.is_zipfile(path):
                return "zip-truncated", f"a truncated zip archive ({size} bytes, no end-of-archive record)"
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any("/code/" in n or n.startswith("code/") for n in names[:200]):
                return "torchscript", "a TorchScript archive"
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return "torch-zip", "a PyTorch zip checkpoint"
            return "zip", f"a zip archive but not a PyTorch checkpoint (holds {', '.join(names[:3]) or 'nothing'})"
        if len(head) >= 9 and head[8:9] == b"{":
            (n,) = struct.unpack("<Q", head[:8])
            if n <= MAX_SAFETENSORS_HEADER:
                if 8 + n > size:
                    return "safetensors-truncated", (f"a truncated safetensors file (header of {n} bytes, "
                                                     f"file has {size})")
                f.seek(8)
                try:
                    header = json.loads(f.read(n))
                    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, IndexError):
                    return "unknown", "not a valid safetensors file (unreadable header)"
                if 8 + n + end > size:
                    return "safetensors-truncated", (f"a truncated safetensors file (tensors end at byte "
                                                     f"{8 + n + end}, file has {size})")
                return "safetensors", "a safetensors file"
    if head[0] == PICKLE_PROTO and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle", "a legacy PyTorch pickle checkpoint"
    text = _text_kind(head)
    if text is not None:
        return "text", text
    return "unknown", f"not a readable PyTorch checkpoint or safetensors file (first bytes {head[:8].hex(' ')})"


def _refuse_mismatch(path: Path, kind: str, detail: str) -> None:
    """One line for every file whose content cannot be what its name or our readers expect."""
    st = path.suffix == ".safetensors"
    if kind in ("empty", "zip-truncated", "safetensors-truncated"):
        raise InputError(f"{path}: is {detail}; download or copy it again")
    if kind in ("text", "zip", "unknown"):
        raise InputError(f"{path}: is {detail}")
    if st and kind in ("torch-zip", "pickle"):
        raise InputError(f"{path}: is {detail}, not safetensors; rename it to .pth")
    if st and kind == "torchscript":
        raise InputError(f"{path}: is {detail}, not safetensors; rename it to .pt")
    if not st and kind == "safetensors":
        raise InputError(f"{path}: is {detail}, not a PyTorch pickle checkpoint; rename it to .safetensors")


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
    kind, detail = sniff(path)
    _refuse_mismatch(path, kind, detail)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    if kind == "torchscript":
        if not trust:
            raise InputError(
                f"{path}: is a TorchScript archive, which runs code when loaded; "
                "re-run with --trust-checkpoint if you trust its source"
            )
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    what = "legacy PyTorch pickle checkpoint" if kind == "pickle" else "PyTorch checkpoint"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        glob = next((ln for ln in lines if "global" in ln.lower() and "unsupported" in ln.lower()), None)
        if glob is None:  # not a pickled object graph we refused, just bytes torch cannot parse
            detail = next((ln for ln in lines if ln.lower().startswith("unsupported")), lines[-1] if lines else "")
            raise InputError(f"{path}: not a readable {what}, truncated or corrupt ({detail})") from None
        if not trust:
            raise InputError(
                f"{path}: holds pickled Python objects that weights_only loading refuses ({glob}); "
                "re-run with --trust-checkpoint if you trust its source"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable {what}, truncated or corrupt ({msg})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is an input error
        raise InputError(f"{path}: could not be unpickled ({type(e).__name__}: {e})") from None
