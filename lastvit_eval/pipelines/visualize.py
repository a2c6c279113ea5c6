"""Pictures of where the ViT looks: heatmaps over the crop, fg/bg score distributions, LAST vote maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.filters import FilterSpec
from ..data.pib import load_pib_data, targets_for
from ..engine.dataset import load_rgb
from ..engine.device import EngineSpec
from ..engine.extract import extract
from ..engine.store import StoreSpec
from ..engine.taps import TapRequest
from ..errors import InputError
from ..geometry import box_to_crop_coords
from ..models import LoadedModel
from ..pooling import PoolingSpec
from ..report import plots
from ..report.console import describe_pooling


def choose(ids: list[str], wanted: list[str] | None, sample: int, seed: int) -> list[int]:
    """Positions of the requested image ids, or a seeded sample of them."""
    if wanted:
        pos = {i: n for n, i in enumerate(ids)}
        missing = [w for w in wanted if w not in pos]
        if missing:
            raise InputError(f"--images: not among the kept images: {', '.join(missing[:5])}")
        return [pos[w] for w in wanted]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(ids), size=min(sample, len(ids)), replace=False).tolist())


def run_visualize(
    model: LoadedModel,
    root: Path,
    boxes: Path | None,
    filt: FilterSpec,
    pooling: PoolingSpec,
    engine: EngineSpec,
    out_dir: Path,
    images: list[str] | None = None,
    sample: int = 8,
    seed: int = 0,
    progress: bool = True,
    store: StoreSpec | None = None,
) -> list[Path]:
    data = load_pib_data(root, boxes, filt, engine.on_bad_image)
    picks = choose([r.image_id for r in data.records], images, sample, seed)
    t = model.transform
    taps = {"patch_scores", "votes"} if pooling.kind == "last" else {"patch_scores"}
    feats = extract(model, [data.records[i].path for i in picks], TapRequest((pooling,), frozenset(taps)), engine,
                    store=store, progress=progress, description=f"{model.name} pictures ({pooling.name})", widen=True)
    if not feats.assembled:
        return []  # a torch.distributed rank other than 0: rank 0 draws
    picks = [picks[i] for i in feats.index]
    if not picks:
        raise InputError("visualize: none of the chosen images could be decoded")
    gh, gw = model.arch.grid
    scores = feats.arrays[f"patch_scores/{pooling.name}"]
    names = _class_names(root)
    crops, grids, crop_boxes, tops, titles = [], [], [], [], []
    for row, i in enumerate(picks):
        rec, (w, h) = data.records[i], data.sizes[i]
        crops.append(t.pixels(load_rgb(rec.path)).permute(1, 2, 0).numpy())
        grids.append(scores[row].reshape(gh, gw))
        crop_boxes.append(np.array([box_to_crop_coords(b.as_tuple(), w, h, t.resize, t.crop, t.kind)
                                    for b in data.annotations[rec.image_id].boxes]).clip(0, t.crop))
        top = int(scores[row].argmax())
        tops.append((top // gw, top % gw))
        cls = data.class_of(i) or ""
        titles.append(f"{rec.image_id} {names.get(cls, cls)}".strip())
    out_dir.mkdir(parents=True, exist_ok=True)
    fg = targets_for(data, t.resize, t.crop, model.arch.patch_size, "any", rows=picks, kind=t.kind)
    hits = [bool(fg[row, r * gw + c]) for row, (r, c) in enumerate(tops)]
    what = describe_pooling(pooling)
    cosine = f"cosine(patch token, {pooling.name} token)"
    written = [plots.heatmap_grid(crops, grids, crop_boxes, out_dir / "heatmaps.png", top_patches=tops,
                                  titles=titles, hits=hits, score_label=cosine,
                                  title=f"{model.name}, {what}: where the pooled token points "
                                        f"(colour: {cosine} per patch)")]
    written.append(plots.score_distribution(scores, fg, out_dir / "score_distribution.png",
                                            title=f"{model.name}, {what}: patch scores of {len(picks)} images",
                                            xlabel=cosine, fg_label="patches overlapping the object box",
                                            bg_label="other patches"))
    if f"votes/{pooling.name}" in feats.arrays:
        votes = feats.arrays[f"votes/{pooling.name}"]
        written.append(plots.vote_map_grid(
            [v.reshape(gh, gw) for v in votes], out_dir / "votes.png", images=crops, titles=titles, boxes=crop_boxes,
            title=f"{model.name}, {what}: votes per patch = how many of the {model.arch.width} channels picked "
                  f"it among their top {pooling.topk}"))
    return [Path(p) for p in written]


def _class_names(root: Path) -> dict[str, str]:
    """wnid -> readable name from meta/classes.tsv (`<label> <wnid> <name>`), when the dataset gives one."""
    tsv = Path(root) / "meta" / "classes.tsv"
    names: dict[str, str] = {}
    if tsv.is_file():
        for line in tsv.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3:
                names[parts[1]] = parts[2].strip()
    return names
