"""How fast the CLI answers when it needs no model: `--help`, `--version`, and errors in the options.

Each case is the real console entry (`python -m lastvit_eval.cli ...`) in a fresh process, timed wall
clock, repeated; the figure is the median, and its ratio to `python -c pass` measured in the same run
(the ratio is what carries to another machine). The load average is stated because this machine is
shared. A last row times one case with torch imported first: what every case cost before the commands
imported their heavy layers lazily. Writes results/bench_startup.md.

    PYTHONPATH=. python benchmarks/bench_startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "lastvit_eval" / "demo" / "checkpoints" / "tiny_cls.pth"
CASES = [
    ("`--version`", ["--version"], 0),
    ("`--help`", ["--help"], 0),
    ("`run --help`", ["run", "--help"], 0),
    ("`knn --dtype fp8`", ["knn", "--dtype", "fp8"], 2),
    ("`run -e bogus`", ["run", "-e", "bogus"], 2),
    ("`patch-hit -c tiny_cls.pth -r /missing`", ["patch-hit", "-c", str(CKPT), "-r", "/missing"], 2),
]
GOAL_S = 0.5


def timed(cmd: list[str], code: int, env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != code:
        raise SystemExit(f"{cmd}: exit {p.returncode}, expected {code}\n{p.stderr}")
    return dt


def median_of(cmd: list[str], code: int, env: dict, repeats: int) -> float:
    timed(cmd, code, env)  # warm the file cache
    return statistics.median(timed(cmd, code, env) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--output", type=Path, default=ROOT / "results" / "bench_startup.md")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = [sys.executable]
    load_before = os.getloadavg()
    base = median_of([*py, "-c", "pass"], 0, env, args.repeats)
    rows = []
    for label, argv, code in CASES:
        s = median_of([*py, "-m", "lastvit_eval.cli", *argv], code, env, args.repeats)
        rows.append((label, s))
    eager = "import torch, sys; from lastvit_eval.cli import app; app(sys.argv[1:])"
    torch_s = median_of([*py, "-c", eager, "--version"], 0, env, max(3, args.repeats // 2))
    load_after = os.getloadavg()

    lines = [
        "# CLI start-up: answers that need no model",
        "",
        f"`python benchmarks/bench_startup.py --repeats {args.repeats}`: each row is the median wall time of "
        f"{args.repeats} fresh processes (`python -m lastvit_eval.cli ...`, after one warm-up run), and its ratio "
        "to `python -c pass` timed in the same run. Goal: under 0.5 s.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, shared; "
        f"load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} before and "
        f"{', '.join(f'{x:.2f}' for x in load_after)} after.",
        "",
        "| command | median s | x `python -c pass` | under 0.5 s |",
        "|---|---:|---:|:---:|",
        f"| `python -c pass` | {base:.3f} | 1.0 | |",
    ]
    for label, s in rows:
        lines.append(f"| {label} | {s:.3f} | {s / base:.1f} | {'yes' if s < GOAL_S else 'NO'} |")
    lines += [
        f"| `--version` with torch imported first (the floor of every row before: torch alone) | {torch_s:.3f} | "
        f"{torch_s / base:.1f} | {'yes' if torch_s < GOAL_S else 'NO'} |",
        "",
        "What is left of the time: Python itself, Typer (which imports pydantic and, for help, Rich) and the "
        "command modules; torch, torchvision, pandas and scipy are imported only by a command that runs "
        "(`tests/test_startup.py` checks that none of these cases imports torch).",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
