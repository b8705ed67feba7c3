"""Datasets held in memory as tensors and batched by index.

Small image sets fit in memory (and on the GPU), so a trial samples a permutation and
slices, with no per-sample DataLoader. A worker process loads a dataset once and keeps it
for the trials that reuse the worker (Tune's reuse_actors).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from trainables.config import ConfigError, DatasetConfig
from trainables.datafiles import check_dataset_files


@dataclass
class ImageData:
    train_x: torch.Tensor   # float32 N x C x H x W, normalised with the training set's statistics
    train_y: torch.Tensor   # int64 N
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device) -> "ImageData":
        return ImageData(self.train_x.to(device), self.train_y.to(device), self.val_x.to(device),
                         self.val_y.to(device), self.classes, self.mean, self.std)


def _split(x: torch.Tensor, y: torch.Tensor, cfg: DatasetConfig):
    """Seeded split; stratification is unnecessary at these sizes but the seed is not."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, int(round(len(x) * cfg.val_fraction)))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def _normalise(train_x, val_x):
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((train_x - mean) / std, (val_x - mean) / std,
            tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))


def _finish(train_x, train_y, val_x, val_y, classes) -> ImageData:
    train_x, val_x, mean, std = _normalise(train_x.float(), val_x.float())
    return ImageData(train_x.contiguous(), train_y.long(), val_x.contiguous(), val_y.long(),
                     tuple(str(c) for c in classes), mean, std)


def load_digits(cfg: DatasetConfig) -> ImageData:
    from sklearn.datasets import load_digits as sk_digits  # ships with scikit-learn: no download
    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return _finish(*_split(x, y, cfg), classes=[str(c) for c in range(10)])


def load_torchvision(cfg: DatasetConfig) -> ImageData:
    import torchvision.datasets as tvd
    check_dataset_files(cfg)
    root = os.path.expanduser(cfg.data_dir or "data")
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    train, test = (cls(root, train=flag, download=cfg.download) for flag in (True, False))

    def tensors(ds):
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)   # CIFAR is N x H x W x C
        return x.float() / 255.0, torch.as_tensor(ds.targets, dtype=torch.int64)

    (tx, ty), (vx, vy) = tensors(train), tensors(test)   # the official split is the validation set
    return _finish(tx, ty, vx, vy, classes=train.classes)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_imagefolder(cfg: DatasetConfig) -> ImageData:
    from PIL import Image
    check_dataset_files(cfg)
    root = os.path.expanduser(cfg.data_dir)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, "needs at least two class subfolders")
    size = cfg.image_size or 32
    mode = "L" if cfg.channels == 1 else "RGB"
    images, labels = [], []
    for label, cls_name in enumerate(classes):
        folder = os.path.join(root, cls_name)
        for fname in sorted(os.listdir(folder)):
            if not fname.lower().endswith(IMAGE_SUFFIXES):
                continue
            with Image.open(os.path.join(folder, fname)) as im:
                im = im.convert(mode).resize((size, size), Image.BILINEAR)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                images.append(t.view(size, size, -1).permute(2, 0, 1))
            labels.append(label)
    if len(images) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"found {len(images)} images; need at least 2")
    x = torch.stack(images).float() / 255.0
    y = torch.tensor(labels, dtype=torch.int64)
    return _finish(*_split(x, y, cfg), classes=classes)


def load_generated(cfg: DatasetConfig) -> ImageData:
    """glyphs, shapes, letters: made by tunesmith itself and cached (trainables/generated.py)."""
    from trainables import generated
    x, y, classes = generated.load(cfg.name)
    x = torch.from_numpy(x).float() / 255.0
    return _finish(*_split(x, torch.from_numpy(y), cfg), classes=classes)


def load_synthetic(cfg: DatasetConfig) -> ImageData:
    """Random images with random labels: for throughput, not accuracy."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    c, s = cfg.channels or 3, cfg.image_size or 32
    x = torch.rand(cfg.num_samples, c, s, s, generator=g)
    y = torch.randint(0, cfg.num_classes, (cfg.num_samples,), generator=g)
    return _finish(*_split(x, y, cfg), classes=[str(i) for i in range(cfg.num_classes)])


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

_CACHE: Dict[tuple, ImageData] = {}


def list_datasets() -> list:
    return sorted(LOADERS)


def load(cfg: DatasetConfig, device: Optional[torch.device] = None) -> ImageData:
    """Load once per process and device; later trials in a reused worker get the cached tensors."""
    device = torch.device(device or "cpu")
    key = (cfg, str(device))
    if key not in _CACHE:
        try:
            loader = LOADERS[cfg.name]
        except KeyError:
            raise ConfigError("dataset.name", cfg.name, f"unknown; choose from {', '.join(list_datasets())}") from None
        cpu_key = (cfg, "cpu")
        data = _CACHE.get(cpu_key) or loader(cfg)
        _CACHE[cpu_key] = data
        _CACHE[key] = data if device.type == "cpu" else data.to(device)
    return _CACHE[key]


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
