"""corloc throughput per method (last-votes, lost, dino-seg) at LOST's full resolution, and the share of wall time
spent outside the model's forward.

Data: `--images` generated VOC-format images (the demo generator `lastvit_eval/demo/synth.py`: shapes on textured
backgrounds, 96-200 px short side, JPEG + VOC XML in a VOC2007 devkit layout). Model: ViT-S/16 in DINO's
backbone format (timm layout, random init with perturbed norms; no download). Each method is one `execute` of a
checked plan (`corloc --resolution full`, no feature store: full-resolution taps are ragged and never stored),
batch 1 as LOST. "Forward" is the time inside `engine.taps.forward_taps` (the backbone plus the taps: LAST
pooling, the last block's keys / CLS attention), measured by wrapping it; "outside" is everything else of
`execute`: JPEG decode, normalise + pad, the box per image (LOST / DINO-seg / vote map), CorLoc, writing
results. Rounds interleave the methods; cells give min / median / max. Writes results/bench_corloc.md.

    python benchmarks/bench_corloc.py [--images 500] [--rounds 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as common
import torch

from lastvit_eval.demo.make_data import voc_xml
from lastvit_eval.demo.synth import render
from lastvit_eval.engine.device import EngineSpec
from lastvit_eval.engine.store import StoreSpec
from lastvit_eval.evaluators.corloc import CorLocOptions
from lastvit_eval.pipeline import execute
from lastvit_eval.plan import RunRequest, build_plan

GOAL_OUTSIDE = 0.15
METHODS = ("last-votes", "lost", "dino-seg")


def make_devkit(root: Path, n: int) -> list[tuple[int, int]]:
    from PIL import Image

    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids, sizes = [], []
    for i in range(n):
        sample = render(0, "val", i)
        image_id = f"{i:06d}"
        Image.fromarray(sample.image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
        (base / "Annotations" / f"{image_id}.xml").write_bytes(voc_xml(image_id, "VOC2007", sample))
        ids.append(image_id)
        sizes.append(sample.image.shape[:2])
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return sizes


def vit_s16_dino(path: Path) -> Path:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=0).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name == "cls_token":
                p.add_(torch.randn_like(p) * 0.2)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in m.state_dict().items()}}, path)
    return path


def run_once(ckpt: Path, root: Path, out: Path, method: str) -> dict:
    import lastvit_eval.engine.extract as ex

    inside = [0.0]
    real = ex.forward_taps

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            inside[0] += time.perf_counter() - t0

    req = RunRequest(evaluators=("corloc",), options={"corloc": CorLocOptions(method=method, resolution="full",
                                                                               dinoseg_head=4)},
                     checkpoint=str(ckpt), voc_root=root, year="2007", engine=EngineSpec(device="cpu", workers=0),
                     store=StoreSpec(enabled=False), output_dir=out, overwrite=True, progress=False)
    t0 = time.perf_counter()
    plan = build_plan(req)
    t_plan = time.perf_counter() - t0
    ex.forward_taps = timed
    try:
        t0 = time.perf_counter()
        res = execute(plan)
        wall = time.perf_counter() - t0
    finally:
        ex.forward_taps = real
    n = res.results[plan.poolings[0].name][0].metrics["corloc.hit"].n
    return {"wall": wall, "forward": inside[0], "plan": t_plan, "images": n,
            "corloc": res.results[plan.poolings[0].name][0].metrics["corloc.hit"].value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)  # ~6 min at load 9 on 2 cores; results: --rounds 2
    ap.add_argument("--threads", type=int, default=1)  # a shared 2-core VM: 2 threads wait on each other
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bench_corloc.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = make_devkit(tmp / "voc", args.images)
        ckpt = vit_s16_dino(tmp / "vit_s16_dino.pth")
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for r in range(args.rounds):
            for m in METHODS:
                runs[m].append(run_once(ckpt, tmp / "voc", tmp / f"out-{m}", m))
                x = runs[m][-1]
                print(f"round {r + 1} {m}: {x['images'] / x['wall']:.2f} img/s, outside the forward "
                      f"{1 - x['forward'] / x['wall']:.1%}", file=sys.stderr, flush=True)
    load1 = common.load_average()
    patches = [((h + 15) // 16) * ((w + 15) // 16) for h, w in sizes]
    lines = ["# corloc: images/s per method at full resolution, share of time outside the forward", "",
             f"{args.images} generated VOC-format images (demo generator, {min(min(s) for s in sizes)}-"
             f"{max(max(s) for s in sizes)} px sides, {statistics.median(patches):.0f} patches median after "
             f"padding to 16), ViT-S/16 in DINO format (random init, norms perturbed), `corloc --resolution full` "
             f"(LOST's protocol: whole image padded to the patch, batch 1), CPU fp32, no feature store, "
             f"{args.rounds} rounds interleaving the methods (min / median / max).", "",
             f"Machine: {common.machine_line(args.threads)}; {common.load_text(load0, load1)}.", "",
             "| method | images/s | forward s | outside the forward (goal < 15%) | plan s | CorLoc (random weights) |",
             "|---|---|---|---|---|---|"]
    for m in METHODS:
        xs = runs[m]
        lines.append(f"| {m} | {common.spread([x['images'] / x['wall'] for x in xs])} | "
                     f"{common.spread([x['forward'] for x in xs])} | "
                     f"{common.spread([100 * (1 - x['forward'] / x['wall']) for x in xs], '{:.1f}%')} | "
                     f"{common.spread([x['plan'] for x in xs])} | {xs[0]['corloc']:.1f} |")
    lines += ["", "Forward = time inside `forward_taps` (backbone + taps, including recomputing the last block's "
              "q/k/v for keys / CLS attention); outside = the rest of `execute`: JPEG decode, normalise and pad, the "
              "box per image, CorLoc, results written. Plan (VOC XML, image sizes, checkpoint load) is reported "
              "apart. CorLoc of random weights is no model quality figure."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
