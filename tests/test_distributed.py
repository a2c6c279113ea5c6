"""Two gloo ranks under torchrun give the same features and metrics as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.engine.cache import CacheEntry

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_gloo_ranks_match_one_process(imagenet_root, detectron2_ckpt, tmp_path):
    args = ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--workers", "0", "--batch-size", "1",
            "--shard-size", "1", "--no-progress", "--device", "cpu", "--pooling", "last"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "lastvit_eval.cli", *args, "--cache-dir", str(tmp_path / "c2"), "-o", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("results written to") == 1  # rank 1 stays quiet

    r = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "c1"), "-o", str(tmp_path / "one")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["metrics"] == one["metrics"]
    cache_two = two["info"]["patch-hit"]["cache"]
    assert cache_two["computed"] == 3 and cache_two["from_other_ranks"] == 2  # rank 0: shards 0, 2, 4
    rows = [(tmp_path / d / "patch_hit_rows.csv").read_text() for d in ("one", "two")]
    assert rows[0] == rows[1]
    # the shards themselves: same key, same arrays, written by different processes
    key = cache_two["key"]
    assert key == one["info"]["patch-hit"]["cache"]["key"]
    e1, e2 = CacheEntry(tmp_path / "c1", key), CacheEntry(tmp_path / "c2", key)
    for s in range(5):
        a, b = e1.load_shard(s), e2.load_shard(s)
        assert np.array_equal(a.index, b.index)
        for k in a.arrays:
            np.testing.assert_allclose(a.arrays[k], b.arrays[k], rtol=0, atol=1e-6, err_msg=f"shard {s} {k}")
