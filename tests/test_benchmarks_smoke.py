"""The benchmark scripts' own pieces, at tiny sizes: FLOP counting, the generated data, the store counters.

Benchmarks are scripts, not tests: nothing here times anything. What is checked is what a benchmark's
figures rest on: that the FLOP count equals the ViT formula written out by hand, that the generated
folders (real ImageNet wnids) map onto a 1000-way head without --class-map, and that the chain
benchmark reads "images forwarded / reused" from a real run's metrics.json. The zero-shot segmentation
benchmark runs whole at its smallest size (a few seconds), to check the table it writes, never its speed; so do the
CorLoc and linear-probe benchmarks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common as common  # noqa: E402
import bench_chain  # noqa: E402

from lastvit_eval.engine.device import EngineSpec  # noqa: E402
from lastvit_eval.engine.store import StoreSpec  # noqa: E402
from lastvit_eval.models import LoadOptions  # noqa: E402
from lastvit_eval.models.torchvision_vit import TorchvisionBackbone  # noqa: E402
from lastvit_eval.pipeline import execute  # noqa: E402
from lastvit_eval.plan import RunRequest, build_plan  # noqa: E402


def tiny_vit(image_size: int = 32, patch: int = 8, layers: int = 2, heads: int = 2, width: int = 16,
             mlp: int = 32) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers, num_heads=heads,
                             hidden_dim=width, mlp_dim=mlp).eval()


def test_forward_flops_equal_the_vit_formula():
    size, p, layers, d, m, b = 32, 8, 2, 16, 32, 3
    model = tiny_vit(size, p, layers, 2, d, m)
    grid = (size // p) ** 2
    n = grid + 1  # patches + class token
    # 2 FLOPs per multiply-add: patch embedding, then per layer qkv, q k^T, attn v, out proj, two MLP GEMMs
    expected = 2 * grid * 3 * p * p * d + layers * (2 * n * d * 3 * d + 2 * n * n * d + 2 * n * n * d
                                                   + 2 * n * d * d + 2 * 2 * n * d * m)
    was = torch.backends.mha.get_fastpath_enabled()
    got = common.forward_flops(TorchvisionBackbone(model, has_head=True), torch.randn(b, 3, size, size))
    assert got == expected
    assert torch.backends.mha.get_fastpath_enabled() == was


def test_generated_folders_map_onto_the_imagenet_head_and_the_chain_reads_the_store(tmp_path: Path):
    root = tmp_path / "imagenet"
    common.make_dataset(root, 6, "val", classes=2)
    wnids = sorted(d.name for d in (root / "val").iterdir())
    assert len(wnids) == 2 and all(w.startswith("n") and len(w) == 9 for w in wnids)
    ckpt = common.save_d2_checkpoint(tiny_vit(), tmp_path / "tiny_d2.pth")

    def run(out: Path) -> tuple[dict, int]:
        req = RunRequest(evaluators=("patch-hit", "classify"), checkpoint=str(ckpt), root=root,
                         load=LoadOptions(num_heads=2), engine=EngineSpec(device="cpu", batch_size=4, workers=0),
                         store=StoreSpec(dir=tmp_path / "store"), output_dir=out, progress=False)
        plan = build_plan(req)  # raises without --class-map unless the wnids are ImageNet's
        execute(plan)
        return bench_chain.run_forwarded(out), int(plan.test_positions().size)

    first, n = run(tmp_path / "o1")
    assert n >= 1 and first == {"forwarded": n, "reused": 0}
    second, _ = run(tmp_path / "o2")
    assert second == {"forwarded": 0, "reused": n}


def test_spread_orders_min_median_max():
    assert common.spread([3.0, 1.0, 2.0, 10.0, 4.0], "{:.0f}") == "1 / 3 / 10"
    with pytest.raises(ValueError):
        common.spread([])


def test_zero_shot_seg_benchmark_writes_its_table(tmp_path: Path, capsys):
    """bench_zero_shot_seg.py end to end at its smallest (ViT-S-32, two generated VOC images, one round): the
    table has its rows and columns, and the share outside the backbone is a percentage."""
    import re

    import bench_zero_shot_seg

    out = tmp_path / "bench_zero_shot_seg.md"
    bench_zero_shot_seg.main(["--arch", "ViT-S-32", "--images", "2", "--rounds", "1", "--batch-size", "8",
                              "--out", str(out)])
    text = out.read_text()
    assert "--images 2 --rounds 1 --batch-size 8 --arch ViT-S-32`" in text  # the command reproduces the run
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    assert rows[0] == ["", "min / median / max over rounds"] and set(rows[1][0]) == {"-"}
    table = {r[0]: r[1] for r in rows[2:]}
    assert list(table) == ["images/s (end to end)", "wall seconds per round", "seconds inside the tower (synchronized)",
                           "share of wall time outside the tower", "bare tower, same windows, same process (s)"]
    spread = [float(v) for v in re.findall(r"[-\d.]+(?=%)", table["share of wall time outside the tower"])]
    assert len(spread) == 3 and spread[0] == spread[1] == spread[2]  # one round: min = median = max
    assert 0.0 <= spread[0] <= 100.0
    ips, wall, inside = (float(table[k].split(" / ")[0]) for k in list(table)[:3])
    assert ips > 0 and 0 < inside <= wall
    assert 2 / (wall + 0.005) - 0.0005 <= ips <= 2 / (wall - 0.005) + 0.0005  # images / wall, as rounded
    assert "6 windows an image" in text and "Goal: under 20%" in text


def _run_bench(script: str, tmp_path: Path, *args: str) -> Path:
    """benchmarks/<script>.py as a script (its main() reads sys.argv), writing tmp_path/<script>.md; must exit 0."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / f"{script}.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / f"{script}.py"), *args, "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_bench_corloc_runs_at_a_tiny_size(tmp_path: Path):
    """The CorLoc benchmark script end to end on 4 generated images, 1 round (no timing is judged here): its
    table has the documented columns, one row per method, and an outside-the-forward share in [0, 100] %."""
    import re

    out = _run_bench("bench_corloc", tmp_path, "--images", "4", "--rounds", "1")
    lines = out.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "method", "images/s", "forward s", "outside the forward (goal < 15%)", "plan s", "CorLoc (random weights)"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2:header + 5]]
    assert [r[0] for r in rows] == ["last-votes", "lost", "dino-seg"]
    for r in rows:
        ips = [float(x) for x in r[1].split(" / ")]
        assert len(ips) == 3 and all(x > 0 for x in ips)
        shares = [float(x) for x in re.findall(r"(-?[\d.]+)%", r[3])]
        assert len(shares) == 3 and all(0 <= s <= 100 for s in shares), r[3]
        assert 0 <= float(r[5]) <= 100
    assert "4 generated VOC-format images" in out.read_text()


