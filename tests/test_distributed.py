"""Two gloo ranks under torchrun: same metrics as one process; an error on one rank ends both, fast."""

from __future__ import annotations

import json
import os
import re
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
    # every rank that gets to print says the failing rank's one line (torchrun may stop a rank that already
    # ended its work with SIGTERM once another exits with an error; lines may interleave on the shared stderr)
    errors = re.findall(r"Error: (rank \d+: [^\n]*?unreadable image[^\n]*?skip it)", out)
    assert 1 <= len(errors) <= 2, out[-3000:]
    assert all(e.startswith("rank 1: ") and "img_0002.JPEG" in e for e in errors), errors
    assert elapsed < 60, f"ranks waited {elapsed:.0f} s"  # well under the barrier timeout
    assert not (tmp_path / "out" / "last-k1" / "metrics.json").exists()


def _rank_main(rank: int, tmp: str, ckpt: str, paths: list[str]) -> None:
    """One of two gloo processes: rank 1 fails on its first batch, rank 0 has a slow forward."""
    import time as _time

    import torch.distributed as _dist

    from lastvit_eval.engine import distributed as d
    from lastvit_eval.engine.device import EngineSpec
    from lastvit_eval.engine.extract import extract
    from lastvit_eval.engine.store import StoreSpec
    from lastvit_eval.engine.taps import TapRequest, forward_taps
    from lastvit_eval.errors import InputError
    from lastvit_eval.models import load_model
    from lastvit_eval.pooling import PoolingSpec

    _dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    d._state["run_id"] = "abort-test"

    calls = []

    def forward(model, x, *a, **k):
        if rank == 1:
            raise InputError("rank one met a bad input")
        calls.append(len(x))
        _time.sleep(0.4)
        return forward_taps(model, x, *a, **k)

    t0 = _time.monotonic()
    try:
        extract(load_model(ckpt), [Path(p) for p in paths], TapRequest((PoolingSpec("cls"),), frozenset({"pooled"})),
                EngineSpec(device="cpu", batch_size=1, workers=0), store=StoreSpec(dir=Path(tmp) / "s", shard_size=1),
                progress=False, forward_fn=forward)
        outcome = "finished"
    except InputError as e:
        outcome = str(e)
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"outcome": outcome, "seconds": _time.monotonic() - t0,
                                                                     "forwarded": sum(calls)}))
    _dist.barrier()  # both ranks raised after the same collective: leave together
    _dist.destroy_process_group()


def test_abort_file_stops_a_busy_rank_within_a_batch(imagenet_root, detectron2_ckpt, tmp_path):
    import torch.multiprocessing as mp

    paths = [str(p) for p in sorted((imagenet_root / "val").rglob("*.JPEG"))] * 6  # 48; rank 0's share: 24
    mp.spawn(_rank_main, args=(str(tmp_path), str(detectron2_ckpt), paths), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1["outcome"].startswith("rank 1: ") and "rank one met a bad input" in r1["outcome"]
    assert r0["outcome"] == r1["outcome"]  # rank 0 ends with rank 1's message
    assert r0["forwarded"] < 24, r0  # it stopped between batches instead of finishing its share
