"""Synthetic "objects on clutter" images with exact boxes, so the demo runs without ImageNet.

Each class is a shape with its own colour family and fill pattern (star, ring, cross, ...), drawn with
some variation in hue, size, rotation and shape parameters onto a cluttered background (smooth noise,
gradients, stripes, plaid, plus distractor ellipses and lines that are never class shapes). Like real
photos, the background carries a weak class cue: with probability CONTEXT_P its palette comes from the
class's "habitat" hue, so a lazy model can score well by looking at the background instead of the object.

Box convention: integer pixel-EDGE coordinates. An object with box (xmin, ymin, xmax, ymax) occupies
pixels x in [xmin, xmax) and y in [ymin, ymax); the box is the tight box of the object's binary mask as
drawn, before any JPEG compression. Objects are drawn last and never overlap each other, so every pixel
of a mask is visible in the image.

Every sample is a pure function of (seed, stream, index): `render(seed, stream, i)` always returns the
same pixels, whichever other samples were drawn before.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# (name, object hue, fill pattern, habitat hue); wnids are fake, n90000001... in this (sorted) order.
CLASSES: list[tuple[str, float, str, float]] = [
    ("star", 0.14, "solid", 0.60),
    ("ring", 0.62, "solid", 0.08),
    ("cross", 0.00, "solid", 0.35),
    ("triangle", 0.33, "stripes", 0.85),
    ("hexagon", 0.78, "checker", 0.20),
    ("crescent", 0.07, "dots", 0.50),
    ("arrow", 0.50, "stripes", 0.95),
    ("chevron", 0.90, "solid", 0.42),
]
WNIDS: list[str] = [f"n{90000001 + i}" for i in range(len(CLASSES))]
CONTEXT_P = 0.5
STREAMS = {"val": 1, "train": 2, "fit": 3}  # "fit": the on-the-fly training stream of train_tiny


@dataclass
class Sample:
    """One image (uint8 HxWx3, before JPEG), its label and each object's mask and edge box."""

    image: np.ndarray
    label: int
    masks: list[np.ndarray]  # bool HxW, one per object
    boxes: list[tuple[int, int, int, int]]  # (xmin, ymin, xmax, ymax), edge coordinates

    @property
    def wnid(self) -> str:
        return WNIDS[self.label]


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Edge-coordinate box of a non-empty bool mask: pixels x in [xmin, xmax), y in [ymin, ymax)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _polygon(name: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Outline of a polygonal class in unit coordinates (radius about 1), before rotation."""
    if name == "star":
        r = rng.uniform(0.38, 0.5)
        return [(math.cos(a), math.sin(a)) if j % 2 == 0 else (r * math.cos(a), r * math.sin(a))
                for j, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    if name == "triangle":
        angles = np.array([-90, 30, 150]) + rng.uniform(-12, 12, 3)
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in angles]
    if name == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in np.arange(6) * math.pi / 3]
    if name == "cross":
        w = rng.uniform(0.28, 0.42)
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                (-1, -w), (-w, -w)]
    if name == "arrow":
        w, head = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.35)
        return [(-1, -w), (head, -w), (head, -0.8), (1, 0), (head, 0.8), (head, w), (-1, w)]
    if name == "chevron":
        t = rng.uniform(0.35, 0.55)
        return [(-1, -1), (0, 1 - 2 * t), (1, -1), (1, -1 + 2 * t), (0, 1), (-1, -1 + 2 * t)]
    raise ValueError(name)


def _shape_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Binary mask (size x size) of one class instance, rotated at random, filling most of the canvas."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    c, rad = (size - 1) / 2, (size - 1) / 2 * 0.95
    theta = rng.uniform(0, 2 * math.pi)
    if name == "ring":
        inner = rad * rng.uniform(0.45, 0.65)
        draw.ellipse([c - rad, c - rad, c + rad, c + rad], fill=1)
        draw.ellipse([c - inner, c - inner, c + inner, c + inner], fill=0)
    elif name == "crescent":
        off, r2 = rad * rng.uniform(0.35, 0.55), rad * 0.85
        ox, oy = c + off * math.cos(theta), c + off * math.sin(theta)
        draw.ellipse([c - rad, c - rad, c + rad, c + rad], fill=1)
        draw.ellipse([ox - r2, oy - r2, ox + r2, oy + r2], fill=0)
    else:
        cos, sin = math.cos(theta), math.sin(theta)
        pts = [(c + rad * (x * cos - y * sin), c + rad * (x * sin + y * cos)) for x, y in _polygon(name, rng)]
        draw.polygon(pts, fill=1)
    return np.asarray(img, dtype=bool)


def _pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 float pattern (h x w) used to alternate two shades of the object's colour."""
    if kind == "solid":
        return np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4, 8)
    if kind == "stripes":
        a = rng.uniform(0, math.pi)
        return ((xx * math.cos(a) + yy * math.sin(a)) // period % 2).astype(np.float32)
    if kind == "checker":
        return ((xx // period + yy // period) % 2).astype(np.float32)
    if kind == "dots":
        return (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 3) ** 2
                ).astype(np.float32)
    raise ValueError(kind)


def _background(h: int, w: int, hue: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise, gradient, stripes or plaid in two shades around `hue`; float HxWx3 in [0, 1]."""
    c1 = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.9))
    c2 = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.95))
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    proj = (xx * math.cos(a) + yy * math.sin(a)) / max(h, w)
    if kind == 0:  # smooth noise: a coarse random grid upsampled bicubically
        grid = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.uint8)
        t = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32) / 255
    elif kind == 1:
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    else:
        t = 0.5 + 0.5 * np.sin(2 * math.pi * proj * rng.uniform(3, 12))
        if kind == 3:
            proj2 = (xx * math.cos(a + math.pi / 2) + yy * math.sin(a + math.pi / 2)) / max(h, w)
            t = 0.5 * t + 0.25 + 0.25 * np.sin(2 * math.pi * proj2 * rng.uniform(3, 12))
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _distractors(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw random filled ellipses and thick lines (never class shapes) in place."""
    h, w, _ = img.shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    n_blobs, n_lines = int(rng.integers(2, 8)), int(rng.integers(0, 4))
    for j in range(n_blobs + n_lines):
        draw.rectangle([0, 0, w, h], fill=0)
        if j < n_blobs:
            rx, ry = rng.uniform(0.03, 0.15, 2) * min(h, w)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
        else:
            x0, x1 = rng.uniform(0, w, 2)
            y0, y1 = rng.uniform(0, h, 2)
            draw.line([x0, y0, x1, y1], fill=1, width=int(rng.integers(2, 6)))
        m = np.asarray(canvas, dtype=bool)
        img[m] = _hsv(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))


def _place(size: int, h: int, w: int, taken: list[tuple[int, int, int, int]],
           rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left corner for a size x size canvas, near the centre, not overlapping `taken` boxes."""
    for _ in range(50):
        x0 = int(np.clip(rng.normal((w - size) / 2, 0.18 * w), 0, w - size))
        y0 = int(np.clip(rng.normal((h - size) / 2, 0.18 * h), 0, h - size))
        if all(x0 >= b[2] or x0 + size <= b[0] or y0 >= b[3] or y0 + size <= b[1] for b in taken):
            return x0, y0
    return None


def render(seed: int, stream: str, index: int, label: int | None = None) -> Sample:
    """Draw sample `index` of `stream` ("val", "train" or "fit"); label defaults to index % classes."""
    rng = np.random.default_rng([seed, STREAMS[stream], index])
    label = index % len(CLASSES) if label is None else label
    name, hue, fill, habitat = CLASSES[label]
    short, aspect = int(rng.integers(96, 201)), rng.uniform(0.6, 1.8)
    h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)

    bg_hue = habitat + rng.uniform(-0.05, 0.05) if rng.uniform() < CONTEXT_P else rng.uniform()
    img = _background(h, w, bg_hue, rng)
    _distractors(img, rng)

    layout = rng.uniform()
    if layout < 0.1:  # two objects of the same class
        fracs = list(rng.uniform(0.22, 0.35, 2))
    elif layout < 0.2:  # one large object, usually over 25% of the image
        fracs = [rng.uniform(0.7, 0.95)]
    else:
        fracs = [rng.uniform(0.25, 0.45)]

    masks: list[np.ndarray] = []
    boxes: list[tuple[int, int, int, int]] = []
    for frac in fracs:
        size = max(12, round(frac * short))
        local = _shape_mask(name, size, rng)
        corner = _place(size, h, w, boxes, rng)
        if corner is None:  # no room left for a second object: keep the image single-object
            continue
        x0, y0 = corner
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y0 + size, x0:x0 + size] = local
        colour = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))
        shade = _pattern(fill, h, w, rng)[..., None]
        obj = colour * (1 - 0.45 * shade) * rng.uniform(0.9, 1.0, (h, w, 1)).astype(np.float32)
        img[mask] = obj[mask]
        masks.append(mask)
        boxes.append(tight_box(mask))

    img = img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Sample(image=image, label=label, masks=masks, boxes=boxes)
