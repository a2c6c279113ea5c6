"""Two gloo ranks under torchrun: same metrics as one process; an error on one rank ends both, fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from typer.testing import CliRunner

from lastvit_eval.app import app

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed gloo")


def _torchrun(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lastvit_eval.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _args(imagenet_root, ckpt) -> list[str]:
    return ["patch-hit", "-c", str(ckpt), "-r", str(imagenet_root), "--workers", "0", "--batch-size", "1",
            "--shard-size", "1", "--no-progress", "--device", "cpu", "--pooling", "last"]


def test_two_gloo_ranks_match_one_process(imagenet_root, detectron2_ckpt, tmp_path):
    args = _args(imagenet_root, detectron2_ckpt)
    proc = _torchrun([*args, "--cache-dir", str(tmp_path / "s2"), "-o", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("results written to") + proc.stdout.count("results written to") == 1  # rank 1 quiet

    r = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "s1"), "-o", str(tmp_path / "one")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    one, two = (json.loads((tmp_path / d / "last-k1" / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["metrics"] == one["metrics"]
    store_two = two["info"]["patch-hit"]["extraction"]["test"]["store"]
    assert store_two["images_computed"] == 3  # rank 0 did chunks 0, 2, 4; rank 1 the other two
    assert store_two["space"] == one["info"]["patch-hit"]["extraction"]["test"]["store"]["space"]
    rows = [(tmp_path / d / "last-k1" / "patch_hit_rows.csv").read_text() for d in ("one", "two")]
    assert rows[0] == rows[1]


def test_an_error_on_one_rank_ends_every_rank_with_its_message(imagenet_root, detectron2_ckpt, tmp_path):
    # img_0002 is the second kept image: chunk 1, rank 1's. Header intact, pixel data cut: it fails to decode.
    bad = imagenet_root / "val" / "n01440764" / "img_0002.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    t0 = time.monotonic()
    proc = _torchrun([*_args(imagenet_root, detectron2_ckpt), "--on-bad-image", "fail", "--barrier-timeout", "60",
                      "--cache-dir", str(tmp_path / "s"), "-o", str(tmp_path / "out")], timeout=120)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2, out[-3000:]  # both ranks, the same one line
    assert all("rank 1" in e and "img_0002.JPEG" in e and "unreadable image" in e for e in errors), errors
    assert elapsed < 60, f"ranks waited {elapsed:.0f} s"  # well under the barrier timeout
    assert not (tmp_path / "out" / "last-k1" / "metrics.json").exists()
