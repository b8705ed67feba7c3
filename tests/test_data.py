import collections
import os
import numpy as np
import pytest
import torch
from PIL import Image

from tunesmith.trainables import data, folder, image_data
from tunesmith.trainables.config import ConfigError, DatasetConfig
from tunesmith.trainables.data_check import check_dataset_files


def test_digits_split_is_seeded_train_val_and_test():
    a = data.load_digits(DatasetConfig())
    b = data.load_digits(DatasetConfig())
    c = data.load_digits(DatasetConfig(split_seed=1))
    assert len(a.train_y) + len(a.val_y) + a.test_size == 1797
    assert len(a.val_y) == round(1797 * 0.25) and a.test_size == round(1797 * 0.15)
    assert a.shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.val_y, b.val_y) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_y, c.val_y)
    # the validation rows do not move with test_fraction: a figure stays comparable with older ones
    off = data.load_digits(DatasetConfig(test_fraction=0))
    assert off.test_size == 0 and len(off.train_y) + len(off.val_y) == 1797
    assert torch.equal(off.val_x, a.val_x)
    # test rows are neither trained on nor validated on
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(1797, generator=g)
    tr, va, te = image_data.split_index(1797, DatasetConfig())
    assert set(tr.tolist()).isdisjoint(te.tolist()) and set(va.tolist()).isdisjoint(te.tolist())
    assert sorted(tr.tolist() + va.tolist() + te.tolist()) == list(range(1797))
    assert torch.equal(va, perm[:449])
    # kept as the source's integers; normalised per batch with the training set's statistics
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 16
    x = a.normalise(a.train_x)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_digits_read_from_the_package_file_are_scikit_learns_digits():
    from sklearn.datasets import load_digits
    images, labels = data._digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(labels, d.target)


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
    assert len(d.train_y) + len(d.val_y) + d.test_size == 18
    assert len(d.val_y) == round(18 * 0.25) and d.test_size == round(18 * 0.15)
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
    # the official test split is the test set; validation is split off the training part
    assert d.shape == (1, 28, 28) and d.test_size == 12 and len(d.val_y) == 10 and len(d.train_y) == 30


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


def _float_path(x_uint8, scale):
    """The old path: the whole set as float32, normalised once."""
    x = x_uint8.float() * scale
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std


def test_uint8_storage_gives_the_float_path_batches():
    d = data.load_digits(DatasetConfig())
    ref = _float_path(d.train_x, 1 / 16)
    perm = torch.randperm(len(d.train_y), generator=torch.Generator().manual_seed(0))
    (x, y), = list(d.epoch(perm, 64, 1))
    assert x.dtype == torch.float32
    assert torch.allclose(x, ref[perm[:64]], atol=1e-5) and torch.equal(y, d.train_y[perm[:64]])
    assert d.nbytes < 0.3 * (d.train_x.numel() + d.val_x.numel()) * 4 + 1e5   # about a quarter of float32


def test_generated_set_is_uint8_and_a_quarter_of_float():
    d = data.load(DatasetConfig(name="synthetic", num_samples=2000, image_size=32))
    assert d.train_x.dtype == torch.uint8
    assert d.nbytes == pytest.approx((2000 * 3 * 32 * 32) + 2000 * 8, rel=0.01)


def _nested_folder(root, per_class=12):
    """Nested class folders, PNG/JPEG/WebP, mixed sizes and modes, a corrupt file, a text file."""
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("ant", "bee", "cow")):
        for i in range(per_class):
            sub = root / cls / ("deep" if i % 3 == 0 else "") / ("deeper" if i % 6 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            w, h = 10 + i, 14 + 2 * i
            pixels = (rng.random((h, w, 3)) * 60 + k * 80).astype(np.uint8)
            im = Image.fromarray(pixels)
            if i % 4 == 1:
                im = im.convert("L")
            fmt = ("png", "jpeg", "webp")[i % 3]
            if i % 4 == 2 and fmt != "jpeg":
                im = im.convert("RGBA")
            im.save(sub / f"{i}.{'jpg' if fmt == 'jpeg' else fmt}", format=fmt.upper())
    (root / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "ant" / "README.txt").write_text("labels by hand")


def test_imagefolder_as_users_have_it(tmp_path, capsys):
    _nested_folder(tmp_path / "f")
    d = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=16))
    assert d.classes == ("ant", "bee", "cow") and d.shape == (3, 16, 16)
    assert len(d.train_y) + len(d.val_y) + d.test_size == 36   # the broken file skipped, the text file ignored
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "skipped 1 unreadable image" in out and "broken.jpg" in out


