"""A chain of lastvit-eval commands on the same images: what does each later command cost next to the first?

The chain (issue 11): `patch-hit` -> `extract` (val) -> `run -e patch-hit,classify` -> `knn` on the two
feature files, with `extract` of a small train split once (it forwards new images, so it is reported
as a forwarding step, not as a command on stored images). Each command is a real subprocess with a
fresh `--cache-dir` per round; its wall time includes process start, imports, model load, hashing the
files and reading the feature store. Goal: every later command on stored images costs at most 10% of
the first. The floor, `python -c "import lastvit_eval.cli"`, is timed separately.

ViT-B/16 (torchvision, random init perturbed, detectron2 checkpoint: no download) on generated
ImageNet-like JPEGs in folders named by real ImageNet wnids, so `classify` maps them onto the
1000-way head without --class-map. Writes results/bench_chain.md.

    python benchmarks/bench_chain.py [--images 300] [--train-images 40] [--dtype bf16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common
import torch

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.10


def run_cli(cli: list[str], args: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds of one command (process start included) and its output; a failure stops the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cli, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join([*cli, *args])}\n{proc.stdout}\n"
                         f"{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def run_forwarded(out_dir: Path) -> dict[str, int]:
    """Images forwarded / read per split, from the run's metrics.json (`info.<ev>.extraction.<split>.store`)."""
    counts: dict[str, int] = {"forwarded": 0, "reused": 0}
    metrics = sorted(out_dir.glob("*/metrics.json"))
    if not metrics:
        raise SystemExit(f"{out_dir}: no metrics.json written")
    record = json.loads(metrics[0].read_text())
    seen = set()
    for ev in record.get("info", {}).values():
        for split, e in (ev.get("extraction") or {}).items():
            store = e.get("store") or {}
            if split in seen or not store:
                continue
            seen.add(split)
            counts["forwarded"] += int(store.get("images_computed", 0))
            counts["reused"] += int(store.get("images_reused", 0))
    return counts


