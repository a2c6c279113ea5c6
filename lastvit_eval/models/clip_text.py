"""Zero-shot text classifiers from a CLIP text tower: class names x templates -> one unit vector per class.

The prompt sets are open_clip's own (ImageNet class names and OpenAI's 80 templates), or files with one
entry per line. The embedding itself is open_clip's `build_zero_shot_classifier` (encode_text with
normalization, mean over templates, renormalized). The pipeline keeps the result in the feature store
(`text/`, keyed by the model space and the exact prompts), because 1000 x 80 prompts take minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .base import LoadedModel

CACHE_VERSION = 1
CLASSES_PER_BATCH = 10


@dataclass(frozen=True)
class Prompts:
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # each contains "{c}"
    source: str  # where the names/templates came from, for provenance


def imagenet_prompts() -> Prompts:
    """open_clip's shipped ImageNet-1k class names and the OpenAI templates (lambdas -> "{c}" strings)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    templates = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
    return Prompts(tuple(IMAGENET_CLASSNAMES), templates, "open_clip IMAGENET_CLASSNAMES + OPENAI_IMAGENET_TEMPLATES")


def read_lines(path: Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise InputError(f"{path}: no {what} (expected one per line)")
    return lines


def read_templates(path: Path) -> list[str]:
    """One template per line with `{c}` or `{}` where the class name goes."""
    out = []
    for n, t in enumerate(read_lines(path, "templates"), start=1):
        if "{c}" not in t and "{}" not in t:
            raise InputError(f"{path}:{n}: template {t!r} has no {{c}} or {{}} placeholder")
        out.append(t.replace("{}", "{c}"))
    return out


def load_prompts(classnames: Path | None, templates: Path | None) -> Prompts:
    base = imagenet_prompts()
    names = tuple(read_lines(classnames, "class names")) if classnames else base.classnames
    temps = tuple(read_templates(templates)) if templates else base.templates
    if classnames and len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{classnames}: duplicate class names {dup[:5]}")
    source = f"classnames: {classnames or 'open_clip IMAGENET_CLASSNAMES'}; " \
             f"templates: {templates or 'open_clip OPENAI_IMAGENET_TEMPLATES'}"
    return Prompts(names, temps, source)


def build_classifier(model: LoadedModel, prompts: Prompts, device: torch.device | str = "cpu",
                     progress: bool = False) -> np.ndarray:
    """[embed_dim, classes] float32, columns L2-normalized: open_clip's zero-shot recipe."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from ..engine.progress import image_progress

    clip = getattr(model.backbone, "clip", None)
    if clip is None:
        raise InputError(f"{model.source}: zero-shot needs a CLIP checkpoint with a text tower; "
                         f"this is a {model.arch.family} model")
    tokenizer = SimpleTokenizer(context_length=int(clip.context_length))
    fns = [lambda c, t=t: t.replace("{c}", c) for t in prompts.templates]
    names = list(prompts.classnames)
    clip = clip.to(device).eval()
    cols = []
    with image_progress(progress) as bar, torch.inference_mode():
        task = bar.add_task("text classifier", total=len(names), rate="")
        for i in range(0, len(names), CLASSES_PER_BATCH * 10):
            chunk = names[i:i + CLASSES_PER_BATCH * 10]
            cols.append(open_clip.build_zero_shot_classifier(
                clip, tokenizer, chunk, fns, num_classes_per_batch=CLASSES_PER_BATCH, device=device).float().cpu())
            bar.update(task, advance=len(chunk))
    return torch.cat(cols, dim=1).numpy()