def test_a_grey_folder_loads_grey_unless_channels_says_otherwise(tmp_path):
    """dataset.channels unset means the data's own: a folder of grey images (8-bit and 16-bit
    PNGs) is one channel, a single colour image among them makes it RGB, and channels: 3 or 1
    overrides what the folder holds."""
    _make_folder(tmp_path / "g", per_class=4)
    for i, path in enumerate(sorted((tmp_path / "g").rglob("*.png"))):
        with Image.open(path) as im:
            grey = im.convert("L")
        (grey if i % 2 else grey.convert("I;16")).save(path)
    grey = DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "g"), image_size=8)
    assert data.load_imagefolder(grey).shape == (1, 8, 8)
    assert data.load_imagefolder(grey.model_copy(update={"channels": 3})).shape == (3, 8, 8)
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8)).save(tmp_path / "g" / "cat" / "red.png")
    assert data.load_imagefolder(grey).shape == (3, 8, 8)
    assert data.load_imagefolder(grey.model_copy(update={"channels": 1})).shape == (1, 8, 8)


def test_decoded_images_are_writable_for_torch(tmp_path):
    """Streaming hands each decoded image to torch.from_numpy in a loading worker; PIL's own
    buffer is read-only, and torch warned of that once in every worker."""
    _make_folder(tmp_path / "f", per_class=1)
    for mode, channels in (("L", 1), ("RGB", 3)):
        arr = folder.decode(str(tmp_path / "f" / "cat" / "0.png"), 8, mode)
        assert arr.flags.writeable and arr.shape == (channels, 8, 8) and arr.dtype == np.uint8


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit scan (PNG mode I;16) spans 0 to 65535; PIL's convert to 8 bits clipped it, and
    the whole image came out white. It is scaled instead; 16-bit files holding 8-bit values and
    float images in [0, 1] keep their values."""
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    with Image.open(tmp_path / "scan.png") as im:
        assert im.mode.startswith("I")
    for mode in ("L", "RGB"):
        out = folder.decode(str(tmp_path / "scan.png"), 32, mode)
        assert out.min() <= 2 and out.max() >= 253 and abs(float(out.mean()) - 127.5) < 3, (mode, out.min(), out.max())
    small = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint16)
    Image.fromarray(small).save(tmp_path / "small.png")
    assert (folder.decode(str(tmp_path / "small.png"), 32, "L")[0] == small).all()
    Image.fromarray((small / 255.0).astype(np.float32), "F").save(tmp_path / "unit.tif")
    assert np.abs(folder.decode(str(tmp_path / "unit.tif"), 32, "L")[0].astype(int) - small).max() <= 1


def test_mostly_unreadable_folder_is_refused(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            (tmp_path / cls / f"{i}.png").write_bytes(b"garbage")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / cls / "ok.png")
    with pytest.raises(ConfigError, match="8 of 10 images are unreadable"):
        data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path)))


def test_explicit_train_and_val_folders_are_used(tmp_path):
    _make_folder(tmp_path / "f" / "train", per_class=5)
    _make_folder(tmp_path / "f" / "val", per_class=2)
    d = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=8))
    assert len(d.train_y) + d.test_size == 15 and len(d.val_y) == 6 and d.test_size == 2   # test split off train/


def test_forcing_memory_over_the_budget_is_refused_before_decoding(tmp_path):
    from tunesmith.trainables import folder
    _make_folder(tmp_path / "f")
    cfg = DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), stream=False)
    with pytest.raises(ConfigError) as err:
        folder.scan(cfg, budget=1000)
    assert "dataset.stream = False" in str(err.value) and "budget is 1 KB" in str(err.value)


def test_streaming_gives_the_in_memory_batches(tmp_path):
    """Over the budget the folder streams through worker processes, in the same permutation,
    with the same pixels and statistics as the in-memory path."""
    from tunesmith.trainables import folder
    _make_folder(tmp_path / "f", per_class=20)
    cfg = DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=16, workers=2)
    mem = folder.scan(cfg).load()
    plan = folder.scan(cfg, budget=1000)
    assert plan.streams and "streaming, 2 workers" in plan.describe() and "over the memory budget" in plan.describe()
    st = plan.stream()
    assert st.shape == mem.shape and torch.equal(st.train_y, mem.train_y) and torch.equal(st.val_y, mem.val_y)
    perm = torch.randperm(len(mem.train_y), generator=torch.Generator().manual_seed(3))
    for (a, ya), (b, yb) in zip(mem.epoch(perm, 8, 5), st.epoch(perm, 8, 5)):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(ya, yb)
    va = torch.cat([x for x, _ in mem.val_batches(7)])
    vb = torch.cat([x for x, _ in st.val_batches(7)])
    assert torch.allclose(va, vb, atol=1e-5)


def test_a_streamed_trial_matches_the_in_memory_trial(tmp_path):
    """Same data and seed, under a budget the test sets: the trainer's metrics agree."""
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    _make_folder(tmp_path / "f", per_class=20)
    base = {"dataset": {"name": "imagefolder", "data_dir": str(tmp_path / "f"), "image_size": 16, "workers": 2},
            "model": {"width": 4}, "trainer": {"epochs": 2, "per_gpu_batch_size": 8}}
    mem = list(Trainer(TrainConfig.from_dict(base), cpu_threads=1).run())
    data._CACHE.clear()
    streamed = TrainConfig.from_dict({**base, "dataset": {**base["dataset"], "memory_budget": 1e-12}})
    t = Trainer(streamed, cpu_threads=1)
    assert t.data.how == "streaming, 2 workers"
    st = list(t.run())
    for a, b in zip(mem, st):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)


