"""What the new architectures cost at load time: the `--arch` fit search and a DINOv2 file load.

1. The error path that lists the timm names fitting a state dict's shapes (`timm_vit.fitting_names`, cold:
   its per-process cache cleared each round) for DeiT-S distilled, EVA02-S and a ViT-B/16, read against
   one meta-device build of the same model in the same process.
2. Loading a DINOv2 ViT-S/14-reg4 file in facebookresearch/dinov2's layout (block chunks, 518 px grid,
   evaluated at 224) through `load_model`, read against what timm itself does for the same weights:
   `create_model(img_size=224)` + `load_state_dict(checkpoint_filter_fn(...))`.
Median of `--rounds`; the load average is stated because the machine is shared. Writes results/bench_arch_fit.md.

    PYTHONPATH=. python benchmarks/bench_arch_fit.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIT_CASES = ["deit_small_distilled_patch16_224", "eva02_small_patch14_224", "vit_base_patch16_224"]
DINOV2 = "vit_small_patch14_reg4_dinov2"


def _meta(name: str):
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def fit_rows(rounds: int) -> list[str]:
    from lastvit_eval.models import timm_vit

    rows = []
    for name in FIT_CASES:
        sd = _meta(name).state_dict()
        build = [common.seconds(lambda n=name: _meta(n)) for _ in range(rounds)]
        search, found = [], []
        for _ in range(rounds):
            timm_vit._FITS.clear()
            search.append(common.seconds(lambda s=sd, out=found: out.append(timm_vit.fitting_names(s))))
        names = found[-1]
        rows.append(f"| {name} | {statistics.median(search):.2f} | {statistics.median(build):.3f} | "
                    f"{statistics.median(search) / statistics.median(build):.0f}x | {name in names} | "
                    f"{', '.join(names)} |")
    return rows


def dinov2_row(rounds: int) -> str:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    from lastvit_eval.models import load_model

    torch.manual_seed(0)
    ref = timm.create_model(DINOV2, pretrained=False)
    sd = dict(ref.state_dict())
    cls_pos = torch.zeros(1, 1, sd["cls_token"].shape[-1])
    flat = {"register_tokens": sd.pop("reg_token"), "cls_token": sd.pop("cls_token") - cls_pos,
            "pos_embed": torch.cat([cls_pos, sd.pop("pos_embed")], 1), "mask_token": torch.zeros(1, 384), **sd}
    # two block chunks of 6, keys blocks.<chunk>.<i>.* (timm's own filter does not read these: it gets `flat`)
    chunked = {f"blocks.{int(k.split('.')[1]) // 6}.{k.split('.', 1)[1]}" if k.startswith("blocks.") else k: v
               for k, v in flat.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path, flat_path = Path(tmp) / "dinov2_vits14_reg4_pretrain.pth", Path(tmp) / "flat.pth"
        torch.save(chunked, path)
        torch.save(flat, flat_path)
        ours = [common.seconds(lambda: load_model(path)) for _ in range(rounds)]

        def timm_path():
            m = timm.create_model(DINOV2, pretrained=False, img_size=224)
            m.load_state_dict(checkpoint_filter_fn(torch.load(flat_path, weights_only=True), m))

        theirs = [common.seconds(timm_path) for _ in range(rounds)]
    return (f"| DINOv2 ViT-S/14 reg4 file (518 -> 224; ours chunked, timm's unchunked) | {common.spread(ours)} | {common.spread(theirs)} | "
            f"{statistics.median(ours) / statistics.median(theirs):.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_arch_fit.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    before = common.load_average()
    fits = fit_rows(args.rounds)
    load = dinov2_row(args.rounds)
    after = common.load_average()
    lines = ["# Architecture fit search and DINOv2 load", "",
             f"{common.machine_line(torch.get_num_threads())}; {common.load_text(before, after)}; "
             f"median of {args.rounds} rounds.", "",
             "`--arch` missing or wrong: the error lists the timm names that fit the tensors (every `vit_*` / "
             "`deit*` / `eva*` name with the file's patch size built on the meta device with one block, the "
             "survivors at full depth). Cold search vs one meta build of the model itself:", "",
             "| shapes of | search s | one meta build s | ratio | own name found | names that fit |",
             "|---|---|---|---|---|---|", *fits, "",
             "Loading a DINOv2 release file through `load_model` (detect, key mapping, strict load, key report, "
             "resample to 224) vs timm's own path for the same weights (min / median / max s):", "",
             "| case | lastvit-eval s | timm create + filter + load s | ratio |", "|---|---|---|---|", load, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
