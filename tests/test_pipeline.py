"""The pipeline contract: checks before any forward, explicit class maps, a toy evaluator with no other edit,
one forward per image across commands, --dry-run, an output folder owned by one run, no import circle."""

from __future__ import annotations

import ast
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_vit, write_jpeg
from typer.testing import CliRunner

import lastvit_eval
from lastvit_eval.app import app
from lastvit_eval.evaluators.base import EVALUATORS, Evaluator, Inputs, MetricInfo, register
from lastvit_eval.result import Metric, Result

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def err(r) -> str:
    return r.output  # CliRunner mixes stderr into output


def _no_boxes(root: Path) -> Path:
    import shutil

    shutil.rmtree(root / "bbox")
    (root / "LOC_val_solution.csv").unlink()
    (root / "coco.json").unlink()
    return root


CASES = {
    "zero-shot on a non-CLIP model": (["run", "-e", "zero-shot"], None, "needs a CLIP checkpoint"),
    "patch-hit on a root without boxes": (["run", "-e", "patch-hit,knn"], _no_boxes, "no boxes found"),
    "classify with classes the head cannot place": (["classify"], None, "cannot map the dataset's 4 classes"),
    "k larger than the training set": (["knn", "--ks", "10,500"], None, "--ks 500: larger than the 24 training"),
    "unparsable pooling": (["knn", "-p", "last:k=abc"], None, "last:k=abc"),
    "negative limit": (["knn", "--limit", "-5"], None, "--limit -5"),
    "LAST k above the patch count": (["patch-hit", "-p", "last:k=17"], None, "exceeds the 16 patches"),
    "unknown evaluator": (["run", "-e", "patch-hit,bogus"], None, "unknown evaluator 'bogus'"),
    "bad dtype": (["knn", "--dtype", "fp8"], None, "--dtype 'fp8'"),
    "probe hold-out that holds out nothing": (["linear-probe"], None, "--holdout-fraction 0.1: holds out no image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validation_fails_before_any_forward(case, with_train, detectron2_ckpt, tmp_path, forwarded):
    args, mutate, message = CASES[case]
    root = mutate(with_train) if mutate else with_train
    t0 = time.perf_counter()
    r = cli(*args, "-c", detectron2_ckpt, "-r", root, "-o", tmp_path / "out", "--workers", 0, "--no-progress")
    assert r.exit_code == 2, err(r)
    assert message in err(r) and "Traceback" not in err(r)
    assert len([ln for ln in err(r).splitlines() if ln.startswith("Error:")]) == 1
    assert forwarded == [] and time.perf_counter() - t0 < 20
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_bad_output_folder_fails_before_any_forward(where, imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    (tmp_path / "f").write_text("x")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "run",
           "unwritable": Path("/proc/lastvit-eval-test/run")}[where]
    r = cli("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", out, "--workers", 0, "--no-progress")
    assert r.exit_code == 2 and forwarded == [], err(r)
    assert str(out) in err(r) and "Traceback" not in err(r)


def test_a_run_owns_its_output_folder(imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    out = tmp_path / "run"
    base = ["patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", out, "--workers", 0, "--no-progress"]
    assert cli(*base).exit_code == 0
    before = (out / "last-k1" / "metrics.json").read_text()
    n = len(forwarded)
    r = cli(*base, "-p", "cls")  # a second run into the same folder: refused, nothing lost
    assert r.exit_code == 2 and "--overwrite" in err(r) and len(forwarded) == n
    assert (out / "last-k1" / "metrics.json").read_text() == before
    import socket

    lock = {"pid": 1, "host": socket.gethostname(), "started": "now"}  # a live process holds it
    (out / ".lastvit-eval.lock").write_text(json.dumps(lock))
    r = cli(*base, "-p", "cls", "--overwrite")
    assert r.exit_code == 2 and "in use by another lastvit-eval (pid 1" in err(r)
    (out / ".lastvit-eval.lock").unlink()
    r = cli(*base, "-p", "cls", "--overwrite")
    assert r.exit_code == 0, err(r)
    assert sorted(p.name for p in out.iterdir()) == ["cls", "plan.json"]  # the stale last-k1 run is gone


def test_classify_maps_wnids_to_imagenet_head_indices(tmp_path):
    """A 4-wnid subset whose wnids are ImageNet classes 7, 107, 390 and 954: labels compared with those outputs,
    checked against torchvision's own forward and the timm synset list."""
    from timm.data import ImageNetInfo

    from lastvit_eval.data.transform import torchvision_vit
    from lastvit_eval.engine.dataset import load_rgb

    wnids = ImageNetInfo().label_names()
    chosen = {wnids[i]: i for i in (954, 7, 390, 107)}
    root = tmp_path / "inet"
    for n, w in enumerate(sorted(chosen)):
        for j in range(3):
            write_jpeg(root / "val" / w / f"{w}_{j}.JPEG", (48 + 8 * j, 40), seed=10 * n + j)
    m = tiny_vit(num_classes=1000, seed=3)
    with torch.no_grad():  # make the head informative: boost the four classes' rows
        for i in chosen.values():
            m.heads.head.bias[i] += 0.5
    ckpt = tmp_path / "vit1000.pth"
    torch.save(m.state_dict(), ckpt)
    r = cli("classify", "-c", ckpt, "-r", root, "-p", "cls", "-o", tmp_path / "out", "--workers", 0, "--no-progress")
    assert r.exit_code == 0, err(r)
    rec = json.loads((tmp_path / "out" / "cls" / "metrics.json").read_text())
    assert rec["info"]["classify"]["class_map"]["source"] == "ImageNet-1k wnid order"
    assert rec["info"]["classify"]["class_map"]["mapping"] == {w: chosen[w] for w in sorted(chosen)}
    t = torchvision_vit(32)
    hits = []
    for w in sorted(chosen):
        for p in sorted((root / "val" / w).glob("*.JPEG")):
            x = t.normalize(t.pixels(load_rgb(p))[None])
            with torch.no_grad():
                hits.append(int(m(x).argmax(1)) == chosen[w])
    assert rec["metrics"]["classify.top1"]["value"] == pytest.approx(100 * np.mean(hits))
    rows = pd.read_csv(tmp_path / "out" / "cls" / "classify_rows.csv")
    assert set(rows["label"]) == set(chosen.values())


@dataclass(frozen=True)
class ToyOptions:
    power: float = 2.0


@pytest.fixture
def toy():
    @register
    class ToyNorm(Evaluator):
        name = "toy-norm"
        description = "Mean p-norm of the pooled token (a test evaluator)."
        taps = frozenset({"pooled"})
        metrics = {"toy_norm.*": MetricInfo("score", "none")}
        Options = ToyOptions

        def evaluate(self, inputs: Inputs) -> Result:
            x = inputs.test.get("pooled")
            norms = np.linalg.norm(x, ord=self.options.power, axis=1)
            rows = pd.DataFrame({"image_id": inputs.test.ids, "norm": norms})
            return Result(self.name, {"toy_norm.mean": Metric(float(norms.mean()), n=len(norms))}, rows=rows)

    yield ToyNorm
    EVALUATORS.pop("toy-norm", None)


def test_a_toy_evaluator_runs_through_run_and_feature_files(toy, imagenet_root, detectron2_ckpt, tmp_path):
    r = cli("run", "-e", "toy-norm", "-c", detectron2_ckpt, "-r", imagenet_root, "-p", "gap", "-o", tmp_path / "img",
            "--workers", 0, "--no-progress")
    assert r.exit_code == 0, err(r)
    r = cli("extract", "-c", detectron2_ckpt, "-r", imagenet_root, "-p", "gap", "-o", tmp_path / "f.npz",
            "--workers", 0, "--no-progress")
    assert r.exit_code == 0, err(r)
    r = cli("run", "-e", "toy-norm", "--test-features", tmp_path / "f.npz", "-o", tmp_path / "files")
    assert r.exit_code == 0, err(r)
    a, b = (json.loads((tmp_path / d / "gap" / "metrics.json").read_text()) for d in ("img", "files"))
    assert a["metrics"]["toy_norm.mean"]["value"] == pytest.approx(b["metrics"]["toy_norm.mean"]["value"], rel=1e-6)
    assert a["metrics"]["toy_norm.mean"]["unit"] == "score"
    with np.load(tmp_path / "f.npz") as z:  # by hand from the stored features
        assert b["metrics"]["toy_norm.mean"]["value"] == pytest.approx(
            float(np.linalg.norm(z["a/pooled/gap"], axis=1).mean()), rel=1e-6)
    assert len(pd.read_csv(tmp_path / "img" / "gap" / "toy_norm_rows.csv")) == 8


def test_a_chain_of_commands_forwards_each_image_once(with_train, detectron2_ckpt, tmp_path, forwarded):
    common = ["-c", detectron2_ckpt, "-r", with_train, "--workers", 0, "--no-progress"]
    cmap = tmp_path / "map.txt"
    cmap.write_text("".join(f"{w} {i}\n" for i, w in enumerate(sorted(p.name for p in (with_train / "val").iterdir()))))
    steps = [
        ["patch-hit", *common, "-o", tmp_path / "a"],
        ["extract", *common, "-o", tmp_path / "val.npz"],
        ["run", "-e", "patch-hit,classify", "--class-map", cmap, *common, "-o", tmp_path / "b"],
        ["extract", *common, "--split", "train", "-o", tmp_path / "train.npz"],
        ["knn", "--train-features", tmp_path / "train.npz", "--test-features", tmp_path / "val.npz", "-p", "last",
         "--ks", "3", "-o", tmp_path / "c"],
        ["run", "-e", "knn,linear-probe", "--ks", "3", "--holdout-fraction", "0.34", *common, "-o", tmp_path / "d"],
    ]
    per_step = []
    for s in steps:
        before = sum(forwarded)
        r = cli(*s)
        assert r.exit_code == 0, (s[0], err(r))
        per_step.append(sum(forwarded) - before)
    # patch-hit: its 5 kept images; extract: the other 3 val images; train: 24 images once; then nothing
    assert per_step == [5, 3, 0, 24, 0, 0]


def test_dry_run_says_what_is_stored_and_writes_nothing(imagenet_root, detectron2_ckpt, tmp_path, forwarded):
    args = ["patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "--workers", 0, "--no-progress"]
    r = runner.invoke(app, [str(a) for a in [*args, "-o", tmp_path / "x", "--dry-run", "--json"]])
    assert r.exit_code == 0, err(r)
    plan = json.loads(r.stdout)
    assert plan["splits"]["test"]["images"] == 5 and plan["splits"]["test"]["to_forward"] == 5
    assert plan["forward_passes"] == 5 and forwarded == [] and not (tmp_path / "x").exists()
    assert cli(*args, "-o", tmp_path / "y").exit_code == 0
    r = runner.invoke(app, [str(a) for a in [*args, "-o", tmp_path / "x", "--dry-run", "--json"]])
    plan = json.loads(r.stdout)
    assert plan["splits"]["test"]["stored"] == 5 and plan["forward_passes"] == 0


def test_json_summary_on_stdout(imagenet_root, detectron2_ckpt, tmp_path):
    r = runner.invoke(app, ["patch-hit", "-c", str(detectron2_ckpt), "-r", str(imagenet_root), "-o",
                            str(tmp_path / "o"), "--workers", "0", "--no-progress", "--json"])
    assert r.exit_code == 0, err(r)
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["runs"]["last-k1"]["metrics"]["patch_hit.top1"]["unit"] == "percent"


def test_hub_baselines_default_to_cls_and_files_say_their_default(imagenet_root, detectron2_ckpt, tmp_path):
    from lastvit_eval.models import LoadOptions
    from lastvit_eval.plan import RunRequest, build_plan

    plan = build_plan(RunRequest(evaluators=("patch-hit",), checkpoint=str(detectron2_ckpt), root=imagenet_root,
                                 load=LoadOptions(), output_dir=tmp_path / "o"))
    assert [p.name for p in plan.poolings] == ["last-k1"] and plan.pooling_default
    r = cli("patch-hit", "-c", detectron2_ckpt, "-r", imagenet_root, "-o", tmp_path / "o2", "--workers", 0,
            "--no-progress")
    assert "pooling last-k1 is a default" in err(r)


def _imports(path: Path, package: str) -> set[str]:
    """Modules of the package that `path` imports (module or function level; TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    mod = package + "." + ".".join(path.relative_to(Path(lastvit_eval.__file__).parent).with_suffix("").parts)
    mod = mod.removesuffix(".__init__")
    pkg_parts = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = set()
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package)}
            continue
        base = pkg_parts[: len(pkg_parts) - node.level + 1] if node.level else []
        target = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
        if not target.startswith(package):
            continue
        for a in node.names:
            out.add(f"{target}.{a.name}")
            out.add(target)
    return out


def test_no_import_cycle():
    root = Path(lastvit_eval.__file__).parent
    files = {p for p in root.rglob("*.py")}
    names = {}
    for p in files:
        rel = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__").removesuffix("__init__")
        names["lastvit_eval" + ("." + rel if rel else "")] = p
    graph = {m: {t for t in _imports(p, "lastvit_eval") if t in names and t != m} for m, p in names.items()}
    # a package's __init__ importing its own submodules is not a circle through the package itself
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(t):], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(graph) > 40
