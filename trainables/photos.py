"""Colour images at 64 px that look more like photographs than glyphs: a lit, shaded object with
a cast shadow, on a cluttered background (a horizon, distractor blobs, texture), under a random
white balance, exposure, blur and sensor noise. Made by tunesmith (trainables/generated.py caches
them), for the colour and transfer tasks of bench/quality.py; nothing is downloaded.

- ``objects``: ten kinds of object (the class is the silhouette; colour, surface, size, pose,
  light and background are random), 400 per class.
- ``materials``: ten kinds of surface (stripes, checks, dots, ...) on objects of any kind: the
  class is the texture, not the shape. 400 per class.
- ``novel_objects``: ten other kinds of object, 100 per class: the transfer task fine-tunes a
  model pretrained on ``objects`` here (bench/quality.py cuts it to fewer per class).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

SIZE = 64
KINDS_A = ("sphere", "box", "pyramid", "star", "cross", "ring", "diamond", "hexagon", "half_disc", "bar")
KINDS_B = ("ellipse", "arrow", "heart", "crescent", "ell", "tee", "pentagon", "frame", "trapezoid", "hourglass")
POLYGONS = {"box": (4, None), "pyramid": (3, None), "pentagon": (5, None), "hexagon": (6, None),
            "star": (5, 0.45)}   # (corners, inner radius of a star's)
MATERIALS = ("stripes", "checks", "dots", "waves", "grain", "bricks", "rings", "zigzag", "gloss", "speckle")


def polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        ang = rot + math.pi * 2 * i / (n * (2 if inner else 1))
        rad = (r if i % 2 == 0 else r * inner) if inner else r
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def _rotated(points, cx, cy, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def silhouette(rng: np.random.Generator, kind: str) -> np.ndarray:
    """The object's mask, SIZE x SIZE in [0, 1], drawn at 4x and reduced (anti-aliased edges)."""
    from PIL import Image, ImageDraw
    big = 4 * SIZE
    im = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.26, 0.4) * big
    cx, cy = (rng.uniform(r + 4, big - r - 4) for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind in ("sphere",):
        d.ellipse(box, fill=255)
    elif kind == "ellipse":
        d.polygon(_rotated([(cx + r * math.cos(t), cy + 0.55 * r * math.sin(t))
                            for t in np.linspace(0, 2 * math.pi, 48)], cx, cy, rot), fill=255)
    elif kind == "ring":
        d.ellipse(box, fill=255)
        d.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    elif kind in POLYGONS:
        corners, inner = POLYGONS[kind]
        d.polygon(polygon(cx, cy, r, corners, rot, inner), fill=255)
    elif kind == "diamond":
        d.polygon(_rotated([(cx, cy - r), (cx + 0.55 * r, cy), (cx, cy + r), (cx - 0.55 * r, cy)], cx, cy, rot / 4), fill=255)
    elif kind == "half_disc":
        d.pieslice(box, math.degrees(rot), math.degrees(rot) + 180, fill=255)
    elif kind == "crescent":
        d.ellipse(box, fill=255)
        off = 0.45 * r
        d.ellipse([cx - r + off * math.cos(rot), cy - r + off * math.sin(rot),
                   cx + r + off * math.cos(rot), cy + r + off * math.sin(rot)], fill=0)
    else:
        w = 0.3 * r
        shapes = {
            "cross": [[(-r, -w), (r, -w), (r, w), (-r, w)], [(-w, -r), (w, -r), (w, r), (-w, r)]],
            "bar": [[(-r, -0.22 * r), (r, -0.22 * r), (r, 0.22 * r), (-r, 0.22 * r)]],
            "ell": [[(-r, -r), (-r + 2 * w, -r), (-r + 2 * w, r), (-r, r)], [(-r, r - 2 * w), (r, r - 2 * w), (r, r), (-r, r)]],
            "tee": [[(-r, -r), (r, -r), (r, -r + 2 * w), (-r, -r + 2 * w)], [(-w, -r), (w, -r), (w, r), (-w, r)]],
            "arrow": [[(-r, -w), (0.2 * r, -w), (0.2 * r, w), (-r, w)], [(0.2 * r, -0.75 * r), (r, 0), (0.2 * r, 0.75 * r)]],
            "heart": [[(0, r), (-r, -0.1 * r), (-0.75 * r, -0.75 * r), (-0.3 * r, -0.8 * r), (0, -0.45 * r),
                       (0.3 * r, -0.8 * r), (0.75 * r, -0.75 * r), (r, -0.1 * r)]],
            "frame": [[(-r, -r), (r, -r), (r, -r + w), (-r, -r + w)], [(-r, r - w), (r, r - w), (r, r), (-r, r)],
                      [(-r, -r), (-r + w, -r), (-r + w, r), (-r, r)], [(r - w, -r), (r, -r), (r, r), (r - w, r)]],
            "trapezoid": [[(-0.5 * r, -0.6 * r), (0.5 * r, -0.6 * r), (r, 0.6 * r), (-r, 0.6 * r)]],
            "hourglass": [[(-0.8 * r, -r), (0.8 * r, -r), (0.1 * r, 0), (0.8 * r, r), (-0.8 * r, r), (-0.1 * r, 0)]],
        }[kind]
        for part in shapes:
            d.polygon(_rotated([(cx + x, cy + y) for x, y in part], cx, cy, rot), fill=255)
    return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 255.0


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(a, sigma=(sigma, sigma) + (0,) * (a.ndim - 2))


def background(rng: np.random.Generator) -> np.ndarray:
    """A cluttered scene: two-tone ground and sky at a random horizon and distractor blobs of
    other colours, out of focus, and a little texture. H x W x 3 in [0, 1]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    top, low = rng.uniform(0.1, 0.95, 3), rng.uniform(0.05, 0.8, 3)
    horizon = rng.uniform(0.3, 0.8) + rng.uniform(-0.2, 0.2) * (xx - 0.5)
    img = np.where((yy > horizon)[..., None], low, top) * (1 - 0.3 * yy[..., None])
    for _ in range(rng.integers(2, 6)):
        cx, cy, rx, ry = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.25), rng.uniform(0.04, 0.25)
        blob = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1).astype(np.float32)
        img = img * (1 - blob[..., None]) + rng.uniform(0, 1, 3) * blob[..., None]
    img = _blur(img, rng.uniform(1.2, 3.0))   # out of focus behind the object, as a lens has it
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def surface(rng: np.random.Generator, material: str) -> np.ndarray:
    """A two-colour pattern of ``material``, H x W in [0, 1] (the mix of its two colours)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    u, v = xx * math.cos(ang) + yy * math.sin(ang), -xx * math.sin(ang) + yy * math.cos(ang)
    f = rng.uniform(0.45, 0.8)
    if material == "stripes":
        return (np.sin(f * u) > 0).astype(np.float32)
    if material == "checks":
        return ((np.floor(u * f / 2.5) + np.floor(v * f / 2.5)) % 2).astype(np.float32)
    if material == "dots":
        return ((np.sin(f * u) * np.sin(f * v)) > 0.55).astype(np.float32)
    if material == "waves":
        return 0.5 + 0.5 * np.sin(f * u + 2.5 * np.sin(0.25 * v))
    if material == "grain":
        return np.clip(_blur(rng.normal(0.5, 0.5, (SIZE, SIZE)), 0.8) * 2 - 0.5, 0, 1).astype(np.float32)
    if material == "bricks":
        row = np.floor(v * f / 3.0)
        return ((np.abs(np.sin(f * v / 1.2)) > 0.2) & (np.abs(np.sin((u + 2.5 * (row % 2) / f * math.pi) * f / 2.4)) > 0.15)).astype(np.float32)
    if material == "rings":
        cx, cy = rng.uniform(0, SIZE, 2)
        return (np.sin(f * np.hypot(xx - cx, yy - cy)) > 0).astype(np.float32)
    if material == "zigzag":
        return (np.sin(f * u + 3.0 * np.abs(((v * f / 4) % 2) - 1)) > 0).astype(np.float32)
    if material == "speckle":
        return (rng.random((SIZE, SIZE)) < 0.25).astype(np.float32)
    return np.zeros((SIZE, SIZE), np.float32)   # gloss: one colour, a strong highlight (below)


def render(rng: np.random.Generator, kind: str, material: str) -> np.ndarray:
    """One image, uint8 3 x SIZE x SIZE: the object of ``kind`` in ``material``, lit from a random
    direction (Lambert shading on a height map from its blurred mask, a specular spot), its shadow
    cast on the background, then a camera's white balance, exposure, blur and noise."""
    mask = silhouette(rng, kind)
    bg = background(rng)
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.6
    light /= np.linalg.norm(light)
    height = _blur(mask, 2.5) * 6.0
    gy, gx = np.gradient(height)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    lambert = np.clip(normal @ light, 0, 1)
    shine = 0.9 if material == "gloss" else rng.uniform(0.0, 0.4)
    spec = shine * lambert ** rng.uniform(12, 30)
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    pattern = surface(rng, material)[..., None]
    albedo = a * pattern + b * (1 - pattern)
    obj = albedo * (0.35 + 0.75 * lambert[..., None]) + spec[..., None]
    dx, dy = int(round(-light[0] * 5)), int(round(-light[1] * 5))
    shadow = _blur(np.roll(np.roll(mask, dy, 0), dx, 1), 2.0)
    img = bg * (1 - 0.55 * shadow[..., None])
    m = mask[..., None]
    img = img * (1 - m) + obj * m
    img = img * rng.uniform(0.8, 1.2, 3) * rng.uniform(0.7, 1.3)       # white balance, exposure
    img = _blur(img, rng.uniform(0.2, 0.7))
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1)


def _make(classes: Tuple[str, ...], per_class: int, seed: int, draw) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    rng = np.random.default_rng(seed)
    x = np.empty((len(classes) * per_class, 3, SIZE, SIZE), np.uint8)
    y = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    for i, label in enumerate(y):
        x[i] = draw(rng, classes[label])
    return x, y, list(classes)


def make_objects(seed: int = 0):
    return _make(KINDS_A, 400, seed, lambda rng, k: render(rng, k, MATERIALS[rng.integers(len(MATERIALS))]))


def make_materials(seed: int = 0):
    kinds = KINDS_A + KINDS_B
    return _make(MATERIALS, 400, seed + 1, lambda rng, m: render(rng, kinds[rng.integers(len(kinds))], m))


def make_novel_objects(seed: int = 0):
    return _make(KINDS_B, 100, seed + 2, lambda rng, k: render(rng, k, MATERIALS[rng.integers(len(MATERIALS))]))
