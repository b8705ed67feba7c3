"""Streaming an image folder: DataLoader workers decode, resize and batch the files in the
trainer's permutation; and the decoding both paths share, so both see the same pixels."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # PIL's grey modes deeper than 8 bits
MAX_PIXELS = 100_000_000   # an image past this is skipped and named: a decompression bomb, or a scan no
                           # CNN here trains on at full size (PIL itself only warns below 179 MP)


def _as_8bit(im):
    """A 16-bit, 32-bit or float grey image as 8-bit grey, scaled, where PIL's convert clips (a
    16-bit scan came out white): values above 255 are taken as 16-bit, floats up to 1 as [0, 1].
    The rule is fixed, not per image, so images keep their brightness relative to each other."""
    from PIL import Image
    a = np.asarray(im, dtype=np.float32)   # half float64's memory; the image is reduced already
    top = a.max() if a.size else 0.0
    if im.mode == "F" and top <= 1.0:
        a = a * 255.0
    elif im.mode != "F" and top > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")


def decode(path: str, size: int, mode: str) -> np.ndarray:
    """One image as uint8 C x size x size: converted to ``mode`` (L or RGB), resized bilinearly.
    The same function serves both paths, so both see the same pixels. A large image is brought
    toward the target size while it is decoded (a JPEG's DCT scaling, PIL's reduce) so that a scan
    never sits in memory at full depth; one past MAX_PIXELS is refused (skipped and named)."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"{w}x{h} pixels, past the {MAX_PIXELS / 1e6:g}-megapixel limit")
        if im.format == "JPEG":
            im.draft(None, (size, size))   # decoded at 1/2, 1/4 or 1/8 scale where that still covers size
        factor = min(im.size) // (2 * size)
        if im.mode in WIDE_MODES:
            if im.mode.startswith("I;16"):
                im = im.convert("I")   # 4 bytes a pixel, which reduce takes
            if factor >= 2:
                im = im.reduce(factor)
            im = _as_8bit(im)
        elif factor >= 2:
            try:
                im = im.reduce(factor)
            except ValueError:   # a mode reduce does not take (a palette): resized below
                pass
        im = im.convert(mode).resize((size, size), Image.BILINEAR)
        arr = np.array(im, dtype=np.uint8)   # a copy: PIL's own buffer is read-only, which torch warns of
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class _FileSet(torch.utils.data.Dataset):
    """Decodes one file per item. An unreadable file yields the next readable one (a stable
    choice, so epochs stay reproducible), and the item names it: the decoding worker's own output
    reaches no terminal, so the trial reports it and the sweep's driver names it."""

    def __init__(self, files: Sequence[str], size: int, mode: str, root: str):
        self.files, self.size, self.mode, self.root = list(files), size, mode, root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        bad = []
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            try:
                return torch.from_numpy(decode(self.files[j], self.size, self.mode)), i, bad
            except Exception as exc:   # noqa: BLE001
                bad.append((os.path.relpath(self.files[j], self.root), type(exc).__name__))
        raise ConfigError("dataset.data_dir", self.root, "no readable image")


def _collate(items):
    xs, idx, bad = zip(*items)
    return torch.stack(xs), torch.tensor(idx), [b for some in bad for b in some]


class StreamingData:
    """A folder read from disk batch by batch, in the trainer's permutation."""

    def __init__(self, train_files, train_y, val_files, val_y, classes, mean, std, size, mode, workers, root,
                 test_files=(), test_y=None):
        from tunesmith.trainables.image_data import Normaliser
        self.train_files, self.train_y, self.val_files, self.val_y = train_files, train_y, val_files, val_y
        self.test_files, self.test_y = list(test_files), test_y   # read by test_batches alone
        self.classes, self.mean, self.std, self.scale = classes, mean, std, 1 / 255
        self.size, self.mode, self.workers, self.root = size, mode, workers, root
        self.normalise = Normaliser(self.scale, mean, std)
        self.how = f"streaming, {workers} workers"
        self.device = torch.device("cpu")
        self._train = _FileSet(train_files, size, mode, root)
        self._val = _FileSet(val_files, size, mode, root)
        self.met_unreadable: dict = {}   # file -> why, as decoding met them (the trainer reports them)

    num_classes = property(lambda self: len(self.classes))
    shape = property(lambda self: (1 if self.mode == "L" else 3, self.size, self.size))
    nbytes = property(lambda self: 0)
    test_size = property(lambda self: len(self.test_files))

    def to(self, device) -> "StreamingData":
        self.device = torch.device(device)
        return self

    def _loader(self, dataset, batches):
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
            multiprocessing_context="fork" if self.workers else None)

    def epoch(self, perm: torch.Tensor, batch: int, steps: int):
        chunks = [perm[i * batch:(i + 1) * batch].tolist() for i in range(steps)]
        y_all = self.train_y
        for x, idx, bad in self._loader(self._train, chunks):
            self.met_unreadable.update(bad)
            yield self.normalise(x.to(self.device, non_blocking=True)), y_all[idx].to(self.device)

    def val_batches(self, batch: int):
        yield from self._in_order(self._val, self.val_y, batch)

    def test_batches(self, batch: int):
        yield from self._in_order(_FileSet(self.test_files, self.size, self.mode, self.root), self.test_y, batch)

    def _in_order(self, files: "_FileSet", labels: torch.Tensor, batch: int):
        n = len(files)
        chunks = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        for x, idx, bad in self._loader(files, chunks):
            self.met_unreadable.update(bad)
            yield self.normalise(x.to(self.device, non_blocking=True)), labels[idx].to(self.device)

    def val_sample(self, n: int):
        n = min(n, len(self.val_files))
        x = torch.stack([self._val[i][0] for i in range(n)])
        return self.normalise(x.to(self.device)), self.val_y[:n].to(self.device)
