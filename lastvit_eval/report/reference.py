"""Published numbers beside measured ones: `report --reference paper` (or a CSV of the same columns).

The paper's numbers ship as `assets/paper_reference.csv`, one row per (metric, supervision, architecture,
dataset[, CorLoc method]) with the baseline and the LaSt value. A measured row is matched on what its
`metrics.json` records, never on file names:

* supervision from the model family (torchvision: label, DINO / DINOv2: dino, OpenCLIP: clip; timm and
  ResNet names say `dino` / `clip` / neither; a ResNet loaded from a main_dino checkpoint is dino);
* architecture from the recorded shapes: `ViT-<size>/<patch>` by width, `+reg` when it has registers,
  `ResNet-<depth>`;
* dataset from the recorded data source: ImageNet-1k val only for a 1000-class ImageNet-style split (a
  subset is not the published protocol), `voc07-trainval` / `voc12-trainval` / `voc12-val` from a VOC
  devkit path, `coco20k` only when the COCO image list held LOST's 19,817 ids (same sorted-id digest), the
  segmentation benchmark's name for zero-shot-seg;
* CorLoc rows also on the method.

Both published values are shown (baseline and LaSt): which one a run should be read against depends on
the checkpoint, which a file cannot tell. Rows with no published counterpart get empty cells.
"""

from __future__ import annotations

import fnmatch
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import InputError

COLUMNS = ["claim", "metric", "supervision", "arch", "dataset", "method", "baseline", "last", "baseline_label",
           "source"]
VIT_SIZES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1408: "g", 1536: "g"}
RECOGNITION = ("patch_hit.", "classify.", "knn.", "linear_probe.", "zero_shot.")


