"""How an image folder is laid out: class folders (nested at any depth, links followed once),
and the split folders the usual tools make (train/ beside val/, valid/ or test/)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from tunesmith.trainables.config import ConfigError, DatasetConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def display_name(name: str) -> str:
    """A file or folder name as text: names that are not UTF-8 on disk (os.listdir gives them
    with surrogates) are shown with replacement characters, so a class name can be printed,
    written to Parquet and to TensorBoard."""
    return os.fsencode(name).decode("utf-8", "replace")


def classes_and_files(root: str) -> Tuple[List[str], List[str], List[int], int]:
    """(class names, image files, their labels, files that are not images). Class folders may
    nest images at any depth; symbolic links are followed, each real folder once, so a link
    that loops back is read once and not forever."""
    raw = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files, labels, other = [], [], 0
    seen = set()
    for label, name in enumerate(raw):
        for folder, dirs, names in os.walk(os.path.join(root, name), followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:   # a link back into a folder already read
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in sorted(names):
                if fname.startswith("."):
                    continue
                if fname.lower().endswith(IMAGE_SUFFIXES):
                    files.append(os.path.join(folder, fname))
                    labels.append(label)
                else:
                    other += 1
    return [display_name(n) for n in raw], files, labels, other


TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")   # torchvision's, Keras's and Roboflow's habits
TEST_NAMES = ("test", "testing")


def split_folders(root: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(train, validation, test) folder names where ``root`` is laid out by split, as the usual
    tools lay it out, else (None, None, None): then every subfolder is a class."""
    subdirs = {d.lower(): d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
    train = next((subdirs[n] for n in TRAIN_NAMES if n in subdirs), None)
    if train is None:
        return None, None, None
    val = next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
    test = next((subdirs[n] for n in TEST_NAMES if n in subdirs), None)
    return (train, val, test) if val or test else (None, None, None)


def refuse_empty(cfg: DatasetConfig, classes: List[str], labels: List[int], where: str) -> None:
    """A class folder without images is no class: training on the rest would report accuracies
    against a label space that does not exist (9 empty folders of 10 once read val_acc 1.0)."""
    if len(classes) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, "needs at least two class subfolders")
    have = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in have]
    if empty:
        shown = ", ".join(f"{where}{c}/" for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        many = len(empty) > 1
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"class folder{'s' if many else ''} {shown} "
                          f"hold{'' if many else 's'} no images; fill {'them' if many else 'it'} or remove "
                          f"{'them' if many else 'it'}")
