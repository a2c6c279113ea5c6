"""High-norm artifact tokens and lazy aggregation: the diagnosis behind LAST, measured per image.

**Which norms.** "Final-layer token norms" are the L2 norms of the tokens the last transformer block
outputs, *before* the final LayerNorm (the `block_norms` tap, last block). That residual stream is where
high-norm artifacts live: the final LayerNorm rescales every token to about sqrt(D) before its affine
weights, so after it the outliers are flattened by construction. CLS and register tokens are reported
apart from the patches (registers: timm models with `reg_token`, after the CLS token, as timm lays them out).

**Outliers.** A patch token is an outlier when its norm exceeds `--norm-ratio` (default 3) times the
median patch norm of its own image, or an absolute `--norm-threshold`. Darcet et al., "Vision Transformers
Need Registers" (ICLR 2024, Sec. 2 and Fig. 3/7), find a bimodal norm distribution in DINOv2, OpenCLIP and
DeiT-III: normal patches below about 100, outliers above 150 (their cutoff), about 10x a normal token, on
roughly 2% of the patches. A relative rule carries that gap to any model and layer without knowing its scale;
3x the median sits above the normal mode's upper end (about twice its centre) and well below the ~10x
outliers. With `--blocks` the same rule is applied after every block (per-block table and row columns).

**Where they sit.** With annotations (ImageNet-style boxes or `--masks`, VOC `Annotations/` or
`SegmentationClass/`), the share of outlier patches inside the object: a patch is inside when more than half
its pixels are, mapped through the model's own Resize + CenterCrop (`geometry.py`); `object_area` (the share
of all patches inside) is the chance level. **Cosine to the pooled token**: the mean `patch_scores`
(cosine(patch, pooled token), as point-in-box uses them) of outlier patches and of the others.

**Masking probe** (`--mask-top F`, `--mask-bottom F`): the forward is run again without the round(F x P)
(half up, at least one) highest- or lowest-scoring patches (scores of this pooling; dropped after the
position embedding, so they are absent from every block, `engine/internals.py`), pooled with the same
pooling over the kept patches and scored with the checkpoint's head and classify's class map. Top-1 per
fraction beside the unmasked top-1 and the paired difference: if accuracy survives dropping the patches
the pooled token points at, the head leans on the rest (the paper's background-patch evidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..result import Result
from ..stats import bootstrap_metric, proportion
from .base import Evaluator, Inputs, MetricInfo, register

DEFAULT_RATIO = 3.0
MAPS = 6  # images drawn in artifacts_outliers.png: those with the highest max / median patch norm
BASE_TAPS = frozenset({"block_norms", "patch_scores"})


@dataclass(frozen=True)
class ArtifactsOptions:
    norm_threshold: float | None = None  # absolute; overrides the relative rule
    norm_ratio: float = DEFAULT_RATIO
    blocks: bool = False
    mask_top: tuple[float, ...] = ()
    mask_bottom: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.norm_threshold is not None and not self.norm_threshold > 0:
            raise InputError(f"--norm-threshold {self.norm_threshold}: must be a positive norm")
        if not self.norm_ratio > 1:
            raise InputError(f"--norm-ratio {self.norm_ratio}: must be above 1 (times the image's median patch norm)")
        for side in ("top", "bottom"):
            for f in getattr(self, f"mask_{side}"):
                if not 1e-6 <= f < 1:
                    raise InputError(f"--mask-{side} {f}: a fraction of the patches, in (0, 1)")

    def probes(self) -> list[tuple[str, float, str]]:
        """(side, fraction, tap name), duplicates removed, fractions as the tap name spells them."""
        from ..masking import masked_tap, parse_masked

        out: dict[str, tuple[str, float, str]] = {}
        for side in ("top", "bottom"):
            for f in getattr(self, f"mask_{side}"):
                tap = masked_tap(side, float(f))
                out.setdefault(tap, (side, parse_masked(tap)[1], tap))
        return list(out.values())


def token_layout(bb) -> tuple[bool, int]:
    """(has a CLS token, number of register tokens) among the backbone's prefix tokens."""
    prefix = int(bb.num_prefix_tokens)
    model = getattr(bb, "model", None)
    if model is not None and hasattr(model, "num_reg_tokens"):  # timm: [cls?, reg x n, patches]
        n_reg = int(model.num_reg_tokens or 0)
        return prefix - n_reg >= 1, n_reg
    return prefix >= 1, max(prefix - 1, 0)