def file_forwarded(path: Path) -> dict[str, int]:
    from lastvit_eval.features_io import load_features

    store = load_features(path).meta.get("store") or {}
    return {"forwarded": int(store.get("images_computed", 0)), "reused": int(store.get("images_reused", 0))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="val images (with boxes)")
    ap.add_argument("--train-images", type=int, default=40, help="train images for knn, forwarded once")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="whole chains, each with a fresh feature store")
    ap.add_argument("--cli", default=f"{sys.executable} -m lastvit_eval.cli",
                    help="how to start lastvit-eval (PYTHONPATH is set to this checkout)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_chain.md"))
    args = ap.parse_args(argv)
    cli = shlex.split(args.cli)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    load_start = common.load_average()
    steps: dict[str, dict] = {}  # label -> {"seconds": [...], "counts": {...}, "later": bool, "command": str}
    imports: list[float] = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "imagenet"
        common.make_dataset(root, args.images, "val", classes=args.classes)
        common.make_dataset(root, args.train_images, "train", classes=args.classes, boxes=False, seed=1)
        ckpt = common.save_d2_checkpoint(common.random_vit_b_16(), tmp / "vit_b_16_d2.pth")
        engine = ["--dtype", args.dtype, "--batch-size", str(args.batch_size), "--device", "cpu", "--no-progress"]
        for r in range(args.rounds):
            store = tmp / f"store-{r}"
            out = tmp / f"out-{r}"
            data = ["--checkpoint", str(ckpt), "--imagenet-root", str(root)]
            chain = [
                ("patch-hit", False, ["patch-hit", *data, *engine, "--cache-dir", str(store),
                                      "--output-dir", str(out / "1")], lambda o=out: run_forwarded(o / "1")),
                ("extract (val)", True, ["extract", "-o", str(out / "val.npz"), *data, "--split", "val", *engine,
                                         "--cache-dir", str(store)], lambda o=out: file_forwarded(o / "val.npz")),
                ("extract (train): forwards the train split", None,
                 ["extract", "-o", str(out / "train.npz"), *data, "--split", "train", *engine,
                  "--cache-dir", str(store)], lambda o=out: file_forwarded(o / "train.npz")),
                ("run -e patch-hit,classify", True, ["run", "-e", "patch-hit,classify", *data, *engine,
                                                     "--cache-dir", str(store), "--output-dir", str(out / "3")],
                 lambda o=out: run_forwarded(o / "3")),
                ("knn on the two feature files", True,
                 ["knn", "--train-features", str(out / "train.npz"), "--test-features", str(out / "val.npz"),
                  "--ks", str(min(10, args.train_images)), "--no-progress", "--output-dir", str(out / "4")],
                 lambda: {"forwarded": 0, "reused": 0}),
            ]
            t_import, _ = run_cli([cli[0]], ["-c", "import lastvit_eval.cli"], env)
            imports.append(t_import)
            for label, later, cmd, counter in chain:
                log(f"round {r + 1}/{args.rounds}: {label} ...")
                sec, _ = run_cli(cli, cmd, env)
                s = steps.setdefault(label, {"seconds": [], "counts": [], "later": later,
                                             "command": shlex.join(["lastvit-eval", *cmd]).replace(str(tmp), "$TMP")})
                s["seconds"].append(sec)
                s["counts"].append(counter())
            t_import, _ = run_cli([cli[0]], ["-c", "import lastvit_eval.cli"], env)
            imports.append(t_import)
    load_end = common.load_average()

    first = steps["patch-hit"]["seconds"]
    n_first = len(first)
    lines = [
        "## A command chain on the same images: each command's wall time next to the first's",
        "",
        f"ViT-B/16 (torchvision, random init perturbed, detectron2 checkpoint), {args.dtype}, batch "
        f"{args.batch_size}, CPU; {args.images} generated val JPEGs (500x375-640x480, boxes) in {args.classes} "
        f"folders named by real ImageNet wnids, {args.train_images} train JPEGs for k-NN. Every command is a "
        "fresh process (`python -m lastvit_eval.cli ...`) timed from spawn to exit; each round starts with an "
        f"empty `--cache-dir`. {args.rounds} rounds; cells are min / median / max, the fraction is taken per "
        "round against that round's first command.",
        "",
        f"Machine: {common.machine_line(torch.get_num_threads())}; {common.load_text(load_start, load_end)}.",
        f"Command: `python {shlex.join(['benchmarks/bench_chain.py', *(argv if argv is not None else sys.argv[1:])])}`.",
        "",
        "| # | command | seconds | fraction of the first | images forwarded / read from the store (last round) |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for i, (label, s) in enumerate(steps.items(), 1):
        fracs = [v / f for v, f in zip(s["seconds"], first, strict=True)]
        c = s["counts"][-1]
        lines.append(f"| {i} | {label} | {common.spread(s['seconds'])} | "
                     f"{'1' if i == 1 else common.spread(fracs, '{:.1%}')} | {c['forwarded']} / {c['reused']} |")
        if s["later"]:
            worst = max(fracs)
            verdicts.append((label, worst, sum(x['forwarded'] for x in s["counts"])))
    lines += [
        f"| | floor: `python -c \"import lastvit_eval.cli\"` | {common.spread(imports)} | "
        f"{common.spread([t / first[j // 2] for j, t in enumerate(imports)], '{:.1%}')} | - |",
        "",
        "Commands of round 1 (`$TMP`: the benchmark's temporary folder; later rounds use store-1, out-1, ...):",
        "",
        *[f"{i}. `{s['command']}`" for i, s in enumerate(steps.values(), 1)],
        "",
    ]
    met = all(w <= GOAL for _, w, _ in verdicts)  # forwarding an image no earlier command had is no miss
    lines.append(f"Goal: every later command on stored images <= {GOAL:.0%} of the first (worst round): "
                 f"**{'met' if met else 'not met'}** ("
                 + "; ".join(f"{label}: {w:.1%}, {fwd} images forwarded" for label, w, fwd in verdicts)
                 + f"). Median first command: {sorted(first)[n_first // 2]:.1f} s.")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
