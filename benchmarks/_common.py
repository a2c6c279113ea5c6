"""Shared pieces of the benchmark scripts: data, model, machine description, ceilings, FLOP count.

Every figure a benchmark reports is meant to be read against something measured in the same process
(the bare forward, the matmul ceiling), because this project's machines are shared 2-core VMs whose
absolute speed changes from one day to the next. Imported as `_common` by the scripts in this folder
(`python benchmarks/<script>.py` puts this folder on sys.path).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lxml import etree
from PIL import Image

FALLBACK_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684")


def imagenet_wnids(k: int) -> list[str]:
    """`k` real ImageNet-1k wnids spread over the 1000 classes, so the 1000-way head's default map applies."""
    try:
        from timm.data import ImageNetInfo

        names = list(ImageNetInfo().label_names())
    except Exception:  # noqa: BLE001 - timm is optional; four known wnids do
        names = list(FALLBACK_WNIDS)
    step = max(1, len(names) // k)
    return [names[(i * step) % len(names)] for i in range(k)]


def make_dataset(root: Path, n: int, split: str = "val", classes: int = 4, boxes: bool = True, seed: int = 0) -> None:
    """`n` ImageNet-like JPEGs (500x375 to 640x480, a textured rectangle as the object) under
    root/<split>/<wnid>/, and with `boxes` one Pascal VOC XML per image under root/bbox/."""
    rng = np.random.default_rng(seed)
    wnids = imagenet_wnids(classes)
    for i in range(n):
        w, h = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400)][i % 5]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (1 + i % 3) + yy) % 256, (yy * 2 + i * 7) % 256, (xx + yy * 3) % 256], -1)
        img = (img * 0.6 + rng.integers(0, 100, (h, w, 3))).clip(0, 255).astype(np.uint8)
        bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
        # inside the central 20-80% of each side, so the box meets the 224 centre crop of every size above
        # (patch-hit drops no image and a later command finds every val image in the store)
        x0, y0 = int(rng.integers(w // 5, 4 * w // 5 - bw)), int(rng.integers(h // 5, 4 * h // 5 - bh))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, (bh, bw, 3))  # a textured object
        wnid = wnids[i % len(wnids)]
        stem = f"{split}_{i:05d}"
        (root / split / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / split / wnid / f"{stem}.JPEG", quality=90)
        if not boxes:
            continue
        ann = etree.Element("annotation")
        size = etree.SubElement(ann, "size")
        etree.SubElement(size, "width").text, etree.SubElement(size, "height").text = str(w), str(h)
        obj = etree.SubElement(ann, "object")
        etree.SubElement(obj, "name").text = wnid
        bb = etree.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x0 + bw, y0 + bh), strict=True):
            etree.SubElement(bb, tag).text = str(v)
        (root / "bbox").mkdir(exist_ok=True)
        (root / "bbox" / f"{stem}.xml").write_bytes(etree.tostring(ann))


def photo_like(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] uint8: smooth colour fields plus noise, so JPEGs weigh what real photos do (~100 KB at
    500x375) and decoding costs what it costs on real data."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80) - c)
                     for c in rng.uniform(0, 6, 3)], -1)
    return (base * 60 + 128 + rng.normal(0, 18, (h, w, 3))).clip(0, 255).astype(np.uint8)


def random_vit_b_16() -> torch.nn.Module:
    """torchvision's init leaves the class token at zero and LayerNorms at identity, which makes every
    image pick the same patch; perturb them so patch scores depend on the image content."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    model = vit_b_16().eval()
    with torch.no_grad():
        model.class_token.normal_(0, 1)
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("encoder.ln"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def save_d2_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """The torchvision weights wrapped as a detectron2 checkpoint (`{"model": {"model.<key>": ...}}`)."""
    torch.save({"model": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no avx512"
    except OSError:
        pass
    return "flags unknown"


def machine_line(threads: int) -> str:
    return (f"{cpu_model()} ({cpu_flags()}), {os.cpu_count()} logical CPUs, {threads} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def load_text(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    return (f"load average (1/5/15 min) {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f} at start, "
            f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} at end")


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_ceiling(n: int, dtype: torch.dtype, repeat: int = 3) -> float:
    """FLOP/s of the best of `repeat` square [n, n] @ [n, n] matmuls in `dtype` (after one warm-up)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    return 2 * n**3 / min(seconds(lambda: torch.mm(a, b)) for _ in range(repeat))


def linear_layers_rate(rows: int, width: int, mlp: int, dtype: torch.dtype, repeat: int = 3) -> float:
    """FLOP/s of a ViT block's four matrix products alone (qkv, attention output, fc1, fc2) on `rows` tokens,
    with nn.Linear's weight layout and bias, best of `repeat` after a warm-up: what the forward's GEMMs can
    reach at its own shapes, to read the forward against besides the square-matmul ceiling."""
    import torch.nn.functional as F

    shapes = [(width, 3 * width), (width, width), (width, mlp), (mlp, width)]  # (in, out)
    xs = {k: torch.randn(rows, k).to(dtype) for k in {width, mlp}}
    ws = [(torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)) for k, n in shapes]

    def once() -> None:
        for (k, _), (w, b) in zip(shapes, ws, strict=True):
            F.linear(xs[k], w, b)

    once()
    return sum(2 * rows * k * n for k, n in shapes) / min(seconds(once) for _ in range(repeat))


def forward_flops(backbone, batch: torch.Tensor) -> float:
    """FLOPs per image of `backbone.tokens`, counted by torch's FlopCounterMode.

    The count runs with the fused attention paths off (nn.MultiheadAttention's fast path and the CPU
    flash SDPA kernel are not seen by the counter, which would drop the attention matmuls); the
    arithmetic is the same whichever kernel runs it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
            backbone.tokens(batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
    return counter.get_total_flops() / len(batch)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max of several runs, as one table cell."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
