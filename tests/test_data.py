import numpy as np
import pytest
import torch
from PIL import Image

from trainables import data
from trainables.config import ConfigError, DatasetConfig
from trainables.datafiles import check_dataset_files


def test_digits_split_is_seeded_and_75_25():
    a = data.load_digits(DatasetConfig())
    b = data.load_digits(DatasetConfig())
    c = data.load_digits(DatasetConfig(split_seed=1))
    assert len(a.train_y) + len(a.val_y) == 1797
    assert len(a.val_y) == round(1797 * 0.25)
    assert a.shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_y, c.val_y)
    # normalised with the training set's statistics
    assert abs(a.train_x.mean().item()) < 1e-4


def _make_folder(root, classes=("cat", "dog", "fox"), per_class=6, size=(20, 14)):
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size[1], size[0], 3)) * 60 + k * 80).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_loads_classes_resizes_and_splits(tmp_path):
    _make_folder(tmp_path / "letters")
    cfg = DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "letters"), image_size=16)
    d = data.load_imagefolder(cfg)
    assert d.classes == ("cat", "dog", "fox")
    assert d.shape == (3, 16, 16)
    assert len(d.train_y) + len(d.val_y) == 18
    assert len(d.val_y) == round(18 * 0.25)
    gray = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "letters"),
                                               image_size=8, channels=1))
    assert gray.shape == (1, 8, 8)


def test_imagefolder_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        check_dataset_files(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "missing")))
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(ConfigError, match="two class subfolders"):
        data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "one")))


@pytest.mark.parametrize("name,expected", [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1")])
def test_missing_torchvision_dataset_names_path_and_files(tmp_path, name, expected):
    with pytest.raises(ConfigError) as err:
        check_dataset_files(DatasetConfig(name=name, data_dir=str(tmp_path)))
    msg = str(err.value)
    assert "dataset.data_dir" in msg and str(tmp_path) in msg and expected in msg
    assert "\n" not in msg


def test_mnist_from_local_raw_files(tmp_path):
    """The real torchvision reader on files this test writes in MNIST's idx format."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, arr, magic):
        with open(path, "wb") as fh:
            fh.write(magic.to_bytes(4, "big"))
            for dim in arr.shape:
                fh.write(int(dim).to_bytes(4, "big"))
            fh.write(arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 2051)
        idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    d = data.load_torchvision(DatasetConfig(name="mnist", data_dir=str(tmp_path)))
    assert d.shape == (1, 28, 28) and len(d.train_y) == 40 and len(d.val_y) == 12


def test_synthetic_shape_and_cache():
    cfg = DatasetConfig(name="synthetic", num_samples=64, image_size=12, channels=3, num_classes=5)
    d = data.load(cfg)
    assert d.shape == (3, 12, 12) and d.num_classes == 5
    assert data.load(cfg) is d   # a reused worker keeps the tensors


def test_augment_keeps_shape_and_changes_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    out = data.augment(x, "flip_crop", g)
    assert out.shape == x.shape
    assert data.augment(x, "none", g) is x
