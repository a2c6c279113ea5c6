"""Benchmark k-NN and the linear probe on synthetic ImageNet-shaped features; writes a markdown section.

Features: Gaussian class means (scale --mean-scale) plus unit Gaussian noise, so accuracy is neither 0
nor 100. Measures k-NN wall time and peak resident memory above the pre-call level, and the linear probe
(default: L-BFGS path over the default weight-decay grid, hold-out selection, warm-started refit) against
scikit-learn's LogisticRegression (lbfgs, defaults) on standardized features, plus ours with one weight
decay at scikit-learn's C (same objective, same tolerance: one fit vs one fit).
Run: `python benchmarks/bench_knn_probe.py [--quick] [--probe-only]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lastvit_eval.evaluators import knn, linear_probe


def make_features(n: int, dim: int, means: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 features built in place (no temporaries), so the RSS baseline is just the data."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, means.shape[0], n)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    for i in range(0, n, 8192):
        x[i : i + 8192] += means[y[i : i + 8192]]
    return x, y


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every 5 ms in a thread: peak during the block minus the level before."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def sklearn_probe(xtr, ytr, xte, yte) -> tuple[float, float, int]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    sc = StandardScaler().fit(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=100).fit(sc.transform(xtr), ytr)
    acc = 100.0 * float((clf.predict(sc.transform(xte)) == yte).mean())
    return time.perf_counter() - t, acc, int(np.max(clf.n_iter_))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small size (10k x 768, 100 classes)")
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--mean-scale", type=float, default=0.2)
    ap.add_argument("--probe-only", action="store_true", help="skip k-NN")
    ap.add_argument("--sklearn-n", type=int, default=None, help="train rows for the sklearn comparison")
    ap.add_argument("--out", type=Path, default=Path("results/bench_knn_probe.md"))
    a = ap.parse_args()
    if a.quick:
        a.n_train, a.n_test, a.classes = 10_000, 2_000, 100
    sk_n = min(a.sklearn_n or a.n_train, a.n_train)

    rng = np.random.default_rng(0)
    means = (rng.standard_normal((a.classes, a.dim)) * a.mean_scale).astype(np.float32)
    xtr, ytr = make_features(a.n_train, a.dim, means, 1)
    xte, yte = make_features(a.n_test, a.dim, means, 2)
    print(f"data: train {xtr.shape}, test {xte.shape}, {a.classes} classes", flush=True)

    if not a.probe_only:
        with PeakRSS() as mem:
            t = time.perf_counter()
            r_knn = knn.evaluate(xtr, ytr, xte, yte, device="cpu")
            knn_s = time.perf_counter() - t
        print(f"knn {knn_s:.1f}s peak +{mem.delta_mb:.0f} MB", flush=True)

    t = time.perf_counter()
    r_lp = linear_probe.evaluate(xtr, ytr, xte, yte, device="cpu")
    lp_s = time.perf_counter() - t
    print(f"probe {lp_s:.1f}s top1 {r_lp.metrics['linear_probe.top1'].value:.2f}", flush=True)

    if sk_n < a.n_train:
        t = time.perf_counter()
        r_lp_sub = linear_probe.evaluate(xtr[:sk_n], ytr[:sk_n], xte, yte, device="cpu")
        lp_sub_s, lp_sub_acc = time.perf_counter() - t, r_lp_sub.metrics["linear_probe.top1"].value
    else:
        lp_sub_s, lp_sub_acc = lp_s, r_lp.metrics["linear_probe.top1"].value
    sk_s, sk_acc, sk_iter = sklearn_probe(xtr[:sk_n], ytr[:sk_n], xte, yte)
    print(f"sklearn n={sk_n} {sk_s:.1f}s top1 {sk_acc:.2f} iters {sk_iter}", flush=True)
    t = time.perf_counter()
    r_one = linear_probe.evaluate(xtr[:sk_n], ytr[:sk_n], xte, yte, weight_decays=(1.0 / sk_n,), device="cpu")
    one_s, one_acc = time.perf_counter() - t, r_one.metrics["linear_probe.top1"].value
    print(f"ours one fit at C=1: {one_s:.1f}s top1 {one_acc:.2f}", flush=True)

    info = r_lp.info
    sel = info["selection"]
    path = ", ".join(f"{r['weight_decay']:g}: {r['holdout_top1']:.2f}% ({r['passes']} passes)" for r in sel)
    lines = [
        f"## k-NN and linear probe benchmark ({'quick' if a.quick else 'full'} size)",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Machine shared with other jobs: "
        "wall times are single runs and noisy.",
        f"Data: synthetic, train {a.n_train} x {a.dim}, test {a.n_test}, {a.classes} classes; class means "
        f"N(0, {a.mean_scale}^2) plus N(0, 1) noise.",
        "",
    ]
    if not a.probe_only:
        m, ks = r_knn.metrics, r_knn.info["ks"]
        lines += [
            "| k-NN | value |",
            "|---|---|",
            f"| wall time (all k {ks} from one top-{max(ks)} pass) | {knn_s:.1f} s |",
            f"| peak RSS above the data | {mem.delta_mb:.0f} MB (train chunk {r_knn.info['train_chunk']}, "
            f"test chunk {r_knn.info['test_chunk']}) |",
            *[f"| k={k} top-1 / top-5 | {m[f'knn.k{k}.top1'].value:.2f} / {m[f'knn.k{k}.top5'].value:.2f} |"
              for k in ks],
            "",
        ]
    lines += [
        "| Linear probe | train rows | wall time | test top-1 |",
        "|---|---|---|---|",
        f"| ours ({info['solver']}, {info['precision']} matmuls, tol {info['tol']:g}): path over "
        f"{info['n_candidates']} weight decays on a {info['holdout_fraction']} hold-out split, refit "
        f"| {a.n_train} | {lp_s:.1f} s | {r_lp.metrics['linear_probe.top1'].value:.2f} |",
    ]
    if sk_n < a.n_train:
        lines.append(f"| ours, same settings | {sk_n} | {lp_sub_s:.1f} s | {lp_sub_acc:.2f} |")
    lines += [
        f"| scikit-learn LogisticRegression (lbfgs, C=1, max_iter=100, {sk_iter} iterations) on "
        f"StandardScaler features | {sk_n} | {sk_s:.1f} s | {sk_acc:.2f} |",
        f"| ours, one weight decay = 1/(C n) at C=1 (no selection, {r_one.info['refit_iterations']} iterations, "
        f"{r_one.info['refit_passes']} passes) | {sk_n} | {one_s:.1f} s | {one_acc:.2f} |",
        "",
        f"Path (weight decay: hold-out top-1, passes over the fit rows): {path}. Chosen weight decay "
        f"{info['chosen_weight_decay']:g}; refit {info['refit_iterations']} iterations, "
        f"{info['refit_passes']} passes.",
        f"Speed-up vs scikit-learn at {sk_n} rows: full protocol {sk_s / lp_sub_s:.2f}x (accuracy "
        f"{lp_sub_acc - sk_acc:+.2f} points); one fit at the same C {sk_s / one_s:.2f}x (accuracy "
        f"{one_acc - sk_acc:+.2f} points).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)


if __name__ == "__main__":
    main()