def test_split_is_two_views_of_one_buffer_in_the_old_order():
    """Loading holds the set once: train and val are views of one uint8 buffer, put in split
    order in place, with the rows that indexing by the split would give."""
    cfg = DatasetConfig(name="synthetic", num_samples=3000, image_size=8, channels=1)
    d = data.load(cfg)
    assert d.train_x.untyped_storage().data_ptr() == d.val_x.untyped_storage().data_ptr()
    g = torch.Generator().manual_seed(cfg.split_seed)   # load_synthetic's own draw, then the split
    x = torch.randint(0, 256, (3000, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (3000,), generator=g)
    tr, va, te = image_data.split_index(3000, cfg)
    assert d.test_x.untyped_storage().data_ptr() == d.train_x.untyped_storage().data_ptr()
    assert torch.equal(d.train_x, x[tr]) and torch.equal(d.val_x, x[va]) and torch.equal(d.test_x, x[te])
    assert torch.equal(d.train_y, y[tr]) and torch.equal(d.val_y, y[va]) and torch.equal(d.test_y, y[te])


@pytest.mark.parametrize("n", [1, 2, 5, 257])
def test_rows_are_permuted_in_place(n):
    rng = np.random.default_rng(n)
    a = rng.integers(0, 255, (n, 2, 3, 3), dtype=np.uint8)
    order = rng.permutation(n)
    want = a[order].copy()
    image_data.permute_rows_(a, order)
    assert (a == want).all()


def test_folder_split_is_views_and_drops_unreadable_rows_in_place(tmp_path):
    _nested_folder(tmp_path / "f")
    d = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=16))
    assert d.train_x.untyped_storage().data_ptr() == d.val_x.untyped_storage().data_ptr()
    assert len(d.train_x) == len(d.train_y) and len(d.val_x) == len(d.val_y)
    assert set(d.train_y.tolist()) | set(d.val_y.tolist()) == {0, 1, 2}


