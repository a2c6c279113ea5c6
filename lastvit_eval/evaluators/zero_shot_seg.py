"""Training-free zero-shot semantic segmentation of a CLIP checkpoint (the protocol SCLIP and NACLIP share).

Dense CLIP patch embeddings (`--dense plain`: the final tokens after `ln_post` through `proj`, the
paper's setting; `--dense maskclip`: MaskCLIP's last block, value path plus residual and MLP, the usual
training-free baseline; `--dense value`: the bare value embedding, no residual, no MLP) are compared by
cosine with a text classifier of the dataset's class names (with synonyms) x OpenAI's 80 templates, over 224x224 sliding windows (stride 112) of the image resized per dataset; see
`segmentation/` and the README section "Zero-shot segmentation".

Shape of the data flow: this evaluator declares `dense = True` and hands the engine a `DenseRequest`
(`dense_request(plan)`); the pipeline runs `engine.dense_forward.segment` once per run and passes its
output (per-image, per-class intersection / label / prediction areas, a few downsized examples) as
`inputs.dense`. No tap fits: label maps are ragged and per-pixel logits too large to keep, so nothing
of this evaluator goes through the feature store (the text classifier does). Metrics: `miou` (bootstrap
interval over images, areas re-summed per resample) and `pixel_acc`; tables: per-class IoU and areas,
per-image rows; a picture `zero_shot_seg_examples.png` next to metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..result import Result
from .base import Evaluator, Inputs, MetricInfo, register

DENSE_MODES = ("plain", "maskclip", "value")  # = segmentation.dense.MODES (tested)


@dataclass(frozen=True)
class ZeroShotSegOptions:
    dense: str = "plain"
    bg_threshold: float | None = None  # None: the protocol's prob_threshold (0.1 where there is a background class)
    save_predictions: Path | None = None
    examples: int = 4

    def __post_init__(self) -> None:
        if self.dense not in DENSE_MODES:
            raise InputError(f"--dense {self.dense!r}: use {', '.join(DENSE_MODES[:-1])} or {DENSE_MODES[-1]}")
        if self.bg_threshold is not None and not 0.0 <= float(self.bg_threshold) <= 1.0:
            raise InputError(f"--bg-threshold {self.bg_threshold}: a probability between 0 and 1")


@register
class ZeroShotSeg(Evaluator):
    name = "zero-shot-seg"
    description = "Training-free zero-shot segmentation mIoU of a CLIP checkpoint (SCLIP/NACLIP protocol)."
    taps = frozenset()
    needs = frozenset({"seg_labels", "text"})
    metrics = {"zero_shot_seg.*": MetricInfo("percent", "higher")}
    Options = ZeroShotSegOptions
    dense = True

    def check(self, plan) -> None:
        from ..engine import distributed
        from ..segmentation.dense import _check_tower

        seg = getattr(plan, "seg", None)
        if seg is None:
            raise InputError("zero-shot-seg needs --seg-dataset NAME and --seg-root DIR (a dataset in "
                             "mmsegmentation's layout)")
        proto = seg.protocol
        visual = plan.model.backbone.clip.visual
        try:
            _check_tower(visual)
        except InputError as e:
            raise InputError(f"{plan.model.source}: --dense {self.options.dense}: {e}") from None
        if proto.window and plan.model.arch.image_size != proto.window:
            raise InputError(f"{plan.model.source}: the tower takes {plan.model.arch.image_size}-pixel inputs; the "
                             f"protocol's {proto.window}-pixel windows would need an interpolated positional "
                             "embedding, which is not supported")
        if self.options.bg_threshold is not None and not proto.background:
            raise InputError(f"--bg-threshold: {proto.name} has no background class (only voc21, context60 and "
                             "coco_object do)")
        if distributed.current().world > 1:
            raise InputError("zero-shot-seg runs in one process; launch it without torchrun")
        out = self.options.save_predictions
        if out is not None:
            from ..report.outdir import ensure_writable_dir

            if proto.num_classes > 255:
                raise InputError(f"--save-predictions: {proto.num_classes} classes do not fit a palette PNG")
            names = [s.label.name for s in seg.samples]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})[0]
                raise InputError(f"--save-predictions {out}: two label files are named {dup}; the predictions "
                                 "would overwrite each other")
            ensure_writable_dir(Path(out))

    def dense_request(self, plan):
        """What the engine's dense forward computes for this evaluator."""
        from ..engine.dense_forward import DenseRequest

        proto = plan.seg.protocol
        thr = proto.prob_threshold if self.options.bg_threshold is None else float(self.options.bg_threshold)
        return DenseRequest(mode=self.options.dense, query_class=tuple(proto.query_class),
                            num_classes=proto.num_classes, ignore_index=proto.ignore_index, resize=proto.resize,
                            window=proto.window, stride=proto.stride, logit_scale=proto.logit_scale,
                            prob_threshold=thr if proto.background else 0.0, area_threshold=proto.area_threshold,
                            save_predictions=self.options.save_predictions, examples=self.options.examples)

    def evaluate(self, inputs: Inputs) -> Result:
        from ..segmentation.miou import scores_result

        plan, dense = inputs.plan, inputs.dense
        if dense is None:
            raise InputError("zero-shot-seg: the run produced no dense forward output")
        proto = plan.seg.protocol
        request = self.dense_request(plan)
        info = {"protocol": {**proto.to_dict(), "prob_threshold": request.prob_threshold},
                "dense": self.options.dense, "dense_forward": dense.info(),
                "text_classifier": plan.text.info, "queries": len(proto.query_class),
                "predictions": str(self.options.save_predictions) if self.options.save_predictions else None}
        result = scores_result(dense.scores, proto.class_names, dense.ids, namespace="zero_shot_seg", info=info,
                               seed=plan.seed)
        if dense.examples:
            from ..report.seg_plots import seg_examples

            path = plan.output / inputs.pooling.name / "zero_shot_seg_examples.png"
            title = f"{plan.model_name()} on {proto.name}, --dense {self.options.dense}: image | prediction | label"
            seg_examples(dense.examples, proto.class_names, path, title, proto.ignore_index)
            result.info["figure"] = path.name
        return result
