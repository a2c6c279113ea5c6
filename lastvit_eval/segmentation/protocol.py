"""The zero-shot segmentation protocol SCLIP and NACLIP share, read from one data file.

Sources (the settings themselves live in `lastvit_eval/assets/seg_datasets.json`, each with a `source`):

* SCLIP, github.com/wangf3014/SCLIP @ 57fa9aa: `configs/cfg_*.py` (per dataset: `Resize(scale=(2048, S),
  keep_ratio=True)`, `prob_thd`, `logit_scale`), `configs/cls_*.txt` (class names with synonyms),
  `clip_segmentor.py` (`forward_slide`: 224x224 windows, stride 112, per-window logits upsampled to the
  window, summed into a canvas and divided by a count map, then upsampled bilinearly to the label map's
  size; `postprocess_result`: softmax(logit_scale * cosine) over all queries, max over a class's
  synonyms, argmax, pixels whose best probability is under `prob_thd` set to class 0 = background).
* NACLIP, github.com/sinahmr/NACLIP @ cbb720d (v1): the same windows, resizes and thresholds, logit
  scale 40 everywhere; @ defb7c9 (v2) drops sliding windows on VOC and resizes COCO-Stuff to 336.
* mmsegmentation: layouts from its preparation scripts, `reduce_zero_label` (0 -> 255, v -> v - 1),
  and `IoUMetric` (mIoU = nan-mean of per-class IoU over the accumulated areas; ignore label excluded).

Resize: mmcv's keep-ratio rule `scale = min(long / max(h, w), short / min(h, w))`, new size
`int(x * scale + 0.5)`, bilinear (cv2 INTER_LINEAR; here torch bilinear, align_corners=False, no
antialias, which samples the same points). Defaults are the settings both works share; `variant`
selects one work's departures (`sclip`, `naclip_v2`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.transform import CLIP_MEAN, CLIP_STD
from ..errors import InputError

ASSET_FILE = "seg_datasets.json"
VARIANTS = ("shared", "sclip", "naclip_v2")


def _asset(name: str):
    return resources.files("lastvit_eval").joinpath("assets", name)


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(_asset(ASSET_FILE).read_text(encoding="utf-8"))


def dataset_names() -> list[str]:
    return list(_table()["datasets"])


def canonical_name(name: str) -> str:
    """A command-line spelling (`coco-stuff`, `coco-object`) -> the data file's key (`coco_stuff164k`)."""
    key = str(name).strip().lower()
    return _table().get("aliases", {}).get(key, key.replace("-", "_"))


def parse_class_names(text: str, source: str) -> list[list[str]]:
    """One class a line, synonyms separated by commas (the cls_*.txt format of SCLIP / NACLIP)."""
    classes = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        names = [s.strip() for s in line.split(",")]
        if any(not s for s in names):
            raise InputError(f"{source}: line {n} has an empty class name")
        classes.append(names)
    if not classes:
        raise InputError(f"{source}: no class names")
    return classes


