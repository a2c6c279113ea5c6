"""Engine throughput on this machine: where the time of one image goes, and how close forward gets to
the hardware's own matmul ceiling.

ViT-B/16 at 224 (torchvision `vit_b_16()`, random init: nothing is downloaded) over generated JPEGs of
ImageNet-like size (~500x375). Stages are timed separately (read file bytes, PIL decode, resize + crop,
forward fp32 / bf16), then end to end through `extract` (DataLoader workers, cache off), then a second
evaluator reading the stored features (the per-image feature store). FLOP/s use the FLOPs per image
counted by torch's FlopCounterMode; the ceiling is a 4096^3 matmul timed in the same run. Writes
results/bench_engine.md.

    PYTHONPATH=. python benchmarks/bench_engine.py [--quick] [--images N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import _common as common
import numpy as np
import torch
from PIL import Image
from torchvision.models import vit_b_16

from lastvit_eval.data.transform import torchvision_vit
from lastvit_eval.engine.dataset import load_rgb
from lastvit_eval.engine.device import EngineSpec, autocast
from lastvit_eval.engine.extract import extract
from lastvit_eval.engine.store import StoreSpec
from lastvit_eval.engine.taps import TapRequest
from lastvit_eval.evaluators import patch_hit
from lastvit_eval.models.base import ArchSpec, KeyReport, LoadedModel
from lastvit_eval.models.torchvision_vit import TorchvisionBackbone
from lastvit_eval.pooling import PoolingSpec


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Smooth colour fields plus noise and edges: JPEG sizes close to real photos (~100 KB at 500x375)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        img = common.photo_like(rng, w, h)
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 255, 3)
        p = folder / f"img_{i:04d}.JPEG"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def vit_b16_model() -> LoadedModel:
    torch.manual_seed(0)
    m = vit_b_16().eval().requires_grad_(False)
    arch = ArchSpec(family="torchvision", name="vit_b_16", image_size=224, patch_size=16, width=768, depth=12,
                    heads=12, mlp_dim=3072, num_classes=1000)
    return LoadedModel(backbone=TorchvisionBackbone(m, has_head=True), arch=arch, transform=torchvision_vit(224),
                       keys=KeyReport(format="random init"), source="torchvision:vit_b_16", sha256=None,
                       params=sum(p.numel() for p in m.parameters()))


def timed(fn, repeat: int = 1) -> float:
    """Best (minimum) seconds of `repeat` calls: on a shared machine, the least-disturbed run."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def gemm_like_vit(batch: int, dtype: torch.dtype, repeat: int) -> float:
    """The MLP's first GEMM at ViT-B/16 shapes: [B*197, 768] x [768, 3072]."""
    a = torch.randn(batch * 197, 768).to(dtype)
    w = torch.randn(3072, 768).to(dtype)
    torch.nn.functional.linear(a, w)
    return 2 * a.shape[0] * 768 * 3072 / timed(lambda: torch.nn.functional.linear(a, w), repeat)


