"""Datasets for the trainer: compact in memory, shared once per node, or streamed from disk.

In memory, images are kept as the source's own integers (uint8, or digits' 0-16) and turned into
normalised float32 per batch, on the trial's device (the airbench pattern): a quarter of the
memory of a float copy, and on a GPU the data lives there at that size. A trial samples a
permutation and slices; no per-sample DataLoader. A worker process keeps what it loaded for the
trials that reuse it, and a sweep shares one copy per node through Ray's object store
(trainables/shared.py).

An image folder too large for the memory budget is streamed instead: worker processes decode,
resize and batch the files in the trainer's own permutation, so the batches (and so the metrics)
are those of the in-memory path on the same data and seed.

Both kinds offer the trainer the same few calls: ``epoch(perm, batch)``, ``val_batches(batch)``,
``val_sample(n)``, and ``shape``/``classes``/``train_y``/``val_y``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError, DatasetConfig
from tunesmith.trainables.datafiles import check_dataset_files


class _Normaliser:
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
    """A dataset held in memory. ``train_x``/``val_x`` hold the source's integers (N x C x H x W);
    ``scale`` maps them to [0, 1]; ``mean``/``std`` are the training set's per-channel statistics
    of the scaled values."""
    train_x: torch.Tensor
    train_y: torch.Tensor   # int64 N
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    scale: float = 1 / 255
    how: str = "in memory"
    _norm: Optional[_Normaliser] = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train_x, self.train_y, self.val_x, self.val_y))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self._norm is None:
            self._norm = _Normaliser(self.scale, self.mean, self.std)
        return self._norm(x)

    def to(self, device) -> "ImageData":
        return ImageData(self.train_x.to(device), self.train_y.to(device), self.val_x.to(device),
                         self.val_y.to(device), self.classes, self.mean, self.std, self.scale, self.how)

    # --- what the trainer calls ---------------------------------------------------------
    def epoch(self, perm: torch.Tensor, batch: int, steps: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        perm = perm.to(self.train_x.device)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            yield self.normalise(self.train_x[idx]), self.train_y[idx]

    def val_batches(self, batch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_y), batch):
            yield self.normalise(self.val_x[i:i + batch]), self.val_y[i:i + batch]

    def val_sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.val_x[:n]), self.val_y[:n]

    def arrays(self) -> dict:
        """Plain numpy arrays and metadata: what goes into Ray's object store."""
        return {"train_x": self.train_x.cpu().numpy(), "train_y": self.train_y.cpu().numpy(),
                "val_x": self.val_x.cpu().numpy(), "val_y": self.val_y.cpu().numpy(),
                "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "scale": self.scale}

    @classmethod
    def from_arrays(cls, a: dict, how: str) -> "ImageData":
        """Zero-copy: the tensors view the arrays, which Ray maps read-only from shared memory."""
        import warnings
        with warnings.catch_warnings():   # read-only arrays: the trainer never writes to its data
            warnings.simplefilter("ignore", UserWarning)
            t = {k: torch.from_numpy(a[k]) for k in ("train_x", "train_y", "val_x", "val_y")}
        return cls(t["train_x"], t["train_y"], t["val_x"], t["val_y"], tuple(a["classes"]), tuple(a["mean"]),
                   tuple(a["std"]), a["scale"], how)


def _split_index(n: int, cfg: DatasetConfig):
    """Seeded split; stratification is unnecessary at these sizes but the seed is not."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    return perm[n_val:], perm[:n_val]


def _stats(x: torch.Tensor, scale: float, chunk_bytes: int = 16 << 20) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
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


def _finish(x: torch.Tensor, y: torch.Tensor, cfg: DatasetConfig, classes, scale: float) -> ImageData:
    """Split ``x``, which the loader made and hands over: its rows are put in split order in
    place, train rows first, and both sets are views of it. Indexing would hold the set twice."""
    train, val = _split_index(len(x), cfg)
    order = torch.cat([train, val])
    _permute_rows_(x.numpy(), order.numpy())
    y = y[order]
    n = len(train)
    return _finish_split(x[:n], y[:n], x[n:], y[n:], classes, scale)


def _permute_rows_(a: np.ndarray, order: np.ndarray) -> None:
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


def _finish_split(tx, ty, vx, vy, classes, scale: float) -> ImageData:
    mean, std = _stats(tx, scale)
    return ImageData(tx.contiguous(), ty.long(), vx.contiguous(), vy.long(), tuple(str(c) for c in classes),
                     mean, std, scale)


def _digits_arrays():
    """scikit-learn's digits (1797 8x8 images, 0..16, ships with the package: no download) as
    (images, labels). The CSV is read from the installed package: importing sklearn.datasets
    costs about 1.3 s, on the path of every `smith` and `lr-find` to their first result."""
    import importlib.util
    found = importlib.util.find_spec("sklearn")   # locates the package without importing it
    path = os.path.join(found.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if found else ""
    if not os.path.exists(path):   # a layout we do not know: the documented loader
        from sklearn.datasets import load_digits as sk_digits
        d = sk_digits()
        return d.images, d.target
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits(cfg: DatasetConfig) -> ImageData:
    images, labels = _digits_arrays()
    x = torch.tensor(images, dtype=torch.uint8).unsqueeze(1)   # the source's own 0..16
    y = torch.tensor(labels, dtype=torch.int64)
    return _finish(x, y, cfg, [str(c) for c in range(10)], scale=1 / 16)


def load_torchvision(cfg: DatasetConfig) -> ImageData:
    import torchvision.datasets as tvd
    check_dataset_files(cfg)
    root = os.path.expanduser(cfg.data_dir or "data")
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    train, test = (cls(root, train=flag, download=cfg.download) for flag in (True, False))

    def tensors(ds):
        x = torch.as_tensor(ds.data)   # uint8 already: kept as it is
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)   # CIFAR is N x H x W x C
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    (tx, ty), (vx, vy) = tensors(train), tensors(test)   # the official split is the validation set
    return _finish_split(tx, ty, vx, vy, train.classes, 1 / 255)


def load_generated(cfg: DatasetConfig) -> ImageData:
    """glyphs, shapes, letters: made by tunesmith itself and cached (trainables/generated.py)."""
    from tunesmith.trainables import generated
    x, y, classes = generated.load(cfg.name)
    return _finish(torch.from_numpy(x), torch.from_numpy(y), cfg, classes, 1 / 255)


def load_synthetic(cfg: DatasetConfig) -> ImageData:
    """Random images with random labels: for throughput, not accuracy."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    c, s = cfg.channels or 3, cfg.image_size or 32
    x = torch.randint(0, 256, (cfg.num_samples, c, s, s), generator=g, dtype=torch.uint8)
    y = torch.randint(0, cfg.num_classes, (cfg.num_samples,), generator=g)
    return _finish(x, y, cfg, [str(i) for i in range(cfg.num_classes)], 1 / 255)


def load_imagefolder(cfg: DatasetConfig) -> ImageData:
    from tunesmith.trainables import folder
    plan = folder.scan(cfg)
    return plan.load()


LOADERS: Dict[str, Callable[[DatasetConfig], ImageData]] = {
    "digits": load_digits,
    "mnist": load_torchvision,
    "fashion_mnist": load_torchvision,
    "cifar10": load_torchvision,
    "imagefolder": load_imagefolder,
    "synthetic": load_synthetic,
    "glyphs": load_generated,
    "shapes": load_generated,
    "letters": load_generated,
}

_CACHE: Dict[tuple, object] = {}


def list_datasets() -> list:
    return sorted(LOADERS)


def source_key(cfg: DatasetConfig) -> DatasetConfig:
    """The fields that decide the arrays (not the per-batch augmentation)."""
    return cfg.model_copy(update={"augment": "none"})


def load(cfg: DatasetConfig, device: Optional[torch.device] = None, shared: Optional[dict] = None):
    """Load once per process and device; later trials in a reused worker get the cached data.
    ``shared``: arrays from Ray's object store (trainables/shared.py), used instead of the files.
    An image folder over the memory budget, or with ``stream: true``, comes back streaming."""
    device = torch.device(device or "cpu")
    src = source_key(cfg)
    key = (src, str(device))
    if key in _CACHE:
        return _CACHE[key]
    if cfg.name not in LOADERS:
        raise ConfigError("dataset.name", cfg.name, f"unknown; choose from {', '.join(list_datasets())}")
    cpu_key = (src, "cpu")
    data = _CACHE.get(cpu_key)
    if data is None:
        if shared is not None:
            data = ImageData.from_arrays(shared, "in memory, shared")
        elif cfg.name == "imagefolder":
            from tunesmith.trainables import folder
            plan = folder.scan(cfg)
            data = plan.stream() if plan.streams else plan.load()
        else:
            data = LOADERS[cfg.name](cfg)
        _CACHE[cpu_key] = data
    if device.type != "cpu":
        # uint8 on the GPU: a quarter of a float copy; a stream moves each batch there. The
        # streaming object is copied so that the CPU entry in the cache keeps its device.
        import copy
        data = data.to(device) if isinstance(data, ImageData) else copy.copy(data).to(device)
    _CACHE[key] = data
    return data


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Batch-level augmentation on the device: random 4-pixel-padded crops, optional flips."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (torch.randint(0, 2 * pad + 1, (2,), generator=generator)).tolist()
    out = padded[:, :, dy:dy + h, dx:dx + w]
    if kind == "flip_crop":
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip.to(x.device).view(n, 1, 1, 1), out.flip(3), out)
    return out
