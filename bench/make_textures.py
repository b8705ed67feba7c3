"""A held-out image folder of a kind the project's generated datasets are not: 10 texture
families (gratings near horizontal, near vertical and diagonal, plaid, checkers, dots, rings,
smooth blobs, blocky grain, line segments) in random colours and contrast, with uneven light and
noise, as JPEGs of 36 to 64 px (quality 60 to 95), PER images per class.

No default was chosen on it: it exists to check the defaults on data they were not tuned on,
through ``bench/quality.py --folder textures=DIR@0.7``. The images depend on the seed only.

    .venv/bin/python bench/make_textures.py DIR [--per-class 500] [--seed 12345]
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("hgrating", "vgrating", "dgrating", "checker", "dots", "rings", "blobs", "grain", "plaid", "lines")


def grating(s: int, angle: float, freq: float, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    return 0.5 + 0.5 * np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)


def _resized(rng, cells: int, s: int, resample) -> np.ndarray:
    c = rng.uniform(0, 1, (cells, cells))
    return np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((s, s), resample), np.float32) / 255


def _drawn(rng, kind: str, s: int) -> np.ndarray:
    """Dots or line segments, drawn at 4x and downsampled (anti-aliased)."""
    im = Image.new("L", (4 * s, 4 * s), 0)
    d = ImageDraw.Draw(im)
    if kind == "dots":
        r = rng.uniform(1.5, 4) * s / 32 * 4
        for _ in range(rng.integers(5, 20)):
            x, y = rng.uniform(0, 4 * s, 2)
            d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    else:
        for _ in range(rng.integers(5, 14)):
            x0, y0, x1, y1 = rng.uniform(0, 4 * s, 4)
            d.line([x0, y0, x1, y1], fill=255, width=int(rng.uniform(3, 8)))
    return np.asarray(im.resize((s, s), Image.BILINEAR), np.float32) / 255


def pattern(rng, kind: str, s: int) -> np.ndarray:
    """One texture of the family, s x s in [0, 1]."""
    f = rng.uniform(0.25, 0.9) * 32 / s * (s / 32) ** 0.3
    if kind == "hgrating":
        return grating(s, math.pi / 2 + rng.uniform(-0.35, 0.35), f, rng.uniform(0, 6.3))
    if kind == "vgrating":
        return grating(s, rng.uniform(-0.35, 0.35), f, rng.uniform(0, 6.3))
    if kind == "dgrating":
        return grating(s, rng.choice([1, 3]) * math.pi / 4 + rng.uniform(-0.3, 0.3), f, rng.uniform(0, 6.3))
    if kind == "plaid":
        a = rng.uniform(0, math.pi)
        first = grating(s, a, f, rng.uniform(0, 6.3))
        return 0.5 * (first + grating(s, a + math.pi / 2 + rng.uniform(-0.3, 0.3), f * rng.uniform(0.7, 1.4), 0))
    if kind == "checker":
        c = rng.uniform(3, 9) * s / 32
        yy, xx = np.mgrid[0:s, 0:s]
        a = rng.uniform(0, math.pi / 2)
        u, v = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
        return (((u // c) + (v // c)) % 2).astype(np.float32)
    if kind == "rings":
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        cx, cy = rng.uniform(-0.3, 1.3, 2) * s
        return 0.5 + 0.5 * np.sin(f * np.hypot(xx - cx, yy - cy))
    if kind == "blobs":
        return _resized(rng, rng.integers(3, 6), s, Image.BICUBIC)
    if kind == "grain":
        return _resized(rng, max(4, s // rng.integers(2, 4)), s, Image.NEAREST)
    return _drawn(rng, kind, s)


def image(rng, kind: str) -> np.ndarray:
    """H x W x 3 uint8: the texture in two random colours at a random contrast, uneven light, noise."""
    s = int(rng.integers(36, 65))
    t = pattern(rng, kind, s)[..., None]
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    contrast = rng.uniform(0.35, 1.0)
    mid = (a + b) / 2
    a, b = mid + contrast * (a - mid), mid + contrast * (b - mid)
    img = a * t + b * (1 - t)
    yy, xx = np.mgrid[0:s, 0:s] / s
    img = img + (rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5))[..., None]
    img = img + rng.normal(0, rng.uniform(0.03, 0.15), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for kind in CLASSES:
        os.makedirs(os.path.join(args.dir, kind), exist_ok=True)
        for i in range(args.per_class):
            pixels = image(rng, kind)
            Image.fromarray(pixels).save(os.path.join(args.dir, kind, f"{i:04d}.jpg"), quality=int(rng.integers(60, 95)))
    print(f"{len(CLASSES)} classes x {args.per_class} images in {args.dir}")


if __name__ == "__main__":
    main()
