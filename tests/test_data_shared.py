"""Issue #10 through a real Ray instance: one copy of the data per node, read zero-copy."""
import shutil

import numpy as np
import pyarrow.dataset as pds
import pytest
from PIL import Image

from tunesmith.orchestrator import spec as spec_mod
from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator.sweep import build_tuner

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _sweep(raw, cluster, root):
    spec = spec_mod.from_dict({"results_dir": root, "asha": {"enabled": False}, **raw})
    tuner, writer, _ = build_tuner(spec, Storage(root), cluster)
    tuner.fit()
    writer.close()
    epochs = pds.dataset(f"{root}/{spec.name}/epochs").to_table().to_pandas()
    extra = epochs.extra.map(dict)
    return epochs.assign(data_mb=extra.map(lambda e: e.get("data_mb")),
                         data_added_mb=extra.map(lambda e: e.get("data_added_mb")))


def test_trials_share_one_copy_and_add_almost_no_memory(ray_session, tmp_path):
    """48 MB of uint8 images: each trial maps the store's copy; its private (anonymous) memory
    grows by a small fraction of that, not by the dataset, the first trial on a worker too."""
    raw = {"name": "shared", "dataset": {"name": "synthetic", "num_samples": 16000, "image_size": 32},
           "model": {"width": 4, "depth": 2}, "trainer": {"epochs": 1, "per_gpu_batch_size": 512},
           "search": {"num_samples": 4}}
    e = _sweep(raw, ray_session, str(tmp_path / "results"))
    assert len(e) == 4 and (e.data_mb > 45).all()
    assert (e.data_added_mb < 0.15 * e.data_mb).all(), e[["trial_id", "data_mb", "data_added_mb"]]


def test_files_are_read_once_per_sweep(ray_session, tmp_path):
    """The folder is decoded once, by the loader, then taken away: the trials still train,
    because none of them reads a file."""
    from tunesmith.orchestrator.data_share import share
    from tunesmith.trainables.config import DatasetConfig
    import ray
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for k in range(2):
        (folder / f"c{k}").mkdir(parents=True)
        for i in range(30):
            Image.fromarray((rng.random((12, 12, 3)) * 100 + 100 * k).astype(np.uint8)).save(folder / f"c{k}" / f"{i}.png")
    ds = {"name": "imagefolder", "data_dir": str(folder), "image_size": 12}
    ray.get(share(DatasetConfig(**ds))[0])   # decoded once, into the object store
    shutil.rmtree(folder)
    raw = {"name": "once", "dataset": ds, "model": {"width": 4}, "trainer": {"epochs": 2},
           "search": {"num_samples": 3}}
    e = _sweep(raw, ray_session, str(tmp_path / "results"))
    assert len(e) == 6 and e.val_acc.notna().all()


def test_on_one_node_the_driver_reads_the_data_itself(ray_session, monkeypatch):
    """Every node is the driver's: it reads the arrays itself (torch is imported there already),
    not through a task whose worker would start a process and import torch for it. An image
    folder still goes to the task (test_files_are_read_once_per_sweep)."""
    import ray
    from tunesmith.orchestrator import data_share
    from tunesmith.trainables import data as data_mod
    from tunesmith.trainables.config import DatasetConfig

    def no_task(cfg):
        raise AssertionError("the data was loaded by a task")
    monkeypatch.setattr(data_share, "_load_arrays", no_task)
    cfg = DatasetConfig(name="digits", train_per_class=5)
    assert data_share._every_node_is_this_one()
    got, want = ray.get(data_share.share(cfg)[0]), data_mod.read(cfg).arrays()
    assert got["train_x"].shape[0] == 5 * len(want["classes"]) and got["classes"] == want["classes"]
    for part in ("train", "val", "test"):
        assert np.array_equal(got[f"{part}_x"], want[f"{part}_x"]) and np.array_equal(got[f"{part}_y"], want[f"{part}_y"])
    assert data_share.skipped(cfg) == []


@pytest.mark.parametrize("stream", [False, True], ids=["shared load", "streamed"])
def test_an_unreadable_image_is_named_on_the_terminal_and_in_the_manifest(ray_session, tmp_path, capsys, stream):
    """The shared load runs as a Ray task, and a streaming trial decodes in DataLoader workers:
    neither's output reached the user. A folder with one corrupt PNG ran, exit 0, and never named
    the file."""
    import json
    from tunesmith.orchestrator.sweep import run_sweep
    folder = tmp_path / "f"
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee"):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(folder / cls / f"{i}.png")
    (folder / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    spec = spec_mod.from_dict({"name": "skip", "results_dir": str(tmp_path / "r"), "asha": {"enabled": False},
                               "confirm": {"top": 0},
                               "dataset": {"name": "imagefolder", "data_dir": str(folder), "image_size": 8,
                                           "stream": stream, "workers": 1},
                               "trainer": {"epochs": 1}, "model": {"width": 4}})
    run_sweep(spec, ray_session, progress=False)
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image: bee/broken.png" in out
    manifest = json.loads((tmp_path / "r" / "skip" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["data"]["skipped"]] == ["bee/broken.png"]
