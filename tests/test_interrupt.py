"""Ctrl-C during a forward: one line saying how many shards the store kept and how to resume, exit 130;
the rerun forwards only what was missing."""

from __future__ import annotations

from typer.testing import CliRunner

import lastvit_eval.engine.extract as ex
from lastvit_eval.app import _Typer

REAL_FORWARD = ex.forward_taps


def _interrupting(after: int, seen: list[int]):
    real = REAL_FORWARD

    def forward(model, x, *a, **k):
        if len(seen) == after:
            raise KeyboardInterrupt
        seen.append(len(x))
        return real(model, x, *a, **k)

    return forward


def test_ctrl_c_says_what_was_kept_and_the_rerun_resumes(imagenet_root, detectron2_ckpt, tmp_path, monkeypatch):
    from lastvit_eval.app import app

    args = ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--workers", "0", "--batch-size", "1",
            "--shard-size", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "run")]
    seen: list[int] = []
    monkeypatch.setattr(ex, "forward_taps", _interrupting(2, seen))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("Interrupted:")]
    assert len(said) == 1, r.output
    # the fixture keeps 5 images for patch-hit (shard size 1: one shard each); 2 batches finished
    assert "2 of 5 shards kept (2 of 5 images to forward)" in said[0]
    assert said[0].endswith("rerun the same command to resume")
    assert "Traceback" not in r.output

    seen.clear()
    monkeypatch.setattr(ex, "forward_taps", _interrupting(10**6, seen))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert sum(seen) == 3, (seen, r.output)  # only the three shards that were not kept
    assert "poolings: last-k1 = LAST pooling (k=1 patch per channel)" in r.output  # the name, explained once
    assert r.output.count("LAST pooling (k=1") == 1


def test_ctrl_c_without_the_store_says_nothing_was_kept(imagenet_root, detectron2_ckpt, tmp_path, monkeypatch):
    from lastvit_eval.app import app

    monkeypatch.setattr(ex, "forward_taps", _interrupting(1, []))
    r = CliRunner().invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "--workers", "0",
                                 "--batch-size", "1", "--no-cache", "--no-progress", "-o", str(tmp_path / "run")])
    assert r.exit_code == 130
    assert r.output.strip() == "Interrupted: no features kept (--no-cache); a rerun forwards all 5 images again"


def test_a_bare_ctrl_c_elsewhere_is_one_line_and_130():
    toy = _Typer()

    @toy.command("wait")
    def wait() -> None:
        raise KeyboardInterrupt

    @toy.command("other")
    def other() -> None:
        pass

    r = CliRunner().invoke(toy, ["wait"])
    assert r.exit_code == 130
    assert r.output.strip() == "Interrupted."


def test_pooling_caption_names_every_setting():
    from lastvit_eval.pooling import PoolingSpec
    from lastvit_eval.report.console import pooling_caption

    text = pooling_caption([PoolingSpec("cls"), PoolingSpec("gap"), PoolingSpec("last", topk=5, sigma=20.0,
                                                                                 formula="paper")])
    assert text == ("cls = CLS pooling (the class token); gap = GAP pooling (mean of the patch tokens); "
                    "last-k5-s20-paper = LAST pooling (k=5 patches per channel, sigma=20, paper score)")