def test_empty_class_folders_are_refused_by_name(tmp_path):
    """Nine of ten class folders empty once trained on one label and read val_acc 1.0."""
    _make_folder(tmp_path / "f")
    for name in ("deer", "eel"):
        (tmp_path / "f" / name).mkdir()
    with pytest.raises(ConfigError) as err:
        folder.scan(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f")))
    assert "deer/, eel/ hold no images" in str(err.value)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_train_beside_val_or_valid_is_the_split(tmp_path, val_name):
    _make_folder(tmp_path / "f" / "train", per_class=6)
    _make_folder(tmp_path / "f" / val_name, per_class=2)
    plan = folder.scan(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=8))
    assert plan.classes == ["cat", "dog", "fox"] and plan.explicit_val
    assert len(plan.train_files) == 18 and len(plan.val_files) == 6
    assert f"train/ for training, {val_name}/ for validation" in plan.describe()
    # 6 validation images: the data line says how coarse its accuracy is
    assert "(15 training, 6 validation, 3 test, one validation image is 16.7 points of accuracy)" in plan.describe()


def test_train_beside_test_is_not_two_classes_and_the_test_folder_is_not_read(tmp_path):
    """torchvision's and Keras's layout: train/ and test/. It once trained 'train versus test'."""
    _make_folder(tmp_path / "f" / "train", per_class=8)
    _make_folder(tmp_path / "f" / "test", per_class=3)
    plan = folder.scan(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=8))
    assert plan.classes == ["cat", "dog", "fox"] and not plan.explicit_val
    assert all("/test/" not in f for f in plan.train_files + plan.val_files)
    assert len(plan.test_files) == 9 and all("/test/" in f for f in plan.test_files)
    assert "test/ for the test" in plan.describe()
    d = plan.load()   # test/ is the test part, read by no trial: only by test_batches
    assert d.test_size == 9 and len(d.train_y) + len(d.val_y) == 24
    streamed = plan.stream()
    assert streamed.test_size == 9 and sum(len(y) for _, y in streamed.test_batches(4)) == 9


def test_an_empty_val_folder_is_one_line(tmp_path):
    _make_folder(tmp_path / "f" / "train")
    for cls in ("cat", "dog", "fox"):
        (tmp_path / "f" / "val" / cls).mkdir(parents=True)
    with pytest.raises(ConfigError, match="val/ holds no images"):
        folder.scan(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f")))


def test_symlinked_folders_are_followed_once_and_loops_end(tmp_path):
    _make_folder(tmp_path / "store", per_class=4)
    f = tmp_path / "f"
    (f / "cat").mkdir(parents=True)
    os.symlink(tmp_path / "store" / "dog", f / "dog")              # a class folder that is a link
    os.symlink(tmp_path / "store" / "fox", f / "cat" / "more")     # a link inside a class
    os.symlink(f / "cat", f / "cat" / "loop")                      # a link back to where it is
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f / "cat" / "0.png")
    plan = folder.scan(DatasetConfig(name="imagefolder", data_dir=str(f), image_size=8))
    assert plan.classes == ["cat", "dog"]
    files = plan.train_files + plan.val_files
    assert len(files) == 1 + 4 + 4 and len(set(os.path.realpath(p) for p in files)) == 9


def test_a_class_name_that_is_not_utf8_is_shown_not_fatal(tmp_path):
    root = tmp_path / "f"
    _make_folder(root)
    os.rename(root / "fox", os.fsdecode(bytes(root / "fox")[:-3] + b"f\xe9x"))   # Latin-1 on disk
    plan = folder.scan(DatasetConfig(name="imagefolder", data_dir=str(root), image_size=8))
    assert plan.classes[-1] == "f\ufffdx" and plan.classes[-1].encode("utf-8")
    d = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(root), image_size=8))
    assert d.num_classes == 3 and "f\ufffdx" in d.classes