def load_reference(spec: str) -> pd.DataFrame:
    """`paper` (the shipped table) or a CSV path with the same columns."""
    if spec == "paper":
        text = resources.files("lastvit_eval").joinpath("assets/paper_reference.csv").read_text(encoding="utf-8")
        from io import StringIO

        source: str | Path = "paper_reference.csv"
        df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    else:
        source = Path(spec)
        if not source.is_file():
            raise InputError(f"{source}: --reference is neither 'paper' nor an existing CSV file")
        try:
            df = pd.read_csv(source, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise InputError(f"{source}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{source}: reference table lacks columns {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    for col in ("baseline", "last"):
        bad = [v for v in df[col] if v.strip() and not _is_number(v)]
        if bad:
            raise InputError(f"{source}: column {col!r} holds {bad[0]!r}, not a number")
        df[col] = pd.to_numeric(df[col].where(df[col].str.strip() != ""), errors="coerce")
    return df[COLUMNS]


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def supervision(model: dict) -> str:
    family = str(model.get("family") or "")
    text = " ".join(str(model.get(k) or "") for k in ("name", "source")).lower()
    text += " " + str((model.get("arch") or {}).get("config") or "").lower()
    if family == "torchvision" and "resnet" not in text:
        return "label"
    steps = " ".join(str(s) for s in model.get("key_mapping") or [])
    if "MAE's evaluation transform" in steps:
        return "mae"  # an MAE encoder (recognised by its tensors): self-supervised, no row of the paper's
    if family == "resnet" and ("checkpoint['teacher']" in steps or "checkpoint['student']" in steps
                               or "under 'backbone.'" in steps):
        return "dino"  # a main_dino ResNet: the loader took its teacher / student backbone
    if family in ("dino", "dinov2"):
        return "dino"
    if family == "openclip":
        return "clip"
    if "dino" in text:
        return "dino"
    if any(w in text for w in ("clip", "siglip")):
        return "clip"
    return "label"


def arch_key(arch: dict) -> str:
    name = str(arch.get("name") or "").lower()
    if "resnet" in name or name.startswith("rn"):
        depth = re.search(r"(\d+)", name)
        return f"ResNet-{depth.group(1)}" if depth else "ResNet"
    width, patch = arch.get("width"), arch.get("patch_size")
    if not width or not patch:
        return ""
    key = f"ViT-{VIT_SIZES.get(int(width), f'w{width}')}/{patch}"
    return key + "+reg" if int(arch.get("num_registers") or 0) > 0 else key


def _strings(section: dict) -> str:
    return " ".join(str(v) for v in section.values() if isinstance(v, (str, int, float)))


def dataset_key(metric: str, record: dict) -> str:
    prov = record.get("provenance") or {}
    ds = prov.get("dataset") or {}
    text = _strings(ds)
    if metric.startswith(RECOGNITION):
        return "imagenet-val" if ds.get("classes") == 1000 else ""
    if metric.startswith("zero_shot_seg."):
        info = (record.get("info") or {}).get("zero-shot-seg") or {}
        return str(info.get("dataset") or ds.get("seg_dataset") or ds.get("name") or "")
    if "coco" in text.lower():
        return "coco20k" if _is_coco20k(ds.get("image_list")) else "coco"
    year = re.search(r"VOC(2007|2012)", text)
    if not year:
        return ""
    image_set = ds.get("image_set") or (re.search(r"ImageSets/\w+/(\w+)\.txt", text) or [None, ""])[1]
    return f"voc{year.group(1)[2:]}-{image_set}" if image_set else f"voc{year.group(1)[2:]}"


def _is_coco20k(image_list) -> bool:
    """COCO20k only when the run's list held LOST's 19,817 ids, whatever its file was called (a custom subset is
    not the published protocol): decided once, from the ids' digest, when the run wrote its record
    (data/coco_subset.describe_image_list)."""
    return isinstance(image_list, dict) and image_list.get("coco20k") is True


def method_of(record: dict) -> str:
    for section in (record.get("info") or {}).values():
        if isinstance(section, dict) and "method" in section:
            return str(section["method"])
    return ""


def attach(long: pd.DataFrame, records: dict[tuple, dict], reference: pd.DataFrame) -> pd.DataFrame:
    """The long table's rows that have a published counterpart, with `paper_*` columns beside the value."""
    rows = []
    for _, r in long.iterrows():
        rec = records.get((r["checkpoint"], r["pooling"], r["dataset"], r["run"]))
        if rec is None:
            continue
        model = (rec.get("provenance") or {}).get("model") or {}
        sup, arch = supervision(model), arch_key(model.get("arch") or {})
        ds = dataset_key(r["metric"], rec)
        method = method_of(rec) if r["metric"].startswith("corloc.") else ""
        hits = reference[
            reference["metric"].map(lambda pat, m=r["metric"]: fnmatch.fnmatchcase(m, pat))
            & (reference["supervision"] == sup) & (reference["arch"] == arch) & (reference["dataset"] == ds)
            & (reference["method"] == method)
        ]
        if hits.empty:
            continue
        ref = hits.iloc[0]
        rows.append({**{c: r[c] for c in ("checkpoint", "pooling", "dataset", "run", "metric", "value", "ci_low",
                                          "ci_high", "n")},
                     "paper_model": f"{sup} {arch}", "paper_dataset": ds, "paper_baseline": ref["baseline"],
                     "paper_baseline_label": ref["baseline_label"], "paper_last": ref["last"],
                     "paper_source": ref["source"]})
    return pd.DataFrame(rows, columns=["checkpoint", "pooling", "dataset", "run", "metric", "value", "ci_low",
                                       "ci_high", "n", "paper_model", "paper_dataset", "paper_baseline",
                                       "paper_baseline_label", "paper_last", "paper_source"])


def display(matched: pd.DataFrame) -> pd.DataFrame:
    """What people read: measured value with its interval, then the two published values."""
    from .aggregate import format_cell

    out = matched[["checkpoint", "pooling", "dataset", "metric"]].copy()
    out["measured"] = [format_cell(v, lo, hi) for v, lo, hi in
                       zip(matched["value"], matched["ci_low"], matched["ci_high"], strict=True)]
    out["paper model / data"] = matched["paper_model"] + " / " + matched["paper_dataset"]
    out["paper baseline"] = [("" if pd.isna(v) else f"{v:.1f} ({label})") for v, label in
                             zip(matched["paper_baseline"], matched["paper_baseline_label"], strict=True)]
    out["paper LaSt"] = ["" if pd.isna(v) else f"{v:.1f}" for v in matched["paper_last"]]
    return out


def write_reference(matched: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    from .aggregate import CSV_FLOAT
    from .write import staged_writes, to_markdown

    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "reference.csv", "md": out_dir / "reference.md"}
    with staged_writes() as w:
        w.text(paths["csv"], matched.to_csv(index=False, float_format=CSV_FLOAT, lineterminator="\n"))
        w.text(paths["md"], to_markdown(display(matched)) if len(matched) else
               "No measured metric has a published counterpart (see README, Reproducing the paper).\n")
    return paths
