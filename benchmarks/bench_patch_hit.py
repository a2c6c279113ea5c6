"""patch-hit throughput, read against what the same machine can do in the same run.

The figures that do not depend on the machine: the pipeline's end-to-end rate (image files -> decode
-> forward -> PiB -> report written, `execute` of a checked plan, no feature store) as a fraction of
the bare forward (the same model's `backbone.tokens` + pooling + patch scores on pre-decoded uint8
batches already in memory, same batch size and threads), and the bare forward's FLOP rate (FLOPs
counted by torch's FlopCounterMode) as a fraction of a square matmul timed in the same process. The
ratio to a naive per-image fp32 loop (the authors' style: PIL DataLoader, batch 1) is kept as a
secondary column: it follows the CPU's bf16/fp32 speed ratio, not the pipeline.

ViT-B/16 (torchvision, random init perturbed, saved as a detectron2 checkpoint: no download) on
generated ImageNet-like JPEGs with Pascal VOC boxes. Every measurement is repeated `--rounds` times,
the rounds interleave all variants so a noisy neighbour hits them alike; cells give min / median / max.
Writes results/bench_patch_hit.md.

    python benchmarks/bench_patch_hit.py [--images 96] [--batch-size 32] [--rounds 5] [--workers 0,0main,2]
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
import torch.nn.functional as F
from lxml import etree
from torchvision import transforms as T

from lastvit_eval.engine import runner
from lastvit_eval.engine.dataset import load_rgb
from lastvit_eval.engine.device import EngineSpec, autocast, with_low_precision_linears
from lastvit_eval.engine.store import StoreSpec
from lastvit_eval.models import load_model
from lastvit_eval.pipeline import execute
from lastvit_eval.plan import RunRequest, build_plan
from lastvit_eval.pooling import PoolingSpec, patch_scores, pool

GOAL_PIPELINE = 0.90  # end to end / bare forward
GOAL_FLOPS = 0.70  # bare forward FLOP/s / matmul ceiling
POOLING = PoolingSpec("cls")


def naive_loop(model, root: Path, limit: int) -> tuple[dict[str, bool], dict[str, int], float]:
    """One image at a time, the way a research script does it (fp32, float box arithmetic); the first
    `limit` images (it is the secondary column and the slowest variant)."""
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                                  (0.229, 0.224, 0.225))])
    ds = ImageFolder(str(root / "val"), transform=tf)
    ds.samples = ds.samples[:limit]
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


def request(ckpt: Path, root: Path, dtype: str, out: Path, batch: int, workers: int) -> RunRequest:
    return RunRequest(evaluators=("patch-hit",), checkpoint=str(ckpt), poolings=(POOLING,), root=root,
                      engine=EngineSpec(device="cpu", dtype=dtype, batch_size=batch, workers=workers),
                      store=StoreSpec(enabled=False), output_dir=out, overwrite=True, progress=False)


def pipeline(req: RunRequest, thread_decode: bool = True) -> tuple[float, float, int, dict[str, bool], dict[str, int]]:
    """(plan seconds, execute seconds, images, hits, top patches): plan = checks + model load + boxes."""
    t0 = time.perf_counter()
    plan = build_plan(req)
    t1 = time.perf_counter()
    runner.THREAD_DECODE = thread_decode
    try:
        out = execute(plan)
    finally:
        runner.THREAD_DECODE = True
    t2 = time.perf_counter()
    rows = out.results[POOLING.name][0].rows
    return (t1 - t0, t2 - t1, len(rows), dict(zip(rows["image_id"], rows["top1"].astype(bool), strict=True)),
            dict(zip(rows["image_id"], rows["top_patch"].astype(int), strict=True)))


def bare_forward(model, pixels: torch.Tensor, dtype: str, batch: int, fast=None) -> float:
    """Seconds for normalize + tokens + pooling + patch scores over uint8 batches already in memory.

    `fast`: the module whose tokens the engine runs for this dtype (bf16 on CPU: linear weights converted
    once, `with_low_precision_linears`), made before the clock starts."""
    bb, t = model.backbone, model.transform
    tokens_fn = (fast or bb).tokens
    prefix = bb.num_prefix_tokens
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(pixels), batch):
            x = t.normalize(pixels[s:s + batch])
            with autocast(x.device, dtype):
                tokens = tokens_fn(x)
            tokens = tokens.float()
            p = pool(tokens, prefix, POOLING)
            patch_scores(tokens[:, prefix:], p.token)
    return time.perf_counter() - t0


def agreement(a_hits, a_tops, b_hits, b_tops, name: str) -> str:
    common_ids = sorted(set(a_hits) & set(b_hits))
    n = len(common_ids)
    same_top = [k for k in common_ids if a_tops[k] == b_tops[k]]
    same_hit = sum(a_hits[k] == b_hits[k] for k in common_ids)
    geometry = sum(a_hits[k] != b_hits[k] for k in same_top)
    return (f"hits {same_hit}/{n} same as {name}; top patch {len(same_top)}/{n} same; "
            f"{geometry} differ only by box geometry")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,0main,2", help="decode workers of the pipeline's DataLoader, comma-separated"
                    " (0: decode in a thread beside the forward, the default on <= 2 CPUs; 0main: on the main thread, "
                    "between forwards, as before): "
                    "one pipeline variant each (2 = the CLI default on a 2-CPU machine)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--naive-images", type=int, default=32, help="images the naive loop runs on")
    ap.add_argument("--matmul", type=int, default=4096, help="side of the square matmul ceiling")
    ap.add_argument("--out", type=Path, default=Path("results/bench_patch_hit.md"))
    args = ap.parse_args(argv)
    workers = args.workers.split(",")
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    dtypes = ("fp32", "bf16")
    load_start = common.load_average()
    runs: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "imagenet"
        common.make_dataset(root, args.images)
        ref = common.random_vit_b_16()
        ckpt = common.save_d2_checkpoint(ref, tmp / "vit_b_16_d2.pth")
        # the images the pipeline forwards (patch-hit keeps those whose box meets the crop), pre-decoded
        plan = build_plan(request(ckpt, root, "fp32", tmp / "probe", args.batch_size, 0))
        paths = [plan.test.paths[i] for i in plan.test_positions()]
        model = load_model(ckpt)
        pixels = torch.stack([model.transform.pixels(load_rgb(p)) for p in paths])
        flops = common.forward_flops(model.backbone, model.transform.normalize(pixels[:2]))
        fast = {"fp32": None, "bf16": with_low_precision_linears(model.backbone, "bf16")}  # what the engine runs
        bare_forward(model, pixels[:2], "bf16", 2, fast["bf16"])  # one-time thread-pool and kernel set-up
        bare_forward(model, pixels[:2], "fp32", 2)
        last: dict[str, tuple] = {}
        for r in range(args.rounds):
            # pairs measured back to back, their order alternating between rounds, so that a load change
            # on the shared machine falls on both sides of a ratio alike
            for dtype in dtypes:
                torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
                log(f"round {r + 1}/{args.rounds}: {dtype} ceiling, bare forward, pipeline ...")
                order = ["ceiling", "bare", *workers]
                for step in (order if r % 2 == 0 else order[::-1]):
                    if step == "ceiling":
                        add(f"ceiling/{dtype}", common.matmul_ceiling(args.matmul, torch_dtype))
                        a = model.arch
                        add(f"gemms/{dtype}", common.linear_layers_rate(
                            args.batch_size * (a.grid[0] * a.grid[1] + a.num_prefix_tokens), a.width, a.mlp_dim,
                            torch_dtype))
                    elif step == "bare":
                        add(f"bare/{dtype}", len(paths) / bare_forward(model, pixels, dtype, args.batch_size,
                                                                      fast[dtype]))
                    else:
                        plan_s, exec_s, n_eval, hits, tops = pipeline(
                            request(ckpt, root, dtype, tmp / f"out-{dtype}-{r}-{step}", args.batch_size,
                                    int(step.removesuffix("main"))), thread_decode=not step.endswith("main"))
                        add(f"pipe/{dtype}/w{step}", n_eval / exec_s)
                        add(f"plan/{dtype}/w{step}", plan_s)
                        last[dtype] = (hits, tops)
                for w in workers:
                    add(f"ratio/{dtype}/w{w}", runs[f"pipe/{dtype}/w{w}"][-1] / runs[f"bare/{dtype}"][-1])
                add(f"flopfrac/{dtype}", runs[f"bare/{dtype}"][-1] * flops / runs[f"ceiling/{dtype}"][-1])
            log(f"round {r + 1}/{args.rounds}: naive loop ...")
            naive_hits, naive_tops, naive_s = naive_loop(ref, root, args.naive_images)
            add("naive", len(naive_hits) / naive_s)
    load_end = common.load_average()

    n = len(paths)
    pct = "{:.0%}"
    best = {k: max(v) for k, v in runs.items()}
    lines = [
        "## patch-hit end to end, read against the bare forward and the matmul ceiling",
        "",
        f"ViT-B/16 (torchvision, random init perturbed, detectron2 checkpoint), {args.images} generated JPEGs "
        f"(500x375-640x480) of which patch-hit keeps {n} (box inside the 224 crop), CLS pooling, `any` rule, "
        f"batch {args.batch_size}, no feature store (`--no-cache`); the pipeline runs once per number of DataLoader "
        f"decode workers ({args.workers}). "
        f"{args.rounds} rounds; in each, per dtype, the matmul ceiling, the bare forward and the pipeline run back "
        "to back (order reversed every other round) and the two fractions are taken within the round; cells "
        f"are min / median / max over the rounds. The naive loop runs on the first {args.naive_images} images.",
        "",
        f"Machine: {common.machine_line(args.threads)}; {common.load_text(load_start, load_end)}.",
        f"Command: `python {' '.join(['benchmarks/bench_patch_hit.py', *(argv if argv is not None else sys.argv[1:])])}`.",
        f"FLOPs per image (FlopCounterMode, `backbone.tokens` at 224): {flops / 1e9:.2f} GFLOP.",
        "",
        "| dtype | decode workers | pipeline img/s | bare forward img/s | **pipeline / bare** (goal >= 90%) | "
        f"matmul ceiling {args.matmul}^3 GFLOP/s | forward GFLOP/s | **forward / ceiling** (goal >= 70%) | "
        "plan s (checks, model load) | vs naive fp32 loop (secondary) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype in dtypes:
        fwd_gflops = [v * flops / 1e9 for v in runs[f"bare/{dtype}"]]
        for w in workers:
            key = f"{dtype}/w{w}"
            vs_naive = [p / q for p, q in zip(runs[f"pipe/{key}"], runs["naive"], strict=True)]
            lines.append(
                f"| {dtype} | {w} | {common.spread(runs[f'pipe/{key}'])} | {common.spread(runs[f'bare/{dtype}'])} | "
                f"{common.spread(runs[f'ratio/{key}'], pct)} | "
                f"{common.spread([v / 1e9 for v in runs[f'ceiling/{dtype}']], '{:.0f}')} | "
                f"{common.spread(fwd_gflops, '{:.0f}')} | {common.spread(runs[f'flopfrac/{dtype}'], pct)} | "
                f"{common.spread(runs[f'plan/{key}'])} | {common.spread(vs_naive, '{:.2f}x')} |")
    lines += [
        f"| naive loop (fp32, batch 1, {args.naive_images} images) | 1 | {common.spread(runs['naive'])} | | | | | | | "
        "1.00x |",
        "",
        "Best of the rounds (each rate's best, against the best ceiling: a neighbour can slow a run, not speed "
        "it up):",
        "",
    ]
    verdicts = []
    for dtype in dtypes:
        flop_frac = best[f"bare/{dtype}"] * flops / best[f"ceiling/{dtype}"]
        verdicts.append(
            f"- {dtype} forward {best[f'bare/{dtype}'] * flops / 1e9:.0f} GFLOP/s = **{flop_frac:.0%}** of the "
            f"{dtype} matmul ceiling ({best[f'ceiling/{dtype}'] / 1e9:.0f} GFLOP/s; per-round median "
            f"{statistics.median(runs[f'flopfrac/{dtype}']):.0%}): goal >= 70% "
            f"**{'met' if flop_frac >= GOAL_FLOPS else 'not met'}**.")
        for w in workers:
            key = f"{dtype}/w{w}"
            pipe_frac = best[f"pipe/{key}"] / best[f"bare/{dtype}"]
            verdicts.append(
                f"- {dtype}, {w} decode worker(s): pipeline {best[f'pipe/{key}']:.2f} img/s = **{pipe_frac:.0%}** of "
                f"the bare forward ({best[f'bare/{dtype}']:.2f} img/s; per-round median "
                f"{statistics.median(runs[f'ratio/{key}']):.0%}): goal >= 90% "
                f"**{'met' if pipe_frac >= GOAL_PIPELINE else 'not met'}**; "
                f"{best[f'pipe/{key}'] / best['naive']:.2f}x the naive fp32 loop.")
    lines += verdicts
    lines += ["", "The forward's own matrix products timed alone (a block's qkv, attention output, fc1 and fc2 as "
              f"nn.Linear at batch {args.batch_size}, FLOP-weighted; best of the rounds), against the ceiling and "
              "against the forward:", ""]
    for dtype in dtypes:
        g = best[f"gemms/{dtype}"]
        lines.append(f"- {dtype}: {g / 1e9:.0f} GFLOP/s = {g / best[f'ceiling/{dtype}']:.0%} of the ceiling; the "
                     f"forward runs at {best[f'bare/{dtype}'] * flops / g:.0%} of its own GEMMs' rate (the rest of its "
                     "time: attention, softmax, LayerNorm, GELU, residual adds and casts).")
    lines += [
        "",
        "Agreement (last round): fp32 " + agreement(naive_hits, naive_tops, *last["fp32"], "naive loop")
        + "; bf16 " + agreement(*last["fp32"], *last["bf16"], "fp32") + ". The naive loop maps boxes with float "
        "arithmetic, lastvit-eval with torchvision's rounding and pixel-centre membership (README, Geometry), "
        "so a hit can differ on the same top patch. PiB values themselves mean nothing here (random weights, "
        "random-texture objects).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
