"""kill -9 in the middle of extraction, rerun: finished shards are reused, results are unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from lastvit_eval.app import app

ROOT = Path(__file__).resolve().parents[1]
COLUMN = "features/*/patch_scores~last-k1/*.json"  # one sidecar per finished shard of the requested tap

# The child is the real CLI with a forward pass slowed down, so the kill lands between shards.
SLOW_CLI = """
import sys, time
import lastvit_eval.engine.extract as ex
real = ex.forward_taps
def slow(*a, **k):
    time.sleep(0.4)
    return real(*a, **k)
ex.forward_taps = slow
from lastvit_eval.cli import app
app(sys.argv[1:])
"""


def test_resume_after_sigkill(imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    cdir = tmp_path / "cache"
    args = ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--workers", "0", "--batch-size", "1",
            "--shard-size", "1", "--no-progress", "--cache-dir", str(cdir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "-o", str(tmp_path / "killed")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(cdir.glob(COLUMN)):
            assert child.poll() is None, "the child ended before writing a shard"
            assert time.monotonic() < deadline, "no shard written within 60 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done_before = len(list(cdir.glob(COLUMN)))
    assert 1 <= done_before < 5 and not (tmp_path / "killed" / "last-k1" / "metrics.json").exists()

    seen = forwarded
    runner = CliRunner()
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "resumed")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sum(seen) == 5 - done_before  # only the unfinished shards went through the model
    r = runner.invoke(app, [*args[:-2], "--no-cache", "-o", str(tmp_path / "fresh")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    resumed, fresh = (json.loads((tmp_path / d / "last-k1" / "metrics.json").read_text()) for d in ("resumed", "fresh"))
    assert resumed["metrics"] == fresh["metrics"]
    assert resumed["info"]["patch-hit"]["extraction"]["test"]["store"]["images_reused"] == done_before
    rows = [(tmp_path / d / "last-k1" / "patch_hit_rows.csv").read_text() for d in ("resumed", "fresh")]
    assert rows[0] == rows[1]