def test_bench_knn_probe_runs_at_a_tiny_size(tmp_path: Path):
    """The probe benchmark end to end at 600 x 16, 5 classes (fp32 passes; nothing timed is judged): the
    candidate table's passes plus the refit's add up to the total in our row, every weight decay of the grid is
    listed once, and the GEMM floor is computed for the passes the run made, in the precision it used."""
    import re

    out = _run_bench("bench_knn_probe", tmp_path, "--n-train", "600", "--n-test", "100", "--dim", "16", "--classes",
                     "5", "--mean-scale", "1", "--probe-only", "--repeats", "1")
    text = out.read_text()
    ours = next(line for line in text.splitlines() if line.startswith("| ours (lbfgs, fp32 passes"))
    total = float(re.search(r"CIs \(([\d.]+) passes over the rows in all\)", ours).group(1))
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| weight decay | ours: hold-out top-1"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2:]
            if line.startswith("|")][:8]
    from lastvit_eval.evaluators.linear_probe import DEFAULT_WDS

    assert sorted(float(r[0]) for r in rows[:-1]) == sorted(float(w) for w in DEFAULT_WDS)
    assert rows[-1][0].startswith("refit at ")
    assert sum(float(r[3]) for r in rows) == pytest.approx(total, abs=1e-3)
    floor = re.search(r"our ([\d.]+) passes' two fp32 GEMMs alone, at this machine's measured rate", text)
    assert floor is not None, text[-1500:]
    assert float(floor.group(1)) == pytest.approx(total)  # the floor counts the passes the run made
    assert "| ours with the refit at the path's tolerance (0.0001: " in text
