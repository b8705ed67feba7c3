"""A dataset held in memory, and the split every loader shares: seeded by split_seed, train
rows first, statistics read from the training part only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError, DatasetConfig


class Normaliser:
    """x (integers) -> (x * scale - mean) / std per channel, as one multiply-add per batch."""

    def __init__(self, scale: float, mean: Sequence[float], std: Sequence[float]):
        self.mul = [scale / s for s in std]
        self.add = [-m / s for m, s in zip(mean, std)]
        self._on: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self._on:
            view = (1, -1, 1, 1)
            self._on[key] = (torch.tensor(self.mul, device=x.device).view(view),
                             torch.tensor(self.add, device=x.device).view(view))
        mul, add = self._on[key]
        return x.float() * mul + add


@dataclass
class ImageData:
    """A dataset held in memory. ``train_x``/``val_x``/``test_x`` hold the source's integers
    (N x C x H x W); ``scale`` maps them to [0, 1]; ``mean``/``std`` are the training set's
    per-channel statistics of the scaled values. The test part (None: none held out) is read by
    ``test_batches`` alone, which only a finalist's final model calls (#28)."""
    train_x: torch.Tensor
    train_y: torch.Tensor   # int64 N
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    scale: float = 1 / 255
    how: str = "in memory"
    _norm: Optional[Normaliser] = field(default=None, repr=False, compare=False)
    skipped: Tuple[Tuple[str, str], ...] = field(default=(), repr=False, compare=False)   # (file, why) left out
    test_x: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)
    test_y: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                                          *self._test()))

    def _test(self) -> tuple:
        return () if self.test_y is None else (self.test_x, self.test_y)

    @property
    def test_size(self) -> int:
        return 0 if self.test_y is None else len(self.test_y)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self._norm is None:
            self._norm = Normaliser(self.scale, self.mean, self.std)
        return self._norm(x)

    def cut(self, per_class: int) -> "ImageData":
        """At most ``per_class`` training images of each class (the first in split order, which
        split_seed fixed), the statistics read again; validation unchanged."""
        y = self.train_y.cpu()
        keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(self.num_classes)]).sort().values
        if len(keep) == len(y):
            return self
        tx = self.train_x[keep.to(self.train_x.device)]
        mean, std = stats(tx.cpu(), self.scale)
        return ImageData(tx, self.train_y[keep.to(self.train_y.device)], self.val_x, self.val_y, self.classes,
                         mean, std, self.scale, self.how, test_x=self.test_x, test_y=self.test_y)

    def to(self, device) -> "ImageData":
        test = [None if t is None else t.to(device) for t in (self.test_x, self.test_y)]
        return ImageData(self.train_x.to(device), self.train_y.to(device), self.val_x.to(device),
                         self.val_y.to(device), self.classes, self.mean, self.std, self.scale, self.how,
                         test_x=test[0], test_y=test[1])

    # --- what the trainer calls ---------------------------------------------------------
    def epoch(self, perm: torch.Tensor, batch: int, steps: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        perm = perm.to(self.train_x.device)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            yield self.normalise(self.train_x[idx]), self.train_y[idx]

    def val_batches(self, batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_y), batch):
            yield self.normalise(self.val_x[i:i + batch]), self.val_y[i:i + batch]

    def test_batches(self, batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, self.test_size, batch):
            yield self.normalise(self.test_x[i:i + batch]), self.test_y[i:i + batch]

    def val_sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.val_x[:n]), self.val_y[:n]

    def arrays(self) -> dict:
        """Plain numpy arrays and metadata: what goes into Ray's object store."""
        test = {} if self.test_y is None else {"test_x": self.test_x.cpu().numpy(), "test_y": self.test_y.cpu().numpy()}
        return {"train_x": self.train_x.cpu().numpy(), "train_y": self.train_y.cpu().numpy(),
                "val_x": self.val_x.cpu().numpy(), "val_y": self.val_y.cpu().numpy(), **test,
                "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "scale": self.scale}

    @classmethod
    def from_arrays(cls, a: dict, how: str) -> "ImageData":
        """Zero-copy: the tensors view the arrays, which Ray maps read-only from shared memory."""
        import warnings
        with warnings.catch_warnings():   # read-only arrays: the trainer never writes to its data
            warnings.simplefilter("ignore", UserWarning)
            t = {k: torch.from_numpy(a[k]) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
                 if k in a}
        return cls(t["train_x"], t["train_y"], t["val_x"], t["val_y"], tuple(a["classes"]), tuple(a["mean"]),
                   tuple(a["std"]), a["scale"], how, test_x=t.get("test_x"), test_y=t.get("test_y"))


def with_stats(data, mean, std):
    """``data`` (in memory or streaming) normalised with other statistics, a pretrained model's:
    the arrays or files are shared, not copied."""
    import copy
    other = copy.copy(data)
    other.mean, other.std = tuple(mean), tuple(std)
    if isinstance(other, ImageData):
        other._norm = None
    else:
        other.normalise = Normaliser(data.scale, other.mean, other.std)
    return other


def split_index(n: int, cfg: DatasetConfig, test: bool = True, val: bool = True):
    """(train, validation, test) row indices, seeded by split_seed alone; stratification is
    unnecessary at these sizes but the seed is not. The validation rows are the first
    val_fraction of the permutation whatever test_fraction is, so a validation figure stays
    comparable with one read before the test split existed; the test rows (test_fraction of
    the whole; none with ``test`` false: the source has its own) come next; with ``val``
    false the source has its own validation part, and none is split off."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * cfg.val_fraction))) if val else 0
    n_test = max(1, int(round(n * cfg.test_fraction))) if test and cfg.test_fraction > 0 else 0
    if n - n_val - n_test < 2:
        raise ConfigError("dataset.test_fraction", cfg.test_fraction, f"leaves {n - n_val - n_test} of {n} images "
                          f"to train on after val_fraction {cfg.val_fraction:g}; lower one of them")
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def stats(x: torch.Tensor, scale: float, chunk_bytes: int = 16 << 20) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of x * scale, a chunk at a time: no float copy of the whole set.
    A chunk is sized in bytes of float64, not in images: 4,096 images of 3x128x128 were 1.6 GB,
    twice over, ten times the uint8 set being measured."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    chunk = max(1, chunk_bytes // max(1, x[0].numel() * 8))
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].to(torch.float64) * scale
        s += part.sum(dim=(0, 2, 3))
        s2 += (part * part).sum(dim=(0, 2, 3))
        n += part.numel() // c
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0) * n / max(1, n - 1)
    return tuple(mean.tolist()), tuple(var.sqrt().clamp_min(1e-6).tolist())


def finish(x: torch.Tensor, y: torch.Tensor, cfg: DatasetConfig, classes, scale: float) -> ImageData:
    """Split ``x``, which the loader made and hands over: its rows are put in split order in
    place, train rows first, and both sets are views of it. Indexing would hold the set twice."""
    train, val, test = split_index(len(x), cfg)
    order = torch.cat([train, val, test])
    permute_rows_(x.numpy(), order.numpy())
    y = y[order]
    n, v = len(train), len(train) + len(val)
    return finish_split(x[:n], y[:n], x[n:v], y[n:v], classes, scale, x[v:] if len(test) else None,
                        y[v:] if len(test) else None)


def permute_rows_(a: np.ndarray, order: np.ndarray) -> None:
    """``a[:] = a[order]`` with one spare row: each cycle of the permutation is followed once."""
    done = np.zeros(len(a), dtype=bool)
    for start in range(len(a)):
        if done[start]:
            continue
        done[start] = True
        if order[start] == start:
            continue
        spare = a[start].copy()
        j = start
        while True:
            k = int(order[j])
            if k == start:
                a[j] = spare
                break
            a[j] = a[k]
            done[k] = True
            j = k


def finish_split(tx, ty, vx, vy, classes, scale: float, ex=None, ey=None) -> ImageData:
    """``ex``/``ey``: the test part, or None."""
    mean, std = stats(tx, scale)
    return ImageData(tx.contiguous(), ty.long(), vx.contiguous(), vy.long(), tuple(str(c) for c in classes),
                     mean, std, scale, test_x=None if ex is None else ex.contiguous(),
                     test_y=None if ey is None else ey.long())
