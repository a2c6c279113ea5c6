"""patch-hit throughput: lastvit-eval (batched, fp32 / bf16) vs a naive loop like the authors' script.

The naive loop: torchvision ViT-B/16 in fp32, a PIL DataLoader (Resize 256, CenterCrop 224, ToTensor,
Normalize), one image at a time, CLS-token cosine with every patch, arg-max patch checked against the
box with float arithmetic. Both run on the same generated ImageNet-like JPEGs (random-init ViT-B/16
weights saved as a detectron2 checkpoint: no download). Writes results/bench_patch_hit.md.

    python benchmarks/bench_patch_hit.py [--images 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lxml import etree
from PIL import Image
from torchvision import transforms as T
from torchvision.models import vit_b_16

from lastvit_eval.data.filters import FilterSpec
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.models import load_model
from lastvit_eval.pipelines.patch_hit import run_patch_hit
from lastvit_eval.pooling import PoolingSpec


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400)][i % 5]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (1 + i % 3) + yy) % 256, (yy * 2 + i * 7) % 256, (xx + yy * 3) % 256], -1)
        img = (img * 0.6 + rng.integers(0, 100, (h, w, 3))).clip(0, 255).astype(np.uint8)
        bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
        x0, y0 = int(rng.integers(w // 10, w - bw)), int(rng.integers(h // 10, h - bh))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, (bh, bw, 3))  # a textured object
        wnid = f"n0000000{i % 4}"
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "val" / wnid / f"img_{i:05d}.JPEG", quality=90)
        ann = etree.Element("annotation")
        size = etree.SubElement(ann, "size")
        etree.SubElement(size, "width").text, etree.SubElement(size, "height").text = str(w), str(h)
        obj = etree.SubElement(ann, "object")
        etree.SubElement(obj, "name").text = wnid
        bb = etree.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x0 + bw, y0 + bh), strict=True):
            etree.SubElement(bb, tag).text = str(v)
        (root / "bbox").mkdir(exist_ok=True)
        (root / "bbox" / f"img_{i:05d}.xml").write_bytes(etree.tostring(ann))


def random_vit_b_16() -> torch.nn.Module:
    """torchvision's init leaves the class token at zero and LayerNorms at identity, which makes every
    image pick the same patch; perturb them so patch scores depend on the image content."""
    torch.manual_seed(0)
    model = vit_b_16().eval()
    with torch.no_grad():
        model.class_token.normal_(0, 1)
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("encoder.ln"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def naive_loop(model, root: Path) -> tuple[dict[str, bool], dict[str, int], float]:
    """One image at a time, the way a research script does it."""
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                                  (0.229, 0.224, 0.225))])
    ds = ImageFolder(str(root / "val"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=1)
    hits, tops = {}, {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for (x, _), (path, _) in zip(loader, ds.samples, strict=True):
            image_id = Path(path).stem
            feats = model._process_input(x)
            feats = torch.cat([model.class_token.expand(1, -1, -1), feats], 1)
            tokens = model.encoder(feats)
            sim = F.cosine_similarity(tokens[:, 1:], tokens[:, :1], dim=-1)[0]
            top = int(sim.argmax())
            tops[image_id] = top
            r, c = divmod(top, 14)
            tree = etree.parse(str(root / "bbox" / f"{image_id}.xml"))
            w, h = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
            x0, y0, x1, y1 = (float(tree.findtext(f"object/bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            s = 256 / min(w, h)
            ox, oy = (w * s - 224) / 2, (h * s - 224) / 2
            bx0, bx1, by0, by1 = x0 * s - ox, x1 * s - ox, y0 * s - oy, y1 * s - oy
            hits[image_id] = bx0 < (c + 1) * 16 and bx1 > c * 16 and by0 < (r + 1) * 16 and by1 > r * 16
    return hits, tops, time.perf_counter() - t0


def ours(ckpt: Path, root: Path, dtype: str, out: Path, batch: int, workers: int):
    model = load_model(ckpt)
    t0 = time.perf_counter()
    res = run_patch_hit(model, root, None, FilterSpec(), PoolingSpec("cls"), "any",
                        EngineSpec(dtype=dtype, batch_size=batch, workers=workers), out, progress=False)
    seconds = time.perf_counter() - t0
    rows = res.result.rows
    return (dict(zip(rows["image_id"], rows["top1"].astype(bool), strict=True)),
            dict(zip(rows["image_id"], rows["top_patch"].astype(int), strict=True)), seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench_patch_hit.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "imagenet", args.images)
        ref = random_vit_b_16()
        ckpt = tmp / "vit_b_16_d2.pth"
        torch.save({"model": {"model." + k: v for k, v in ref.state_dict().items()}}, ckpt)
        naive_hits, naive_tops, naive_s = naive_loop(ref, tmp / "imagenet")
        fp32_hits, fp32_tops, fp32_s = ours(ckpt, tmp / "imagenet", "fp32", tmp / "r32", args.batch_size, args.workers)
        bf16_hits, bf16_tops, bf16_s = ours(ckpt, tmp / "imagenet", "bf16", tmp / "r16", args.batch_size, args.workers)
    n = len(naive_hits)
    assert set(naive_hits) == set(fp32_hits) == set(bf16_hits), "image sets differ"

    def ratio(h):
        return 100.0 * sum(h.values()) / n

    def agree(a_hits, a_tops, b_hits, b_tops, name):
        same_top = [k for k in a_hits if a_tops[k] == b_tops[k]]
        same_hit = sum(a_hits[k] == b_hits[k] for k in a_hits)
        geometry = sum(a_hits[k] != b_hits[k] for k in same_top)
        return (f"hits {same_hit}/{n} same as {name}; top patch {len(same_top)}/{n} same; "
                f"{geometry} differ only by box geometry")

    rows = [
        ("naive loop (fp32, batch 1)", naive_s, ratio(naive_hits), "-"),
        (f"lastvit-eval fp32 (batch {args.batch_size})", fp32_s, ratio(fp32_hits),
         agree(naive_hits, naive_tops, fp32_hits, fp32_tops, "naive")),
        (f"lastvit-eval bf16 (batch {args.batch_size})", bf16_s, ratio(bf16_hits),
         agree(fp32_hits, fp32_tops, bf16_hits, bf16_tops, "fp32")),
    ]
    lines = [
        "## patch-hit end to end: lastvit-eval vs a naive per-image loop",
        "",
        f"ViT-B/16 (torchvision, random init, detectron2 checkpoint), {n} generated JPEGs (500x375-640x480), "
        f"CLS pooling, `any` rule; {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}. Command: `python {' '.join(sys.argv)}`.",
        "",
        "| pipeline | seconds | images/s | speed-up vs naive | PiB top-1 (%) | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name, s, r, agree in rows:
        lines.append(f"| {name} | {s:.1f} | {n / s:.2f} | {naive_s / s:.2f}x | {r:.1f} | {agree} |")
    lines += ["", "Goals (issue 2): bf16 >= 4x the naive fp32 loop with PiB within 1 point of fp32; "
              "fp32 >= 1.1x with identical hits.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