def test_an_image_past_the_pixel_limit_is_skipped_and_named(tmp_path, monkeypatch, capsys):
    from tunesmith.trainables import streaming
    monkeypatch.setattr(streaming, "MAX_PIXELS", 150 * 150)
    _make_folder(tmp_path / "f", per_class=6)
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "f" / "dog" / "huge.png")
    d = data.load_imagefolder(DatasetConfig(name="imagefolder", data_dir=str(tmp_path / "f"), image_size=8))
    assert len(d.train_y) + len(d.val_y) + d.test_size == 18
    assert [p for p, _ in d.skipped] == ["dog/huge.png"] and "megapixel limit" in d.skipped[0][1]
    assert "skipped 1 unreadable image: dog/huge.png (ValueError: 200x200 pixels" in capsys.readouterr().out


def test_a_large_sixteen_bit_scan_is_reduced_before_it_is_widened(tmp_path):
    """A 178-megapixel 16-bit scan went through float64 at full size, about 1.4 GB. It is now
    reduced toward the target size first: here a 3000x2000 scan, whose full float64 copy alone
    would take 48 MB, decodes in a few MB."""
    import tracemalloc
    path = tmp_path / "scan.png"
    Image.fromarray((np.arange(3000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 3000)).save(path)
    tracemalloc.start()
    try:
        out = folder.decode(str(path), 32, "L")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 32, 32) and out.max() > 0
    assert peak < 8 * 2 ** 20, f"{peak / 2 ** 20:.1f} MB"


def test_decoding_processes_fit_the_memory():
    assert folder.decode_workers(peak_bytes=100 << 20, memory=400 << 20) == 1   # a quarter holds one
    assert folder.decode_workers(peak_bytes=1 << 20, memory=64 << 30) == (os.cpu_count() or 1)


def test_unreadable_images_are_named_once_per_command(capsys):
    """smith's range test reads the folder in its driver and its sweep then names what the
    shared load skipped: the same line twice. Other files, or another folder, are named again."""
    bad = [("b/x.png", "UnidentifiedImageError"), ("a/y.png", "OSError")]
    folder.say_skipped("/data/one", bad)
    folder.say_skipped("/data/one", list(reversed(bad)))   # the shared load's order
    folder.say_skipped("/data/one", bad[:1])
    folder.say_skipped("/data/two", bad)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["imagefolder /data/one", "imagefolder /data/one",
                                                      "imagefolder /data/two"]
    assert "skipped 2 unreadable images" in lines[0] and "skipped 1 unreadable image: b/x.png" in lines[1]


def test_train_per_class_cuts_a_folder_before_decoding_streamed_or_not(glyph_folder):
    """An image folder is cut in its file lists: the same images in memory as streamed, the
    validation and test parts untouched, and the memory estimate for what is decoded."""
    from tunesmith.trainables import folder
    whole = folder.scan(DatasetConfig(name="imagefolder", data_dir=glyph_folder))
    cfg = DatasetConfig(name="imagefolder", data_dir=glyph_folder, train_per_class=7)
    cut = folder.scan(cfg)
    tr, ty, vf, vy, ef, ey = cut.parts()
    assert sorted(collections.Counter(ty).values()) == [7] * 10
    assert (vf, ef) == (whole.parts()[2], whole.parts()[4])
    assert tr == [f for f, y in zip(whole.parts()[0], whole.parts()[1]) if f in set(tr)]   # split order kept
    assert cut.estimate < whole.estimate
    assert f"in memory, shared: {70 + len(vf) + len(ef)} images of 1x32x32 (70 training, {len(vf)} validation, " \
        f"{len(ef)} test)" in cut.describe()
    held = data.read(cfg)
    streamed = data.read(cfg.model_copy(update={"stream": True}))
    assert held.train_y.tolist() == streamed.train_y.tolist() == ty
    assert len(held.val_y) == len(streamed.val_y) == len(vy)
