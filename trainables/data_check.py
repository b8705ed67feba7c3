"""What a dataset needs on disk, checked without importing torch."""
from __future__ import annotations

import os

from tunesmith.trainables.config import ConfigError, DatasetConfig

TORCHVISION_FILES = {
    "mnist": ("MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion_mnist": ("FashionMNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3",
                                        "data_batch_4", "data_batch_5", "test_batch"]),
}


def check_data_dir_given(cfg: DatasetConfig) -> None:
    """What the spec itself must say, wherever the data lives: checked with the spec (validate,
    run, smith, submit), and again where the data is read."""
    if cfg.name == "imagefolder" and not cfg.data_dir:
        raise ConfigError("dataset.data_dir", None, "imagefolder needs a data_dir with one subfolder per class")
    if cfg.name in TORCHVISION_FILES and not cfg.download and not cfg.data_dir:
        raise ConfigError("dataset.data_dir", None, f"{cfg.name} needs a data_dir (or download: true)")


def check_dataset_files(cfg: DatasetConfig) -> None:
    """A missing dataset is a one-line error naming the path and the files expected there.
    Runs where the data is read: in the trial, and on the driver for local sweeps."""
    check_data_dir_given(cfg)
    if cfg.name == "imagefolder":
        if not os.path.isdir(os.path.expanduser(cfg.data_dir)):
            raise ConfigError("dataset.data_dir", cfg.data_dir, "no such directory")
        return
    if cfg.name not in TORCHVISION_FILES or cfg.download:
        return
    sub, files = TORCHVISION_FILES[cfg.name]
    where = os.path.join(os.path.expanduser(cfg.data_dir), sub)
    missing = [f for f in files if not (os.path.exists(os.path.join(where, f))
                                        or os.path.exists(os.path.join(where, f + ".gz")))]
    if missing:
        raise ConfigError("dataset.data_dir", cfg.data_dir,
                          f"{cfg.name} not found: expected {', '.join(files)} in {where} "
                          f"(or set dataset.download: true to fetch it)")