def profile_split(bb, x: torch.Tensor) -> dict[str, float]:
    """Share of one bf16-autocast forward's CPU time by kind of op: where the time below the ceiling goes."""
    from torch.profiler import ProfilerActivity, profile

    groups = {"GEMM (addmm/mm/bmm/linear)": ("aten::addmm", "aten::mm", "aten::bmm"),
              "dtype casts (autocast copy_)": ("aten::copy_",),
              "softmax / GELU / LayerNorm / add": ("aten::_softmax", "aten::gelu", "aten::native_layer_norm",
                                                   "aten::add", "aten::add_"),
              "cat / qkv reshuffle": ("aten::cat", "aten::_transform_bias_rescale_qkv")}
    with torch.inference_mode(), autocast(x.device, "bf16"), profile(activities=[ProfilerActivity.CPU]) as prof:
        bb.tokens(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    out = {g: sum(e.self_cpu_time_total for e in events if e.key in names) / total for g, names in groups.items()}
    out["other"] = 1 - sum(out.values())
    return out


def limits_text(met: bool, split: dict[str, float]) -> str:
    outside = 1 - split["GEMM (addmm/mm/bmm/linear)"]
    head = ("The goal is met; what remains below the ceiling" if met else "What keeps the forward below 70%")
    return (f"{head} is the {outside:.0%} of time outside the GEMMs: autocast re-casting fp32 weights and "
            "activations to bf16 on every call, and memory-bound element-wise ops (softmax, GELU, LayerNorm, "
            "residual adds, attention reshuffles) that CPU autocast runs unfused. Storing the weights in bf16 "
            "removes the casts (reference row) but also lowers LayerNorm/softmax precision, so the engine keeps "
            "autocast; `--compile` (inductor fusion) is the remaining lever and is not measured here.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer images and repeats (about a minute).")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("results/bench_engine.md"))
    args = ap.parse_args(argv)
    n = args.images or (16 if args.quick else 48)
    bs = min(args.batch_size, n)
    repeat = 2 if args.quick else 3
    threads = torch.get_num_threads()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    paths = make_jpegs(tmp / "val", n)
    mean_kb = np.mean([p.stat().st_size for p in paths]) / 1024
    model = vit_b16_model()
    t = model.transform
    rows: list[tuple[str, float, str]] = []  # (stage, images/s, note)

    # ceilings first, so the forward numbers can be read against them
    load_start = common.load_average()
    log("matmul ceilings ...")
    mm_n = 2048 if args.quick else 4096
    bf16_peak = common.matmul_ceiling(mm_n, torch.bfloat16, repeat)
    fp32_peak = common.matmul_ceiling(mm_n, torch.float32, repeat)
    vit_gemm_bf16 = gemm_like_vit(bs, torch.bfloat16, repeat)
    vit_gemm_fp32 = gemm_like_vit(bs, torch.float32, repeat)

    log("host stages ...")
    blobs = []
    t_read = timed(lambda: blobs.extend(p.read_bytes() for p in paths))
    blobs = blobs[:n]
    decoded = []

    def decode() -> None:
        decoded.clear()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                decoded.append(im.convert("RGB"))

    t_decode = timed(decode, repeat)
    t_resize = timed(lambda: [t.pixels(im) for im in decoded], repeat)
    rows += [("read file bytes", n / t_read, f"{mean_kb:.0f} KB mean JPEG, page cache warm"),
             ("decode (PIL)", n / t_decode, "1 process"),
             ("resize 256 + crop 224 (PIL, antialias)", n / t_resize, "1 process"),
             ("decode + resize + crop", n / (t_decode + t_resize), "1 process; DataLoader workers run this in parallel")]

    log("forward ...")
    x = t.normalize(torch.stack([t.pixels(load_rgb(p)) for p in paths[:bs]]))
    bb = model.backbone
    flop = common.forward_flops(bb, x[:2])
    fwd = {}
    with torch.inference_mode():
        for name in ("fp32", "bf16"):
            with autocast(x.device, name):
                bb.tokens(x[:2])  # warm-up
                sec = timed(lambda: bb.tokens(x), repeat)
            fwd[name] = bs / sec
            rows.append((f"forward {name} (batch {bs})", fwd[name], f"{fwd[name] * flop / 1e9:.1f} GFLOP/s"))
        split = profile_split(bb, x)
        # for reference only: weights stored in bf16 (no per-call autocast casts; LayerNorm etc. in bf16 too)
        bf16_bb = copy.deepcopy(bb).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        bf16_bb.tokens(xb[:2])
        fwd_w = bs / timed(lambda: bf16_bb.tokens(xb), repeat)
        rows.append((f"forward bf16 weights, no autocast (batch {bs}; reference, not the engine's path)", fwd_w,
                     f"{fwd_w * flop / 1e9:.1f} GFLOP/s"))

    log("end to end ...")
    request = TapRequest((PoolingSpec("last"), PoolingSpec("cls")), frozenset({"patch_scores", "pooled"}))
    e2e = {}
    for name in ("fp32", "bf16"):
        engine = EngineSpec(device="cpu", dtype=name, batch_size=bs, workers=None)
        feats = extract(model, paths, request, engine, progress=False)
        e2e[name] = feats.images_per_second
        rows.append((f"end to end extract {name} (no feature store)", e2e[name],
                     f"{engine.batch_size}/batch, {min(4, os.cpu_count() or 1)} decode workers"))

    log("feature store: first run vs second evaluator ...")
    store = StoreSpec(dir=tmp / "store", shard_size=max(1, n // 4))
    engine = EngineSpec(device="cpu", dtype="bf16", batch_size=bs)
    t0 = time.perf_counter()
    first = extract(model, paths, request, engine, progress=False, store=store)
    targets = np.zeros((n, 196), dtype=bool)
    targets[:, 90:110] = True
    patch_hit.evaluate(first.arrays["patch_scores/last-k1"], targets, [p.stem for p in paths], (14, 14))
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = extract(model, paths, request, engine, progress=False, store=store)
    pooled = second.arrays["pooled/cls"]  # a second evaluator: cosine k-NN among the stored tokens
    z = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.argsort(-(z @ z.T), axis=1)[:, 1:11]
    t_second = time.perf_counter() - t0
    recomputed = second.store["images_computed"]

    # the ceilings again, at the end: the best of both, so a noisy neighbour cannot lower the bar
    bf16_peak = max(bf16_peak, common.matmul_ceiling(mm_n, torch.bfloat16, repeat))
    fp32_peak = max(fp32_peak, common.matmul_ceiling(mm_n, torch.float32, repeat))
    vit_gemm_bf16 = max(vit_gemm_bf16, gemm_like_vit(bs, torch.bfloat16, repeat))
    vit_gemm_fp32 = max(vit_gemm_fp32, gemm_like_vit(bs, torch.float32, repeat))
    load_end = common.load_average()

    # report
    bf16_frac = fwd["bf16"] * flop / bf16_peak
    fp32_frac = fwd["fp32"] * flop / fp32_peak
    best = max(fwd, key=fwd.get)
    best_frac = fwd[best] * flop / bf16_peak
    met = best_frac >= 0.70
    lines = [
        "# Engine throughput: ViT-B/16 at 224 on CPU",
        "",
        f"Machine: {common.machine_line(threads)}; {common.load_text(load_start, load_end)} (a shared VM: "
        "absolute rates move with other jobs; read the fractions). "
        f"{n} generated JPEGs (500x375 / 375x500, {mean_kb:.0f} KB mean). Forward = backbone tokens only; "
        f"FLOP/s use {flop / 1e9:.2f} GFLOP per image (FlopCounterMode). Command: "
        f"`python benchmarks/bench_engine.py{' --quick' if args.quick else ''}`. Every figure is the best of "
        f"{repeat} runs.",
        "",
        "| stage | images/s | note |",
        "|---|---:|---|",
        *[f"| {s} | {v:.2f} | {note} |" for s, v, note in rows],
        "",
        "| ceiling (same run) | GFLOP/s |",
        "|---|---:|",
        f"| bf16 matmul {mm_n}x{mm_n} @ {mm_n}x{mm_n} | {bf16_peak / 1e9:.1f} |",
        f"| fp32 matmul {mm_n}x{mm_n} @ {mm_n}x{mm_n} | {fp32_peak / 1e9:.1f} |",
        f"| bf16 ViT-shaped GEMM [{bs}*197, 768] x [768, 3072] | {vit_gemm_bf16 / 1e9:.1f} |",
        f"| fp32 ViT-shaped GEMM [{bs}*197, 768] x [768, 3072] | {vit_gemm_fp32 / 1e9:.1f} |",
        "",
        f"- Forward fp32: {fwd['fp32'] * flop / 1e9:.1f} GFLOP/s = {fp32_frac:.0%} of the fp32 matmul "
        f"ceiling, {fwd['fp32'] * flop / bf16_peak:.0%} of the bf16 one.",
        f"- Forward bf16: {fwd['bf16'] * flop / 1e9:.1f} GFLOP/s = {bf16_frac:.0%} of the bf16 matmul "
        "ceiling.",
        f"- Goal (forward >= 70% of the bf16 matmul ceiling): **{'met' if met else 'not met'}** "
        f"(best: {best}, {best_frac:.0%}).",
        "- Where a bf16 forward's CPU time goes (torch.profiler, one batch): "
        + ", ".join(f"{k} {v:.0%}" for k, v in split.items())
        + ". " + limits_text(met, split),
        f"- Second evaluator on stored features: {t_second:.3f} s ({recomputed} images recomputed) vs first run "
        f"(forward + store write + patch-hit) {t_first:.2f} s = **{t_second / t_first:.2%}** of the first run "
        f"({'under' if t_second / t_first < 0.05 else 'NOT under'} 5%).",
        f"- End to end / forward-only (bf16): {e2e['bf16'] / fwd['bf16']:.0%}; decode + resize alone runs at "
        f"{n / (t_decode + t_resize):.1f} img/s per process, so on this machine the forward pass, not the "
        "input pipeline, bounds throughput (the decode workers share the same 2 cores).",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
