"""Train the two bundled demo checkpoints: one tiny ViT with CLS pooling, one with LAST pooling.

    python -m lastvit_eval.demo.train_tiny --out lastvit_eval/demo/checkpoints [--seed 0]

Both are torchvision VisionTransformers of the same size (112 px, 8 px patches: a 14 x 14 grid like
ViT-B/16 at 224), trained from the same seed on a stream drawn on the fly by the demo generator (stream
"fit", never the shipped train/val images), JPEG-compressed like the shipped files. The CLS model is the
plain torchvision forward; the LAST model pools the final-LayerNorm patch tokens with
`pooling.pool(..., PoolingSpec("last", topk=1))` before `model.heads`, as the paper's label-supervised
code does. Weights are stored as fp16 in the detectron2 layout of the released `ViT_190k.pth`
(`{"model": {"model.<torchvision key>": tensor}}`) so the tool loads them like the real thing.
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.models import VisionTransformer

from ..pooling import PoolingSpec, pool
from .make_data import JPEG_QUALITY
from .synth import CLASSES, render

IMAGE_SIZE, RESIZE = 112, 128
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCH = dict(image_size=IMAGE_SIZE, patch_size=8, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=384)
POOLINGS = {"cls": PoolingSpec("cls"), "last": PoolingSpec("last", topk=1)}
POOL_CROP = 120  # stored training crop; random 112 crops inside it are the augmentation


def build_vit(num_classes: int = len(CLASSES)) -> VisionTransformer:
    """The demo architecture, shared by training, the tests and the tool."""
    return VisionTransformer(num_classes=num_classes, **ARCH)


def eval_transform() -> transforms.Compose:
    """Resize(128, bilinear, short side) + CenterCrop(112) + ImageNet mean/std."""
    return transforms.Compose([
        transforms.Resize(RESIZE, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(IMAGE_SIZE), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def logits(model: VisionTransformer, x: torch.Tensor, spec: PoolingSpec) -> torch.Tensor:
    """Class logits with the given pooling of the final normalized tokens."""
    if spec.kind == "cls":
        return model(x)
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    return model.heads(pool(model.encoder(tokens), 1, spec).token)


def _fit_image(args: tuple[int, int]) -> np.ndarray:
    """One training-stream image, JPEG round-tripped, resized to short side 128, centre 120 crop."""
    seed, index = args
    buf = io.BytesIO()
    Image.fromarray(render(seed, "fit", index).image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    img = Image.open(buf).convert("RGB")
    img = transforms.CenterCrop(POOL_CROP)(transforms.Resize(RESIZE)(img))
    return np.asarray(img).transpose(2, 0, 1).copy()


def make_pool(n: int, seed: int, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The training stream as uint8 [n, 3, 120, 120] plus labels (index % classes)."""
    with Pool(workers) as p:
        images = p.map(_fit_image, [(seed, i) for i in range(n)], chunksize=64)
    return torch.from_numpy(np.stack(images)), torch.arange(n) % len(CLASSES)


def _batch(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 112 crop + horizontal flip per image, then ImageNet normalization."""
    offsets = torch.randint(0, POOL_CROP - IMAGE_SIZE + 1, (len(images), 2), generator=gen)
    flips = torch.rand(len(images), generator=gen) < 0.5
    crops = [im[:, y:y + IMAGE_SIZE, x:x + IMAGE_SIZE]
             for im, (y, x) in zip(images, offsets.tolist(), strict=True)]
    x = torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips.tolist(), strict=True)])
    x = x.float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train(images: torch.Tensor, labels: torch.Tensor, spec: PoolingSpec, steps: int, seed: int,
          batch: int = 64, lr: float = 1e-3) -> VisionTransformer:
    """AdamW + warmup/cosine, bf16 autocast on CPU with fp32 master weights."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_vit()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = _batch(images[idx], gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = logits(model, x, spec)
        loss = F.cross_entropy(out.float(), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  [{spec.name}] step {step:4d}/{steps} loss {loss.item():.3f}", flush=True)
    return model.eval()


def save_checkpoint(model: VisionTransformer, path: Path) -> None:
    """fp16 tensors in the detectron2 layout; loadable with torch.load(weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"model." + k: v.half() for k, v in model.state_dict().items()}}, path)


def load_checkpoint(path: Path) -> VisionTransformer:
    """Inverse of save_checkpoint: strip `model.` and load strictly (fp16 values upcast to fp32)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model = build_vit()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    return model.eval()


@torch.no_grad()
def val_accuracy(model: VisionTransformer, spec: PoolingSpec, data: Path) -> tuple[float, int]:
    """Top-1 on the shipped val split (meta/val.txt), with the tool's preprocessing."""
    wnids = [line.split("\t")[1] for line in (data / "meta" / "classes.tsv").read_text().splitlines()]
    rows = [line.split() for line in (data / "meta" / "val.txt").read_text().splitlines()]
    tf = eval_transform()
    x = torch.stack([tf(Image.open(data / "val" / wnids[int(lab)] / name).convert("RGB"))
                     for name, lab in rows])
    y = torch.tensor([int(lab) for _, lab in rows])
    pred = torch.cat([logits(model, xb, spec).argmax(1) for xb in x.split(64)])
    return (pred == y).float().mean().item(), len(y)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent
    parser.add_argument("--out", type=Path, default=here / "checkpoints")
    parser.add_argument("--data", type=Path, default=here / "data", help="shipped data (val accuracy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pool-size", type=int, default=8000, help="training-stream images")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 avoids oversubscription when other jobs share the CPU)")
    parser.add_argument("--report", type=Path, default=Path("results") / "demo_training.md")
    args = parser.parse_args(argv)
    command = "python -m lastvit_eval.demo.train_tiny " + shlex.join(sys.argv[1:] if argv is None else argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    images, labels = make_pool(args.pool_size, args.seed)
    gen_s = time.time() - t0
    print(f"training stream: {len(images)} images in {gen_s:.0f} s", flush=True)
    rows = []
    for name, spec in POOLINGS.items():
        t0 = time.time()
        model = train(images, labels, spec, args.steps, args.seed)
        wall = time.time() - t0
        path = args.out / f"tiny_{name}.pth"
        save_checkpoint(model, path)
        acc, n = val_accuracy(load_checkpoint(path), spec, args.data)
        rows.append((path.name, spec.name, args.seed, args.steps, f"{wall:.0f}", f"{100 * acc:.1f} (n={n})",
                     f"{path.stat().st_size / 1e6:.2f}"))

    header = ("file", "pooling", "seed", "steps (batch 64)", "train wall s", "val top-1 %", "size MB")
    lines = [f"# Demo checkpoints\n\nCommand: `{command}`\n",
             f"Training stream: {len(images)} generated images (stream `fit`, seed {args.seed}), "
             f"generated in {gen_s:.0f} s; training on {torch.get_num_threads()} torch CPU thread(s); "
             f"architecture {ARCH}; bf16 autocast, AdamW lr 1e-3, fp16 storage. "
             "Val = the shipped `demo/data/val` split, Resize(128) + CenterCrop(112).\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
