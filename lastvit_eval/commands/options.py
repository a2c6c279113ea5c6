"""Every command option, spelled once as a typed `Annotated` alias; commands list the ones they take.

Each alias carries its help text and help panel. Commands are plain Typer signatures built from these
(no signature rewriting), so reading a command shows exactly its options, and `--help` shows nothing a
command ignores. `request_from` turns a command's parsed values into a `RunRequest`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MODEL, DATA, ENGINE, CACHE, OUTPUT = "Model", "Data", "Engine", "Feature store", "Output"
POOL, PIB, KNN, PROBE = "Pooling", "Point-in-box", "k-NN", "Linear probe"


def _opt(*names: str, help: str, panel: str, **kw):
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


# --- model -------------------------------------------------------------------------------------------
Checkpoint = Annotated[str | None, _opt("--checkpoint", "-c", help="Checkpoint file (.pth/.pt/.safetensors) or hub "
                                        "name (torchvision:vit_b_16, timm:NAME, openclip:ARCH/TAG).", panel=MODEL)]
TrustCheckpoint = Annotated[bool, _opt("--trust-checkpoint", help="Allow pickled Python objects / TorchScript "
                                       "(runs code on load).", panel=MODEL)]
IgnoreKeys = Annotated[list[str] | None, _opt("--ignore-keys", help="Drop checkpoint keys with this prefix before "
                                              "the strict load (repeatable), e.g. heads.head.", panel=MODEL)]
NumHeads = Annotated[int | None, _opt("--num-heads", help="Attention heads, when the checkpoint does not say.",
                                      panel=MODEL)]
CheckpointKey = Annotated[str | None, _opt("--checkpoint-key", help="Sub-model to load: teacher (DINO default) or "
                                           "student.", panel=MODEL)]
Family = Annotated[str | None, _opt("--family", help="Force a family: torchvision, dino, dinov2, timm, openclip.", panel=MODEL)]
QuickGelu = Annotated[bool | None, _opt("--quick-gelu/--no-quick-gelu", help="CLIP: QuickGELU activations (OpenAI "
                                        "weights); default: detect.", panel=MODEL)]
Arch = Annotated[str | None, _opt("--arch", help="timm model name for a state dict that does not name its "
                                 "architecture (e.g. deit_small_distilled_patch16_224); a wrong one lists the names "
                                 "that fit.", panel=MODEL)]
ImageSize = Annotated[int | None, _opt("--image-size", help="Evaluate at this input size (a multiple of the patch "
                                       "size): position embeddings interpolated by the family's library, resize and "
                                       "crop scaled.", panel=MODEL)]

# --- pooling -----------------------------------------------------------------------------------------
Pooling = Annotated[list[str] | None, _opt("--pooling", "-p", help="cls | gap | last | map | last:k=5,sigma=20,"
                                           "formula=paper (repeatable); map = the model's own attention-pool head "
                                           "(SigLIP, CLIP ResNets). Default: cls for hub baselines (map or gap "
                                           "without a class token), last otherwise.", panel=POOL)]
TopK = Annotated[int | None, _opt("--topk", help="Shorthand: k for every `last` pooling that does not set it.",
                                  panel=POOL)]
Sigma = Annotated[float | None, _opt("--sigma", help="Shorthand: LAST Gaussian width (default sqrt(D)).",
                                     panel=POOL)]
ScoreFormula = Annotated[str | None, _opt("--score-formula", help="Shorthand: LAST score, code (x/|xf-x|, trained "
                                          "the released weights) or paper (xf/(|xf-x|+eps)).", panel=POOL)]

# --- data --------------------------------------------------------------------------------------------
Root = Annotated[Path | None, _opt("--imagenet-root", "-r", help="ImageNet-style root: <split>/<wnid>/*.JPEG or "
                                   "<split>/*.JPEG (+ meta/val.txt), train/, boxes.", panel=DATA)]
Split = Annotated[str, _opt("--split", help="Test images: the folder under the root (val or train).", panel=DATA)]
Train = Annotated[Path | None, _opt("--train", help="Training images: ImageFolder root or CSV (path,label).",
                                    panel=DATA)]
Test = Annotated[Path | None, _opt("--test", help="Test images: ImageFolder root or CSV (path,label).", panel=DATA)]
TrainFeatures = Annotated[Path | None, _opt("--train-features", help="Training features written by `extract` "
                                            "(.npz/.safetensors) instead of a model and images.", panel=DATA)]
TestFeatures = Annotated[Path | None, _opt("--test-features", help="Test features written by `extract`.",
                                           panel=DATA)]
TrainPerClass = Annotated[int | None, _opt("--train-per-class", help="Few-shot: at most N training images per "
                                           "class (seeded).", panel=DATA)]
Limit = Annotated[int | None, _opt("--limit", help="Each evaluator scores at most the first N of its images.",
                                   panel=DATA)]
Seed = Annotated[int, _opt("--seed", help="Seed for subsets, hold-outs and bootstraps.", panel=DATA)]
ClassMap = Annotated[Path | None, _opt("--class-map", help="'<class> <head index>' per line: how dataset classes "
                                       "map onto the head (default: ImageNet wnid order, meta/classes.tsv, or "
                                       "integer labels).", panel=DATA)]
Boxes = Annotated[Path | None, _opt("--boxes", help="VOC XML folder, LOC_val_solution.csv or COCO json (default: "
                                    "found under the root).", panel=DATA)]
Masks = Annotated[Path | None, _opt("--masks", help="Segmentation masks instead of boxes: COCO json or a folder "
                                    "of <image_id>.npy.", panel=DATA)]
OnBadAnnotation = Annotated[str, _opt("--on-bad-annotation", help="fail (default) or skip (drop the image, listed "
                                      "with its reason) on an annotation that disagrees with its image.",
                                      panel=DATA)]
VocRoot = Annotated[Path | None, _opt("--voc-root", help="PASCAL VOC devkit (VOCdevkit/VOC2007|VOC2012/...) for "
                                      "object discovery and segmentation.", panel=DATA)]
Year = Annotated[str, _opt("--year", help="VOC year: 2007 or 2012.", panel=DATA)]
ImageSet = Annotated[str | None, _opt("--image-set", help="VOC image set (default trainval for boxes, val for "
                                      "segmentation masks).", panel=DATA)]
Classnames = Annotated[Path | None, _opt("--classnames", help="Zero-shot class names, one per line in label order "
                                         "(default: open_clip's ImageNet-1k names).", panel=DATA)]
Templates = Annotated[Path | None, _opt("--templates", help="Zero-shot prompt templates, one per line with {c} "
                                        "(default: the 80 OpenAI ImageNet templates).", panel=DATA)]

# --- engine ------------------------------------------------------------------------------------------
Device = Annotated[str, _opt("--device", help="auto (cuda, then cpu), cpu, cuda, cuda:N.", panel=ENGINE)]
Dtype = Annotated[str, _opt("--dtype", help="fp32 | bf16 | fp16 (autocast for the backbone).", panel=ENGINE)]
BatchSize = Annotated[int, _opt("--batch-size", "-b", min=1, help="Images per forward pass.", panel=ENGINE)]
Workers = Annotated[int | None, _opt("--workers", "-j", min=0, help="Decoding processes (default: 0 on a CPU run "
                                     "with <= 2 cores, else min(4, CPUs)).",
                                     panel=ENGINE)]
OnBadImage = Annotated[str, _opt("--on-bad-image", help="skip (listed in the result) or fail.", panel=ENGINE)]
ChannelsLast = Annotated[bool, _opt("--channels-last", help="channels_last memory format for the patch "
                                    "embedding.", panel=ENGINE)]
Compile = Annotated[bool, _opt("--compile", help="torch.compile the backbone (eager fallback with a warning).",
                               panel=ENGINE)]
Decode = Annotated[str, _opt("--decode", help="cpu (PIL in workers) or gpu (nvJPEG + resize on the GPU, parity "
                             "reported).", panel=ENGINE)]
BarrierTimeout = Annotated[float, _opt("--barrier-timeout", help="torchrun: seconds a rank waits for the others "
                                       "before failing.", panel=ENGINE)]

# --- feature store -----------------------------------------------------------------------------------
CacheDir = Annotated[Path | None, _opt("--cache-dir", help="Feature store folder (default $LASTVIT_EVAL_CACHE, "
                                       "else $XDG_CACHE_HOME/lastvit-eval, else ~/.cache/lastvit-eval).",
                                       panel=CACHE)]
NoCache = Annotated[bool, _opt("--no-cache", help="Neither read nor write the feature store.", panel=CACHE)]
ShardSize = Annotated[int, _opt("--shard-size", min=1, help="Images per store shard (the unit of resume and of "
                                "distributed work).", panel=CACHE)]

# --- output ------------------------------------------------------------------------------------------
OutputDir = Annotated[Path | None, _opt("--output-dir", "-o", help="Run folder (default results/<run>); one "
                                        "sub-folder per pooling.", panel=OUTPUT)]
RunName = Annotated[str | None, _opt("--run-name", help="Run folder name under results/ (default: evaluators, "
                                     "checkpoint, time).", panel=OUTPUT)]
Overwrite = Annotated[bool, _opt("--overwrite", help="Replace the results of an earlier run in the output folder.",
                                 panel=OUTPUT)]
DryRun = Annotated[bool, _opt("--dry-run", help="Print the plan (images per split, already stored, forward "
                              "passes needed) and exit.", panel=OUTPUT)]
Json = Annotated[bool, _opt("--json", help="Print a machine-readable summary (or plan) on stdout.", panel=OUTPUT)]
NoProgress = Annotated[bool, _opt("--no-progress", help="Hide progress bars.", panel=OUTPUT)]

# --- evaluator settings ------------------------------------------------------------------------------
HitRule = Annotated[str | None, _opt("--hit-rule", help="any (top patch overlaps the object; the paper, default "
                                     "with boxes), center, majority (default with masks).", panel=PIB)]
FgFraction = Annotated[float, _opt("--fg-fraction", help="majority rule: a patch is foreground when more than this "
                                   "fraction of it is inside.", panel=PIB)]
SingleObject = Annotated[bool, _opt("--single-object/--any-objects", help="Keep only images with exactly one box "
                                    "(the paper's filter).", panel=PIB)]
MaxBoxArea = Annotated[float, _opt("--max-box-area", help="Keep boxes smaller than this fraction of the image (the "
                                   "paper: 0.25); 1 disables.", panel=PIB)]
Ks = Annotated[str, _opt("--ks", help="Comma-separated k values (each at most the training set size).", panel=KNN)]
Temperature = Annotated[float, _opt("--temperature", help="Vote temperature T: weights exp(sim / T).", panel=KNN)]
WeightDecays = Annotated[str | None, _opt("--weight-decays", help="Comma-separated weight decays chosen on the "
                                          "hold-out (default 3e-3,1e-3,3e-4,1e-4,3e-5,1e-5,0).", panel=PROBE)]
Solver = Annotated[str, _opt("--solver", help="lbfgs (full batch, weight-decay path) or adam.", panel=PROBE)]
HoldoutFraction = Annotated[float, _opt("--holdout-fraction", help="Share of each training class held out for the "
                                        "selection.", panel=PROBE)]
ProbePrecision = Annotated[str, _opt("--probe-precision", help="bf16: bf16 passes when rows x dim x classes >= "
                                     "2^28, else fp32 (recorded as precision_used); fp32: always fp32.", panel=PROBE)]
Lrs = Annotated[str | None, _opt("--lrs", help="adam: comma-separated learning rates (default 2e-3).",
                                 panel=PROBE)]
LOC = "Object discovery / segmentation"
Method = Annotated[str, _opt("--method", help="corloc: last-votes (the paper's vote-map box), lost (LOST on the "
                             "last block's keys) or dino-seg (CLS attention mass, LOST's baseline).", panel=LOC)]
Resolution = Annotated[str | None, _opt("--resolution", help="corloc: full (LOST's: whole image padded to the patch, "
                                        "batch 1, DINO/timm ViTs; default for lost, dino-seg) or model (the "
                                        "model's resize + crop; default for last-votes).", panel=LOC)]
KPatches = Annotated[int, _opt("--k-patches", help="corloc lost: lowest-degree patches for the seed expansion.",
                               panel=LOC)]
DinosegHead = Annotated[int, _opt("--dinoseg-head", help="corloc dino-seg: the attention head (LOST: 4).", panel=LOC)]
CocoRoot = Annotated[Path | None, _opt("--coco-root", help="corloc: folder of the COCO images (e.g. train2014/), "
                                       "named by the annotations' file_name.", panel=DATA)]
CocoAnnotations = Annotated[Path | None, _opt("--coco-annotations", help="corloc: COCO instances json (e.g. "
                                              "instances_train2014.json).", panel=DATA)]
ImageList = Annotated[str | None, _opt("--image-list", help="corloc: COCO subset, one file name or id per line; "
                                       "`coco20k` is LOST's 19,817-image list, shipped (a file named so: ./coco20k).",
                                       panel=DATA)]
VoteStd = Annotated[float, _opt("--vote-std", help="corloc: foreground where votes > mean + this many standard "
                                "deviations.", panel=LOC)]
VoteThreshold = Annotated[float | None, _opt("--vote-threshold", help="corloc: an absolute vote count instead.",
                                             panel=LOC)]
Threshold = Annotated[list[str] | None, _opt("--threshold", help="coarse-seg: mean, otsu or a number "
                                             "(repeatable; each reported).", panel=LOC)]
Evaluators = Annotated[str, _opt("--evaluators", "-e", help="Comma-separated evaluator names (see `lastvit-eval "
                                 "evaluators`).", panel=OUTPUT)]

ART = "Artifacts"
NormThreshold = Annotated[float | None, _opt("--norm-threshold", help="artifacts: outlier = patch norm above this "
                                             "absolute value (default: relative, see --norm-ratio).", panel=ART)]
NormRatio = Annotated[float | None, _opt("--norm-ratio", help="artifacts: outlier = patch norm above this many times "
                                         "the image's median patch norm (default 3).", panel=ART)]
Blocks = Annotated[bool, _opt("--blocks", help="artifacts: norms and outliers after every block, not only the last.",
                              panel=ART)]
MaskTop = Annotated[list[float] | None, _opt("--mask-top", help="artifacts: drop this fraction of the highest-scoring "
                                             "patches and re-run the forward (repeatable).", panel=ART)]
MaskBottom = Annotated[list[float] | None, _opt("--mask-bottom", help="artifacts: drop this fraction of the "
                                                "lowest-scoring patches and re-run the forward (repeatable).",
                                                panel=ART)]

ZSS = "Zero-shot segmentation"
SegDataset = Annotated[str | None, _opt("--seg-dataset", help="voc20 | voc21 | context59 | context60 | coco-object | "
                                        "coco-stuff | cityscapes | ade20k (settings: assets/seg_datasets.json).",
                                        panel=ZSS)]
SegRoot = Annotated[Path | None, _opt("--seg-root", help="The dataset folder in mmsegmentation's layout (or a "
                                      "parent such as VOCdevkit).", panel=ZSS)]
Dense = Annotated[str, _opt("--dense", help="plain (final tokens after ln_post through proj; the paper), maskclip "
                            "(MaskCLIP: the last block's value path plus its residual and MLP; the training-free "
                            "baseline) or value (the bare value embedding out_proj(v), no residual, no MLP).",
                            panel=ZSS)]
BgThreshold = Annotated[float | None, _opt("--bg-threshold", help="Datasets with a background class: pixels whose "
                                           "best class probability is under this become background (default: the "
                                           "protocol's 0.1).", panel=ZSS)]
SavePredictions = Annotated[Path | None, _opt("--save-predictions", help="Write one palette PNG per image (class ids, "
                                              "label map size, the label file's name) into this folder.", panel=ZSS)]
SegLimit = Annotated[int | None, _opt("--max-images", "--limit", help="Score only the first N images (quick runs).",
                                      panel=ZSS)]
SegClassnames = Annotated[Path | None, _opt("--classnames", help="Class names, one class a line in label order, "
                                            "synonyms separated by commas (default: the shipped seg_cls_*.txt).",
                                            panel=ZSS)]
SegTemplates = Annotated[Path | None, _opt("--templates", help="Prompt templates, one per line with {c} (default: "
                                           "the 80 OpenAI ImageNet templates).", panel=ZSS)]
