"""ResNet reference column: torchvision and DINO main_dino ResNets match torchvision's own forward."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models import resnet18, resnet50
from typer.testing import CliRunner

from lastvit_eval.app import app
from lastvit_eval.errors import InputError
from lastvit_eval.models import LoadOptions, load_model
from lastvit_eval.pooling import PoolingSpec, pool

runner = CliRunner()


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random init leaves BatchNorm at identity statistics: perturb them so a wrong mapping shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "bn" in name or "downsample.1" in name:
                if name.endswith("running_var"):
                    t.copy_(torch.rand_like(t) + 0.5)
                elif t.is_floating_point():
                    t.add_(torch.randn_like(t) * 0.1)
    return model.eval()


def rn50(seed: int = 0, fc: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = resnet50(weights=None)
    if not fc:
        m.fc = torch.nn.Identity()  # what main_dino does to a torchvision backbone
    return _perturbed(m, seed)


def _reference(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's own forward: layer4 feature map, avgpool output (flattened) and the model output."""
    seen = {}
    h1 = model.layer4.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    h2 = model.avgpool.register_forward_hook(lambda m, i, o: seen.setdefault("gap", o.flatten(1)))
    with torch.no_grad():
        out = model(x)
    h1.remove()
    h2.remove()
    return seen["map"], seen["gap"], out


