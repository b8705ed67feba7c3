"""Datasets that tunesmith makes itself: harder than digits, needing no download.

They exist so that every default and every method is judged on more than digits
(bench/quality.py, tests). Each is drawn deterministically from its seed with PIL and cached as
uint8 arrays in ``$TUNESMITH_CACHE`` (default ``~/.cache/tunesmith``), never in the repository.

- ``glyphs``: the digits 0-9 drawn from the machine's fonts at 32x32 grayscale, rotated, scaled,
  shifted, blurred and noised, light-on-dark and dark-on-light (700 per class).
- ``shapes``: ten kinds of geometric shape at 32x32 RGB, randomly coloured, sized, rotated and
  placed on a textured background (600 per class).
- ``letters``: the letters A-Z, upper and lower case in one class, as ``glyphs`` (300 per class):
  26 classes, fewer samples each.
- ``objects``, ``materials``, ``novel_objects``: colour at 64 px, lit objects on cluttered
  backgrounds (trainables/photos.py).
"""
from __future__ import annotations

import glob
import math
import os
from typing import Callable, Dict, List, Tuple

import numpy as np

from tunesmith.trainables import photos
from tunesmith.trainables.photos import polygon

VERSION = 1   # bump when a generator changes: the cache key carries it
SIZE = 32


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("TUNESMITH_CACHE", "~/.cache/tunesmith"))


def _fonts() -> List[str]:
    """The machine's TrueType fonts, in a stable order; Pillow's built-in font if none."""
    found = set()
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")):
        found.update(glob.glob(os.path.join(root, "**", "*.ttf"), recursive=True))
    usable = sorted(f for f in found if "Math" not in os.path.basename(f))
    return usable or [""]


def _font(path: str, size: int):
    from PIL import ImageFont
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def _glyph(rng: np.random.Generator, text: str, fonts: List[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter
    big = 64
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    font = _font(fonts[rng.integers(len(fonts))], int(rng.integers(30, 48)))
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = (big - w) / 2 - box[0] + rng.uniform(-6, 6)
    y = (big - h) / 2 - box[1] + rng.uniform(-6, 6)
    draw.text((x, y), text, fill=255, font=font)
    im = im.rotate(rng.uniform(-30, 30), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    im = im.resize((SIZE, SIZE), Image.BILINEAR)
    ink = np.asarray(im, dtype=np.float32) / 255.0
    fg, bg = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.35)
    if rng.random() < 0.5:            # dark on light as often as light on dark
        fg, bg = 1 - fg, 1 - bg
    img = bg + (fg - bg) * ink
    img += rng.normal(0, rng.uniform(0.05, 0.2), img.shape)          # sensor noise
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img += rng.uniform(-0.2, 0.2) * (xx - 0.5) + rng.uniform(-0.2, 0.2) * (yy - 0.5)   # uneven light
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)[None]


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A random background: stripes or blotches in two colours, plus noise. H x W x 3 in [0, 1]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if rng.random() < 0.5:
        angle, freq = rng.uniform(0, math.pi), rng.uniform(0.2, 0.9)
        t = 0.5 + 0.5 * np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    else:
        coarse = rng.uniform(0, 1, (5, 5))
        t = np.kron(coarse, np.ones((7, 7)))[:SIZE, :SIZE]
    img = a * t[..., None] + b * (1 - t[..., None])
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)


SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
          "half_disc", "bar")


def _shape(rng: np.random.Generator, kind: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    big = 4 * SIZE   # draw large, then downsample: anti-aliased edges
    mask = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(mask)
    r = rng.uniform(0.22, 0.38) * big
    cx, cy = (rng.uniform(r, big - r) for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif kind == "square":
        d.polygon(polygon(cx, cy, r, 4, rot), fill=255)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], fill=255)
    elif kind == "triangle":
        d.polygon(polygon(cx, cy, r, 3, rot), fill=255)
    elif kind == "hexagon":
        d.polygon(polygon(cx, cy, r, 6, rot), fill=255)
    elif kind == "star":
        d.polygon(polygon(cx, cy, r, 5, rot, inner=0.45), fill=255)
    elif kind == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        mask = mask.rotate(math.degrees(rot) % 90, center=(cx, cy))
    elif kind == "half_disc":
        start = math.degrees(rot)
        d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=255)
    elif kind == "bar":
        d.rectangle([cx - r, cy - r * 0.22, cx + r, cy + r * 0.22], fill=255)
        mask = mask.rotate(math.degrees(rot), center=(cx, cy))
    m = np.asarray(mask.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    bg = _texture(rng)
    colour = rng.uniform(0, 1, 3)
    if np.abs(colour - bg.mean((0, 1))).sum() < 0.6:   # keep the shape visible against its ground
        colour = 1 - colour
    img = bg * (1 - m) + colour * m
    img += rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1)


def _make_glyph_set(texts: List[List[str]], per_class: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fonts = _fonts()
    xs, ys = [], []
    for label, options in enumerate(texts):
        for _ in range(per_class):
            xs.append(_glyph(rng, options[rng.integers(len(options))], fonts))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def make_glyphs(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    classes = [str(i) for i in range(10)]
    return (*_make_glyph_set([[c] for c in classes], 700, seed), classes)


def make_letters(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    classes = [chr(ord("A") + i) for i in range(26)]
    return (*_make_glyph_set([[c, c.lower()] for c in classes], 300, seed), classes)


def make_shapes(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, kind in enumerate(SHAPES):
        for _ in range(600):
            xs.append(_shape(rng, kind))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), list(SHAPES)


PHOTOS_VERSION = 2   # trainables/photos.py's own: its sets' cache key carries it


def _photos(name: str):
    def make(seed: int = 0):
        return getattr(photos, f"make_{name}")(seed)
    return make


GENERATORS: Dict[str, Callable[[int], Tuple[np.ndarray, np.ndarray, List[str]]]] = {
    "glyphs": make_glyphs, "shapes": make_shapes, "letters": make_letters,
    # colour, 64 px, photograph-like (trainables/photos.py)
    "objects": _photos("objects"), "materials": _photos("materials"), "novel_objects": _photos("novel_objects"),
}


def load(name: str, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(images uint8 N x C x H x W, labels int64 N, class names), from the cache or made now.
    The cache file is written under a temporary name and renamed, so concurrent trials that
    make it at once never read half a file."""
    version = PHOTOS_VERSION if name in ("objects", "materials", "novel_objects") else VERSION
    path = os.path.join(cache_dir(), f"{name}-v{version}-seed{seed}-{len(_fonts())}fonts.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["x"], f["y"], [str(c) for c in f["classes"]]
    x, y, classes = GENERATORS[name](seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, x=x, y=y, classes=np.asarray(classes))
    os.replace(tmp, path)
    return x, y, classes