def outlier_mask(patch_norms: np.ndarray, ratio: float = DEFAULT_RATIO,
                 threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(threshold per image [N], outlier mask [N, P]) for patch norms [N, P]."""
    pn = np.asarray(patch_norms, dtype=np.float64)
    thr = np.full(len(pn), float(threshold)) if threshold is not None else ratio * np.median(pn, axis=1)
    return thr, pn > thr[:, None]


def object_patches(boxes, size: tuple[int, int], resize: int, crop: int, patch: int,
                   kind: str = "resize-crop") -> np.ndarray:
    """bool [P]: patches more than half inside the union of `boxes` (original pixels) after Resize + CenterCrop
    (or the squash to crop x crop, kind `squash`)."""
    from ..geometry import patch_targets

    w, h = size
    return patch_targets([tuple(float(v) for v in b) for b in boxes], w, h, resize, crop, patch, "majority", 0.5,
                         kind)


def _block_label(j: int) -> str:
    return f"block{j:02d}"


def _key(side: str, fraction: float) -> str:
    return f"drop_{side}{100 * fraction:g}".replace(".", "_")


def _ratio_of_sums(a, b, axis=-1):
    return 100.0 * np.sum(a, axis=axis) / np.maximum(np.sum(b, axis=axis), 1e-12)


def _mean_metric(values: np.ndarray, seed: int):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return bootstrap_metric(np.mean, v, seed=seed, vectorized=True)


def evaluate(block_norms: np.ndarray, image_ids: list[str], has_cls: bool, n_reg: int, *,
             scores: np.ndarray | None = None, targets: dict[str, np.ndarray] | None = None,
             ratio: float = DEFAULT_RATIO, threshold: float | None = None, blocks: bool = False,
             grid: tuple[int, int] | None = None, seed: int = 0) -> Result:
    """Norm, outlier, placement and cosine statistics from `block_norms` [N, depth, prefix + P].

    `scores` [N, P]: cosine of every patch with the pooled token; `targets`: image id -> bool [P], the
    patches inside the object (images without annotations are absent).
    """
    bn = np.asarray(block_norms, dtype=np.float64)
    if bn.ndim != 3 or bn.shape[0] != len(image_ids):
        raise InputError(f"artifacts: block_norms must be [images, blocks, tokens], got {bn.shape}")
    prefix = int(has_cls) + n_reg
    last = bn[:, -1]
    pn = last[:, prefix:]
    n, p = pn.shape
    if grid is not None and grid[0] * grid[1] != p:
        raise InputError(f"artifacts: {p} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    thr, out = outlier_mask(pn, ratio, threshold)
    median = np.median(pn, axis=1)
    count = out.sum(axis=1)
    rows = pd.DataFrame({"image_id": list(image_ids)})
    if has_cls:
        rows["cls_norm"] = last[:, 0]
    for r in range(n_reg):
        rows[f"reg{r}_norm"] = last[:, int(has_cls) + r]
    rows["patch_norm_median"] = median
    rows["patch_norm_max"] = pn.max(axis=1)
    rows["threshold"] = thr
    rows["outliers"] = count
    rows["outlier_share"] = 100.0 * count / p
    rows["has_outliers"] = count > 0
    metrics = {
        "artifacts.outlier_share": bootstrap_metric(_ratio_of_sums, count, np.full(n, p), seed=seed, vectorized=True),
        "artifacts.images_with_outliers": proportion(count > 0),
        "artifacts.patch_norm": _mean_metric(median, seed),
        "artifacts.max_to_median": _mean_metric(pn.max(axis=1) / median, seed),
    }
    if has_cls:
        metrics["artifacts.cls_norm"] = _mean_metric(last[:, 0], seed)
        metrics["artifacts.cls_to_median"] = _mean_metric(last[:, 0] / median, seed)
    if n_reg:
        reg = last[:, int(has_cls):prefix]
        metrics["artifacts.register_norm"] = _mean_metric(reg.mean(axis=1), seed)
        metrics["artifacts.register_to_median"] = _mean_metric(reg.mean(axis=1) / median, seed)
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != pn.shape:
            raise InputError(f"artifacts: patch scores {s.shape} and patch norms {pn.shape} differ")
        with np.errstate(invalid="ignore", divide="ignore"):
            oc = np.where(count > 0, (s * out).sum(axis=1) / count, np.nan)
            rc = np.where(count < p, (s * ~out).sum(axis=1) / (p - count), np.nan)
        rows["outlier_cosine"], rows["other_cosine"] = oc, rc
        for key, v in (("artifacts.outlier_cosine", oc), ("artifacts.other_cosine", rc)):
            m = _mean_metric(v, seed)
            if m is not None:
                metrics[key] = m
    if targets:
        have = np.array([i in targets for i in image_ids])
        tg = np.stack([targets.get(i, np.zeros(p, dtype=bool)) for i in image_ids]).astype(bool)
        if tg.shape != pn.shape:
            raise InputError(f"artifacts: object patches {tg.shape} and patch norms {pn.shape} differ")
        inside = (out & tg).sum(axis=1)
        rows["outliers_in_object"] = np.where(have, inside, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows["outlier_in_object_share"] = np.where(have & (count > 0), 100.0 * inside / count, np.nan)
        rows["object_area"] = np.where(have, 100.0 * tg.mean(axis=1), np.nan)
        sel = have & (count > 0)
        if sel.any():
            metrics["artifacts.outliers_in_object"] = bootstrap_metric(_ratio_of_sums, inside[sel], count[sel],
                                                                       seed=seed, vectorized=True)
            metrics["artifacts.object_area"] = bootstrap_metric(_ratio_of_sums, tg[sel].sum(axis=1),
                                                                np.full(int(sel.sum()), p), seed=seed, vectorized=True)
    tables = {}
    if blocks:
        per = []
        for j in range(bn.shape[1]):
            bp = bn[:, j, prefix:]
            bthr, bout = outlier_mask(bp, ratio, threshold)
            lab = _block_label(j)
            rows[f"{lab}.patch_median"] = np.median(bp, axis=1)
            rows[f"{lab}.patch_max"] = bp.max(axis=1)
            if has_cls:
                rows[f"{lab}.cls"] = bn[:, j, 0]
            rows[f"{lab}.outliers"] = bout.sum(axis=1)
            per.append({"block": j, "patch_norm_median": float(np.median(bp, axis=1).mean()),
                        "patch_norm_max": float(bp.max(axis=1).mean()),
                        "cls_norm": float(bn[:, j, 0].mean()) if has_cls else np.nan,
                        "register_norm": float(bn[:, j, int(has_cls):prefix].mean()) if n_reg else np.nan,
                        "outlier_share": float(100.0 * bout.mean()),
                        "images_with_outliers": float(100.0 * bout.any(axis=1).mean())})
        tables["blocks"] = pd.DataFrame(per)
    metrics = {k: v for k, v in metrics.items() if v is not None}
    info = {"images": n, "patches": p, "cls_token": has_cls, "registers": n_reg,
            "norms": "L2 norm of each token after the last block, before the final norm",
            "threshold": (f"absolute {threshold:g}" if threshold is not None
                          else f"{ratio:g} x the image's median patch norm")}
    return Result("artifacts", metrics, rows=rows, tables=tables, info=info)


def masking_metrics(result: Result, logits: np.ndarray, masked: dict[tuple[str, float], np.ndarray],
                    head_labels: np.ndarray, seed: int = 0) -> None:
    """Top-1 of the unmasked head and of every masked forward, with the paired difference, into `result`."""
    y = np.asarray(head_labels)
    base = np.asarray(logits).argmax(axis=1) == y
    result.rows["unmasked.top1"] = base
    result.metrics["artifacts.unmasked.top1"] = proportion(base)
    for (side, fraction), z in masked.items():
        key = _key(side, fraction)
        hit = np.asarray(z).argmax(axis=1) == y
        result.rows[f"{key}.top1"] = hit
        result.metrics[f"artifacts.{key}.top1"] = proportion(hit)
        result.metrics[f"artifacts.{key}.delta_top1"] = bootstrap_metric(
            np.mean, 100.0 * (hit.astype(float) - base.astype(float)), seed=seed, vectorized=True)


@register
class Artifacts(Evaluator):
    """High-norm artifact tokens (norms, outlier shares, where they sit) and the masking probe."""

    name = "artifacts"
    description = "High-norm artifact tokens per image and the patch-masking probe (lazy aggregation)."
    taps = BASE_TAPS
    needs = frozenset()
    metrics = {
        "artifacts.outlier_share": MetricInfo("percent", "lower"),
        "artifacts.images_with_outliers": MetricInfo("percent", "lower"),
        "artifacts.*_norm": MetricInfo("score", "none"),
        "artifacts.*_to_median": MetricInfo("ratio", "none"),
        "artifacts.*_cosine": MetricInfo("cosine", "none"),
        "artifacts.outliers_in_object": MetricInfo("percent", "none"),
        "artifacts.object_area": MetricInfo("percent", "none"),
        "artifacts.*.top1": MetricInfo("percent", "higher"),
        "artifacts.*.delta_top1": MetricInfo("percent", "none"),
    }
    Options = ArtifactsOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.probes = self.options.probes()
        if self.probes:  # instance-level: the masked forwards and labels only when asked for
            self.taps = BASE_TAPS | {"logits"} | {t for _, _, t in self.probes}
            self.needs = frozenset({"labels"})

    def check(self, plan) -> None:
        from ..masking import drop_count

        if plan.model is None:
            raise InputError("artifacts reads token norms off the transformer blocks: give --checkpoint and images, "
                             "not feature files")
        model = plan.model
        self.has_cls, self.n_reg = token_layout(model.backbone)
        self.grid = model.arch.grid
        p = self.grid[0] * self.grid[1]
        if self.probes:
            if model.arch.num_classes is None:
                raise InputError(f"{model.source}: --mask-top/--mask-bottom score the masked forward with the "
                                 "checkpoint's classification head, and this checkpoint has none")
            from ..engine.internals import feeds_rotary_embedding

            if feeds_rotary_embedding(model.backbone):
                raise InputError(f"{model.source}: --mask-top/--mask-bottom drop patches before the first block, "
                                 f"and {model.name} gives its blocks a rotary position embedding built for the "
                                 f"full {self.grid[0]}x{self.grid[1]} grid; the masking probe does not support it")
            for side, f, _ in self.probes:
                drop = drop_count(f, p)
                if drop >= p:
                    raise InputError(f"--mask-{side} {f:g}: drops all {p} patches of {model.name}")
                for spec in plan.poolings:
                    if spec.kind == "last" and spec.topk > p - drop:
                        raise InputError(f"--mask-{side} {f:g}: keeps {p - drop} of {p} patches, fewer than the "
                                         f"k={spec.topk} of pooling {spec.name}")
            if plan.class_map is None:  # as classify's: dataset classes -> head outputs, explicit
                from ..classmap import map_classes

                plan.class_map = map_classes(plan.classes, model.arch.num_classes, model.source,
                                             plan.request.class_map, plan.declared)
        self.annotations = self._annotations(plan)

    def _annotations(self, plan):
        """Where the object is, when the data says: ('voc', dataset) | ('masks', MaskSource) | ('boxes', dict) | None."""
        from ..data.boxes import find_boxes, load_boxes

        req = plan.request
        if plan.voc is not None:
            return "voc", plan.voc
        if req.masks is not None:
            from ..data.masks import MaskSource

            src = MaskSource(req.masks)
            self.mask_ids = set(src.annotations(plan.test.ids))  # reads each mask once: a bad one fails here
            return "masks", src
        path = req.boxes
        if path is None and plan.root is not None:
            try:
                path = find_boxes(plan.root)
            except InputError:
                return None  # no annotations: no inside-the-object share
        if path is None:
            return None
        return "boxes", load_boxes(path, plan.test.ids)

    def _targets(self, plan, ids: list[str]) -> dict[str, np.ndarray]:
        """image id -> bool [P]: patches more than half inside the object (boxes or masks)."""
        from ..data.decode import read_size
        from ..data.masks import mask_to_crop
        from ..geometry import mask_patch_targets
        from ..localization.coarse_seg import labels_to_crop

        if self.annotations is None:
            return {}
        kind, src = self.annotations
        t, patch = plan.model.transform, plan.model.arch.patch_size
        path_of = dict(zip(plan.test.ids, plan.test.paths, strict=True))
        out = {}
        for i in ids:
            if kind == "voc":
                seg = src.root / "SegmentationClass" / f"{i}.png"
                if seg.is_file():
                    labels = labels_to_crop(src.segmentation(i), t.resize, t.crop, t.kind)
                    out[i] = mask_patch_targets((labels > 0) & (labels < 255), patch, "majority", 0.5)
                    continue
                out[i] = object_patches(src.annotation(i).boxes(), read_size(path_of[i]), t.resize, t.crop, patch,
                                        t.kind)
            elif kind == "masks":
                if i in self.mask_ids:
                    out[i] = mask_patch_targets(mask_to_crop(src.mask(i, read_size(path_of[i])), t.resize, t.crop,
                                                             t.kind),
                                                patch, "majority", 0.5)
            elif i in src and src[i].boxes:
                out[i] = object_patches([b.as_tuple() for b in src[i].boxes], read_size(path_of[i]), t.resize, t.crop,
                                        patch, t.kind)
        return out

    def evaluate(self, inputs: Inputs) -> Result:
        o, plan = self.options, inputs.plan
        ids = inputs.test.ids
        result = evaluate(inputs.test.get("block_norms"), ids, self.has_cls, self.n_reg,
                          scores=inputs.test.get("patch_scores"), targets=self._targets(plan, ids),
                          ratio=o.norm_ratio, threshold=o.norm_threshold, blocks=o.blocks, grid=self.grid,
                          seed=plan.seed)
        if self.annotations is not None:
            result.info["annotations"] = self.annotations[0]
        if self.probes:
            head = plan.class_map.indices[inputs.test.labels]
            masked = {(side, f): inputs.test.get(tap) for side, f, tap in self.probes}
            masking_metrics(result, inputs.test.get("logits"), masked, head, seed=plan.seed)
            from ..masking import drop_count

            p = self.grid[0] * self.grid[1]
            result.info["masking"] = {
                "ranked_by": f"cosine(patch, {inputs.pooling.name} token)",
                "dropped": {_key(s, f): drop_count(f, p) for s, f, _ in self.probes}, "patches": p,
                "rounding": "round(F x patches), half up, at least 1",
                "class_map": plan.class_map.describe(inputs.classes)}
        result.info["pictures"] = self._draw(inputs, result)
        return result

    def _draw(self, inputs: Inputs, result: Result) -> list[str]:
        """artifacts_norms.png (histogram) and artifacts_outliers.png (maps) in this pooling's folder."""
        from ..data.decode import load_rgb
        from ..report.artifact_plots import norm_histogram, outlier_maps

        o, plan = self.options, inputs.plan
        out_dir = Path(plan.output) / inputs.pooling.name
        bn = np.asarray(inputs.test.get("block_norms"), dtype=np.float64)[:, -1]
        prefix = int(self.has_cls) + self.n_reg
        pn = bn[:, prefix:]
        thr, out = outlier_mask(pn, o.norm_ratio, o.norm_threshold)
        relative = o.norm_threshold is None
        scale = np.median(pn, axis=1)[:, None] if relative else np.ones((len(pn), 1))
        extra = {}
        if self.has_cls:
            extra["CLS token"] = bn[:, :1] / scale
        if self.n_reg:
            extra["register tokens"] = bn[:, int(self.has_cls):prefix] / scale
        what = "norm / its image's median patch norm" if relative else "token norm"
        model = plan.model_name()
        written = [norm_histogram(pn / scale, out_dir / "artifacts_norms.png", o.norm_ratio if relative else float(
            o.norm_threshold), f"{what} (last block, before the final norm)", extra,
            title=f"{model}: token norms of {len(pn)} images")]
        order = np.argsort(-(pn.max(axis=1) / np.median(pn, axis=1)), kind="stable")[:MAPS]
        path_of = dict(zip(plan.test.ids, plan.test.paths, strict=True))
        t, (gh, gw) = plan.model.transform, self.grid
        crops, norms, outs, titles = [], [], [], []
        for r in order:
            i = inputs.test.ids[r]
            crops.append(t.pixels(load_rgb(path_of[i])).permute(1, 2, 0).numpy())
            norms.append(pn[r].reshape(gh, gw))
            outs.append(out[r].reshape(gh, gw))
            titles.append(f"{i}: max {pn[r].max() / np.median(pn[r]):.1f}x median")
        if crops:
            written.append(outlier_maps(crops, norms, outs, out_dir / "artifacts_outliers.png", titles,
                                        title=f"{model}: high-norm patches ({result.info['threshold']})"))
        return [Path(w).name for w in written]