def _check(loaded, ref, size: int = 64) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    fmap, gap_ref, out = _reference(ref, x)
    with torch.no_grad():
        tokens = loaded.backbone.tokens(x)
        gap = pool(tokens, loaded.backbone.num_prefix_tokens, PoolingSpec("gap")).token
        logits = loaded.backbone.head(gap)
    assert tokens.shape == (2, (size // 32) ** 2, 2048)
    assert (tokens - fmap.flatten(2).transpose(1, 2)).abs().max() < 1e-4  # row-major patch order
    assert (gap - gap_ref).abs().max() < 1e-4
    if logits is None:
        assert (gap - out).abs().max() < 1e-4  # fc = Identity: the model's output is the GAP feature
    else:
        assert (logits - out).abs().max() < 1e-4


@pytest.mark.parametrize("form", ["plain", "model+module", "state_dict"])
def test_torchvision_resnet50_forms(tmp_path, form):
    ref = rn50(seed=3)
    sd = ref.state_dict()
    obj = {"plain": sd, "model+module": {"model": {"module." + k: v for k, v in sd.items()}, "epoch": 89},
           "state_dict": {"state_dict": sd}}[form]
    torch.save(obj, tmp_path / "rn50.pth")
    loaded = load_model(tmp_path / "rn50.pth")
    a = loaded.arch
    assert (a.family, a.name, a.patch_size, a.grid, a.width, a.num_prefix_tokens, a.num_classes) == (
        "resnet", "resnet50", 32, (7, 7), 2048, 0, 1000)
    t = loaded.transform
    assert (t.resize, t.crop, t.interpolation) == (256, 224, "bilinear")
    _check(loaded, ref)


def test_dino_main_dino_resnet50(tmp_path):
    """teacher `backbone.*` / student `module.backbone.*`, fc = Identity, the DINO head dropped."""
    teacher, student = rn50(seed=4, fc=False), rn50(seed=5, fc=False)
    head = {"head.mlp.0.weight": torch.randn(16, 2048), "head.mlp.0.bias": torch.randn(16),
            "head.last_layer.weight_g": torch.randn(8, 1), "head.last_layer.weight_v": torch.randn(8, 16)}
    torch.save({"teacher": {**{"backbone." + k: v for k, v in teacher.state_dict().items()}, **head},
                "student": {**{"module.backbone." + k: v for k, v in student.state_dict().items()},
                            **{"module." + k: v for k, v in head.items()}},
                "epoch": 100, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "checkpoint.pth")
    loaded = load_model(tmp_path / "checkpoint.pth")
    assert loaded.keys.format.startswith("main_dino")
    assert sorted(loaded.keys.dropped) == sorted(head)
    assert loaded.arch.num_classes is None and loaded.backbone.head(torch.zeros(1, 2048)) is None
    assert loaded.transform.interpolation == "bicubic"  # DINO's evaluation transform
    _check(loaded, teacher)
    _check(load_model(tmp_path / "checkpoint.pth", LoadOptions(checkpoint_key="student")), student)


def test_last_and_patch_grid_at_224(tmp_path):
    """At 224 px the grid is 7x7 (32-pixel cells); LAST picks among the 49 layer4 tokens."""
    ref = rn50(seed=6)
    torch.save(ref.state_dict(), tmp_path / "rn50.pth")
    loaded = load_model(tmp_path / "rn50.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = loaded.backbone.tokens(x)
    assert tokens.shape == (1, 49, 2048)
    p = pool(tokens, 0, PoolingSpec("last", topk=1))
    assert p.votes.shape == (1, 49) and p.votes.sum() == 2048
    # every pooled channel is that channel's value at some patch (top-1 selection)
    assert bool(((tokens[0] - p.token[0]).abs().min(dim=0).values < 1e-6).all())


def test_wrong_architecture_names_the_shapes(tmp_path):
    sd = rn50(seed=7).state_dict()
    sd["layer3.0.conv2.weight"] = torch.zeros(256, 128, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(InputError, match=r"layer3\.0\.conv2\.weight.*\(256, 128, 3, 3\).*\(256, 256, 3, 3\)"):
        load_model(tmp_path / "bad.pth")


@pytest.fixture
def hub_resnet18(tmp_path, monkeypatch):
    """A perturbed ResNet-18 saved where torch.hub caches IMAGENET1K_V1, with every cache and hub offline."""
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from torchvision.models import ResNet18_Weights

    ckpt = tmp_path / "home" / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    ref = _perturbed(resnet18(weights=None), 0)
    torch.save(ref.state_dict(), ckpt)
    return ref, ckpt


def test_hub_resnet_from_the_torch_hub_cache(hub_resnet18):
    """`torchvision:resnet18` reads torch.hub's cache; the name is checked against the tensors."""
    from torchvision.models import ResNet18_Weights

    ref, ckpt = hub_resnet18
    loaded = load_model("torchvision:resnet18")
    assert (loaded.arch.name, loaded.arch.width, loaded.source) == ("resnet18", 512, "torchvision:resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        gap = pool(loaded.backbone.tokens(x), 0, PoolingSpec("gap")).token
        assert (loaded.backbone.head(gap) - ref(x)).abs().max() < 1e-4
    ckpt.rename(ckpt.parent / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1].replace("18", "34"))
    with pytest.raises(InputError, match="offline"):
        load_model("torchvision:resnet18")
    torch.save(ref.state_dict(), ckpt.parent / "resnet50-11ad3fa6.pth")
    with pytest.raises(InputError, match=r"torchvision resnet50 expected, but the tensors are a resnet18"):
        load_model("torchvision:resnet50/IMAGENET1K_V2")


@pytest.fixture
def rn50_file(tmp_path):
    path = tmp_path / "rn50.pth"
    torch.save(rn50(seed=8).state_dict(), path)
    return path


def test_cli_patch_hit_gap_on_resnet50(imagenet_root, rn50_file, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", "gap", "-p", "last", "-c", str(rn50_file), "-r",
                            str(imagenet_root), "-o", str(out), "--workers", "0", "--no-progress"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("gap", "last-k1"):
        rec = json.loads((out / name / "metrics.json").read_text())
        assert rec["info"]["patch-hit"]["evaluated"] == 5
        assert rec["provenance"]["model"]["arch"]["patch_size"] == 32
        assert rec["provenance"]["transform"]["crop"] == 224
    import pandas as pd

    rows = pd.read_csv(out / "gap" / "patch_hit_rows.csv")
    assert rows["top_patch"].between(0, 48).all()


@pytest.mark.parametrize("pooling", ["cls", "map"])
def test_cli_refuses_cls_and_map_on_resnet_before_any_forward(imagenet_root, rn50_file, tmp_path, forwarded,
                                                              pooling):
    r = runner.invoke(app, ["run", "-e", "patch-hit", "-p", pooling, "-c", str(rn50_file), "-r", str(imagenet_root),
                            "-o", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "resnet50" in lines[0] and "use -p gap or -p last" in lines[0], r.output
    assert forwarded == []


def test_cli_knn_and_linear_probe_on_a_resnet(with_train, tmp_path):
    """ResNets through k-NN and the linear probe with GAP: metrics carry units, and k-NN equals a brute-force
    cosine k-NN (DINO weights exp(sim / 0.07)) on GAP features from torchvision's own forward (avgpool)."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from test_knn import _brute_force

    from lastvit_eval.data.transform import TransformSpec

    imagenet_root = with_train
    wnids = sorted(p.name for p in (imagenet_root / "val").iterdir())
    ref = _perturbed(resnet18(weights=None), 3)
    path = tmp_path / "rn18.pth"
    torch.save(ref.state_dict(), path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", "-e", "knn,linear-probe", "-p", "gap", "-c", str(path), "-r", str(imagenet_root),
                            "--ks", "1,3,10", "--weight-decays", "1e-2,1e-4", "--holdout-fraction", "0.34", "-o",
                            str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    rec = json.loads((out / "gap" / "metrics.json").read_text())
    m = rec["metrics"]
    assert rec["provenance"]["model"]["family"] == "resnet" and rec["provenance"]["pooling"]["kind"] == "gap"
    for key in ("knn.k1.top1", "knn.k3.top5", "knn.k10.top1", "linear_probe.top1", "linear_probe.top5"):
        assert (m[key]["unit"], m[key]["direction"], m[key]["n"]) == ("percent", "higher", 8), key
        lo, v, hi = m[key]["ci_low"], m[key]["value"], m[key]["ci_high"]
        assert 0 <= lo <= v + 1e-9 and v <= hi + 1e-9 and hi <= 100 + 1e-9, (key, lo, v, hi)  # Wilson at 100%
    assert rec["info"]["knn"]["dim"] == 512 and rec["info"]["knn"]["n_train"] == 6 * len(wnids)
    probe = rec["info"]["linear-probe"]
    assert [s["weight_decay"] for s in probe["selection"]] == [1e-2, 1e-4] and probe["chosen_weight_decay"] in (1e-2, 1e-4)

    spec = TransformSpec(**{k: v for k, v in rec["provenance"]["transform"].items() if k != "backend"})
    assert (spec.resize, spec.crop, spec.interpolation) == (256, 224, "bilinear")  # torchvision's ResNet recipe

    def gap_features(split):
        files = sorted((imagenet_root / split).rglob("*.JPEG"))
        x = spec.normalize(torch.stack([spec.pixels(Image.open(f).convert("RGB")) for f in files]))
        seen = {}
        h = ref.avgpool.register_forward_hook(lambda mod, i, o: seen.setdefault("gap", o.flatten(1)))
        with torch.no_grad():
            ref(x)
        h.remove()
        feats = torch.nn.functional.normalize(seen["gap"].double(), dim=1).numpy()
        return feats, np.array([wnids.index(f.parent.name) for f in files]), [f.stem for f in files]

    ftr, ytr, _ = gap_features("train")
    fte, yte, ids = gap_features("val")
    rows = pd.read_csv(out / "gap" / "knn_rows.csv").set_index("image_id").loc[ids]
    for k in (1, 3, 10):
        pred = _brute_force(ftr, ytr, fte, k, 0.07, len(wnids))[0]
        np.testing.assert_array_equal(rows[f"k{k}.pred"].to_numpy(), pred)
        assert m[f"knn.k{k}.top1"]["value"] == pytest.approx(100 * np.mean(pred == yte)), k


def test_image_size_is_applied_as_torchvision_runs_it(tmp_path):
    """--image-size 96 on a ResNet: torchvision's own forward at 96 px (adaptive avgpool), a 3x3 grid, the transform
    scaled with its 256/224 ratio; a size that 32-pixel cells do not tile is one clear error."""
    ref = rn50(seed=9)
    torch.save(ref.state_dict(), tmp_path / "rn50.pth")
    loaded = load_model(tmp_path / "rn50.pth", LoadOptions(image_size=96))
    a, t = loaded.arch, loaded.transform
    assert (a.image_size, a.grid, a.native_image_size, t.crop, t.resize) == (96, (3, 3), None, 96, 96 * 256 // 224)
    _check(loaded, ref, size=96)
    with pytest.raises(InputError, match=r"rn50.pth: --image-size 100 is not a positive multiple of the patch size 32"):
        load_model(tmp_path / "rn50.pth", LoadOptions(image_size=100))


def test_hub_resnet_image_size_scales_the_weights_transform(hub_resnet18):
    ref, _ = hub_resnet18
    loaded = load_model("torchvision:resnet18", LoadOptions(image_size=128))
    t = loaded.transform  # IMAGENET1K_V1: resize 256, crop 224, bilinear
    assert (loaded.arch.image_size, loaded.arch.grid, t.crop, t.resize) == (128, (4, 4), 128, 128 * 256 // 224)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        tokens = loaded.backbone.tokens(x)
        assert tokens.shape == (1, 16, 512)
        gap = pool(tokens, 0, PoolingSpec("gap")).token
        assert (loaded.backbone.head(gap) - ref(x)).abs().max() < 1e-4


def test_main_dino_provenance_is_recorded_and_read_by_the_report(tmp_path_factory):
    """A main_dino ResNet is 'dino' in the report whatever its file is called; a supervised one stays 'label'."""
    from lastvit_eval.report.reference import supervision

    tmp_path = tmp_path_factory.mktemp("rn")  # tmp_path would carry this test's name, and 'dino' with it
    assert "dino" not in str(tmp_path).lower()
    teacher = rn50(seed=10, fc=False)
    torch.save({"teacher": {"backbone." + k: v for k, v in teacher.state_dict().items()}, "epoch": 1},
               tmp_path / "checkpoint0100.pth")
    loaded = load_model(tmp_path / "checkpoint0100.pth")
    assert "training: DINO self-supervised (main_dino)" in loaded.arch.config
    assert supervision(json.loads(json.dumps(loaded.provenance()))) == "dino"
    torch.save(rn50(seed=11).state_dict(), tmp_path / "checkpoint0101.pth")
    plain = load_model(tmp_path / "checkpoint0101.pth")
    assert "DINO" not in plain.arch.config
    assert supervision(json.loads(json.dumps(plain.provenance()))) == "label"
