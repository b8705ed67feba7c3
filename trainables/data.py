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

import math
import os
from typing import Callable, Dict, Optional

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError, DatasetConfig
from tunesmith.trainables.data_check import check_dataset_files


from tunesmith.trainables.image_data import ImageData, finish, finish_split, split_index


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
    return finish(x, y, cfg, [str(c) for c in range(10)], scale=1 / 16)


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

    (x, y), (ex, ey) = tensors(train), tensors(test)   # the official test split is the test set
    tr, va, _ = split_index(len(x), cfg, test=False)   # validation split off the training part
    return finish_split(x[tr], y[tr], x[va], y[va], train.classes, 1 / 255, ex, ey)


def load_generated(cfg: DatasetConfig) -> ImageData:
    """glyphs, shapes, letters: made by tunesmith itself and cached (trainables/generated.py)."""
    from tunesmith.trainables import generated
    x, y, classes = generated.load(cfg.name)
    return finish(torch.from_numpy(x), torch.from_numpy(y), cfg, classes, 1 / 255)


def load_synthetic(cfg: DatasetConfig) -> ImageData:
    """Random images with random labels: for throughput, not accuracy."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    c, s = cfg.channels or 3, cfg.image_size or 32
    x = torch.randint(0, 256, (cfg.num_samples, c, s, s), generator=g, dtype=torch.uint8)
    y = torch.randint(0, cfg.num_classes, (cfg.num_samples,), generator=g)
    return finish(x, y, cfg, [str(i) for i in range(cfg.num_classes)], 1 / 255)


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
    "objects": load_generated,
    "materials": load_generated,
    "novel_objects": load_generated,
}

_CACHE: Dict[tuple, object] = {}


def cached(src: DatasetConfig):
    """The CPU copy this process already loaded of ``src`` (smith's range test), or None."""
    return _CACHE.get((src, "cpu"))


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
        data = per_class(cfg, ImageData.from_arrays(shared, "in memory, shared")) if shared is not None else read(cfg)
        _CACHE[cpu_key] = data
    if device.type != "cpu":
        # uint8 on the GPU: a quarter of a float copy; a stream moves each batch there. The
        # streaming object is copied so that the CPU entry in the cache keeps its device.
        import copy
        data = data.to(device) if isinstance(data, ImageData) else copy.copy(data).to(device)
    _CACHE[key] = data
    return data


def read(cfg: DatasetConfig):
    """The data from its source, on the CPU, not cached (load caches)."""
    if cfg.name == "imagefolder":
        from tunesmith.trainables import folder
        plan = folder.scan(cfg)
        data = plan.stream() if plan.streams else plan.load()
    else:
        data = LOADERS[cfg.name](cfg)
    return per_class(cfg, data)


def per_class(cfg: DatasetConfig, data):
    """``dataset.train_per_class`` applied (a no-op on data already cut: an image folder is cut
    in its file lists, streamed or not)."""
    if not cfg.train_per_class or not isinstance(data, ImageData):
        return data
    return data.cut(cfg.train_per_class)


PHOTO = ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter")
RRC_SCALE = (0.08, 1.0)            # torchvision's RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4                        # ColorJitter's brightness, contrast and saturation: timm's default


def transforms(kind) -> tuple:
    """``dataset.augment`` as torchvision's transform names."""
    if isinstance(kind, (tuple, list)):
        return tuple(kind)
    return {"none": (), "crop": ("RandomCrop",), "flip_crop": ("RandomCrop", "RandomHorizontalFlip"),
            "photo": PHOTO}[kind]


def augment(x: torch.Tensor, kind, generator: torch.Generator, mean=None, std=None) -> torch.Tensor:
    """Batch-level augmentation on the device, each image drawn its own parameters from the
    trial's generator (so a seed repeats them): RandomCrop (reflect-padded by an eighth),
    RandomResizedCrop and RandomHorizontalFlip (one affine resampling), ColorJitter (brightness,
    contrast, saturation, on the un-normalised image: ``mean``/``std`` are the normalisation's)."""
    names = transforms(kind)
    if not names:
        return x
    n, c, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=generator) < 0.5 if "RandomHorizontalFlip" in names else None
    if "RandomCrop" in names:
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx, dy = (torch.randint(0, 2 * pad + 1, (2,), generator=generator)).tolist()
        x = padded[:, :, dy:dy + h, dx:dx + w]
    if "RandomResizedCrop" in names:
        area = torch.empty(n).uniform_(*RRC_SCALE, generator=generator)
        logr = torch.empty(n).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
        ratio = logr.exp()
        sw = (area * ratio).sqrt().clamp(max=1.0)   # the crop's width and height, as shares of the side
        sh = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sw)
        cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sh)
        sx = sw * (torch.where(flip, -1.0, 1.0) if flip is not None else 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sh, cy
        grid = torch.nn.functional.affine_grid(theta.to(dev, non_blocking=True), (n, c, h, w), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection",
                                            align_corners=False)
    elif flip is not None:
        x = torch.where(flip.to(dev, non_blocking=True).view(n, 1, 1, 1), x.flip(3), x)   # no wait for the GPU
    if "ColorJitter" in names:
        x = color_jitter(x, generator, mean, std)
    return x


def color_jitter(x: torch.Tensor, generator: torch.Generator, mean, std) -> torch.Tensor:
    n, c = x.shape[:2]
    m = torch.tensor(mean if mean is not None else [0.0] * c, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(std if std is not None else [1.0] * c, device=x.device).view(1, c, 1, 1)
    factors = torch.empty(3, n).uniform_(1 - JITTER, 1 + JITTER, generator=generator).to(x.device, non_blocking=True)
    b, k, sat = (f.view(n, 1, 1, 1) for f in factors)
    img = (x * s + m) * b
    grey = _grey(img) if c == 3 else img
    img = (img - grey.mean(dim=(1, 2, 3), keepdim=True)) * k + grey.mean(dim=(1, 2, 3), keepdim=True)
    if c == 3:
        grey = _grey(img)
        img = (img - grey) * sat + grey
    return (img.clamp(0, 1) - m) / s


def _grey(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


def centre_crop(x: torch.Tensor, share: float) -> torch.Tensor:
    """The centre ``share`` of each image, resized back to the input's size: evaluation as the
    pretrained weights' transforms do it (resize, then a centre crop of crop_pct)."""
    if share >= 1:
        return x
    h, w = x.shape[2:]
    ch, cw = max(1, round(h * share)), max(1, round(w * share))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[:, :, top:top + ch, left:left + cw]
    return torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