def read_class_names(path: str | Path) -> list[list[str]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read class names ({e.__class__.__name__})") from e
    return parse_class_names(text, str(path))


@dataclass(frozen=True)
class SegProtocol:
    """Everything the evaluator needs for one benchmark; `classes[i]` = the synonyms of class i."""

    name: str
    variant: str
    title: str
    classes: tuple[tuple[str, ...], ...]
    num_classes: int
    background: bool  # class 0 is background: prob_threshold applies
    reduce_zero_label: bool
    ignore_index: int
    resize: tuple[int, int] | None  # mmcv (long, short) bounds; None: keep the image size
    window: int | None  # None: one forward over the whole (resized) image
    stride: int | None
    logit_scale: float
    prob_threshold: float
    area_threshold: float | None
    layout: dict
    raw_labels: dict | None
    source: str

    @property
    def queries(self) -> list[str]:
        """Text prompts' class words, flattened over synonyms (order = `query_class`)."""
        return [q for names in self.classes for q in names]

    @property
    def query_class(self) -> list[int]:
        return [i for i, names in enumerate(self.classes) for _ in names]

    @property
    def class_names(self) -> list[str]:
        """One name per class for tables: the first synonym, and `background` for class 0 where the
        background is prompted through its synonyms (voc21 and coco_object list sky, wall, tree, ...)."""
        names = [n[0] for n in self.classes]
        if self.background:
            names[0] = "background"
        return names

    def prompts(self):
        """Queries x OpenAI's 80 ImageNet templates: SCLIP / NACLIP's `openai_imagenet_template` is the same
        list as open_clip's OPENAI_IMAGENET_TEMPLATES; embed with `models.clip_text.text_classifier`."""
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        from ..models.clip_text import Prompts

        templates = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
        return Prompts(tuple(self.queries), templates, f"{self.name} class names ({self.variant}) x OpenAI templates")

    def to_dict(self) -> dict:
        """What a result records about the protocol."""
        return {
            "dataset": self.name, "variant": self.variant, "num_classes": self.num_classes,
            "resize": list(self.resize) if self.resize else None, "window": self.window, "stride": self.stride,
            "logit_scale": self.logit_scale, "prob_threshold": self.prob_threshold,
            "area_threshold": self.area_threshold, "reduce_zero_label": self.reduce_zero_label,
            "ignore_index": self.ignore_index, "source": self.source,
        }


def load_protocol(name: str, variant: str = "shared", classes_file: str | Path | None = None) -> SegProtocol:
    """Settings of benchmark `name` (see `dataset_names()`); `classes_file` overrides the shipped names."""
    table = _table()
    name = canonical_name(name)
    if name not in table["datasets"]:
        raise InputError(f"unknown segmentation dataset {name!r}; known: {', '.join(table['datasets'])}")
    if variant not in VARIANTS:
        raise InputError(f"unknown protocol variant {variant!r}; known: {', '.join(VARIANTS)}")
    entry = table["datasets"][name]
    cfg = {**table["defaults"], **entry}
    if variant != "shared":
        cfg.update(entry.get("variants", {}).get(variant, {}))
    if classes_file is None:
        classes = parse_class_names(_asset(entry["classes_file"]).read_text(encoding="utf-8"), entry["classes_file"])
        where = entry["classes_file"]
    else:
        classes = read_class_names(classes_file)
        where = str(classes_file)
    if len(classes) != entry["num_classes"]:
        raise InputError(f"{where}: {len(classes)} classes, {name} has {entry['num_classes']}")
    slide = cfg["slide"]
    return SegProtocol(
        name=name, variant=variant, title=entry["title"], classes=tuple(tuple(c) for c in classes),
        num_classes=int(entry["num_classes"]), background=bool(cfg["background"]),
        reduce_zero_label=bool(cfg["reduce_zero_label"]), ignore_index=int(cfg["ignore_index"]),
        resize=tuple(cfg["resize"]) if cfg["resize"] else None,
        window=int(slide["window"]) if slide else None, stride=int(slide["stride"]) if slide else None,
        logit_scale=float(cfg["logit_scale"]), prob_threshold=float(cfg["prob_threshold"]),
        area_threshold=None if cfg["area_threshold"] is None else float(cfg["area_threshold"]),
        layout=dict(entry["layout"]), raw_labels=entry.get("raw_labels"), source=entry["source"],
    )


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv `rescale_size` with a (long, short) bound: the largest keep-ratio size inside both bounds."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def prepare_image(
    img: Image.Image,
    resize: tuple[int, int] | None,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> torch.Tensor:
    """RGB PIL image -> float [3, h, w] resized by the protocol's rule and normalized."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).copy())
    x = x.permute(2, 0, 1)[None]
    if resize is not None:
        size = rescale_size(x.shape[-2], x.shape[-1], resize)
        if size != tuple(x.shape[-2:]):
            # mmcv resizes uint8 images and keeps uint8: round like it does
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s)[0]
