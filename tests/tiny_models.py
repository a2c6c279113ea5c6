"""Small random-initialised reference models from timm and open_clip, perturbed so outputs are informative."""

from __future__ import annotations

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from timm.models.vision_transformer import VisionTransformer


def _perturb(m: torch.nn.Module, words: tuple[str, ...]) -> None:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(w in name for w in words):
                p.add_(torch.randn_like(p) * 0.1)


def tiny_timm(seed: int = 0, num_classes: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=num_classes)
    _perturb(m, ("norm", "head"))
    return m.eval()


def tiny_clip(seed: int = 0, quick_gelu: bool = False) -> CLIP:
    torch.manual_seed(seed)
    m = CLIP(32, vision_cfg=CLIPVisionCfg(layers=2, width=192, head_width=64, patch_size=8, image_size=32),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
             quick_gelu=quick_gelu)
    _perturb(m, ("ln_", "proj"))
    return m.eval()
