"""Storage that fails mid-sweep: a results disk that fills up (a real tmpfs, mounted here). The
writes are tried again, then the sweep stops cleanly: trials stopped through the stopper, the
error named once, nothing half-written, and everything written before still reads whole."""
import os
import subprocess
import time

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import callback as callback_mod
from tunesmith.orchestrator.callback import LedgerCallback
from tunesmith.orchestrator.stopper import SweepStopper


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs; mounting needs root, as the cluster tests' namespaces do."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.fail("could not mount a tmpfs: these tests need root, as CI has")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_disk_that_fills_stops_the_sweep_cleanly(small_disk, monkeypatch):
    monkeypatch.setattr(callback_mod, "RETRY_WAITS", (0.01, 0.01))
    stopper = SweepStopper(None)
    cb = LedgerCallback(Storage(str(small_disk)), "sw", ["lr"], {"lr": []}, epochs=500, metric="val_acc",
                        mode="max", stopper=stopper, flush_seconds=0.0)
    rng = np.random.default_rng(0)
    cb.start("a", {"lr": 0.1})
    for epoch in range(1, 500):
        preview = {"images": rng.integers(0, 255, (16, 3, 32, 32), dtype=np.uint8), "true": [0] * 16,
                   "pred": [1] * 16, "classes": ["x", "y"]}
        cb.record("a", {"training_iteration": epoch, "val_acc": 0.5, "val_loss": 0.7, "preview": preview,
                        "noise": float(rng.random())})
        cb.maybe_flush()
        if cb.failure:
            break
    assert cb.failure and "No space left" in cb.failure and stopper.event.is_set() and stopper.failure == cb.failure
    failed_at = epoch
    cb.record("a", {"training_iteration": failed_at + 1, "val_acc": 0.5})   # the sweep winds down: no raise
    cb.flush()
    cb.close()
    assert [p for p in small_disk.rglob("*") if ".tmp-" in p.name] == []   # nothing half-written
    rows = pds.dataset(str(small_disk / "sw" / "epochs"), format="parquet").to_table()   # every part reads whole
    assert 1 <= rows.num_rows <= failed_at   # nothing after the failure
    assert pq.read_table(small_disk / "sw" / "trials.parquet").num_rows == 1


def test_a_read_only_results_location_is_bad_input(small_disk, tmp_path):
    from tunesmith.trainables.config import ConfigError
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(ConfigError, match="cannot write there"):
        Storage(str(small_disk / "results")).probe()


def test_an_interrupt_while_the_sweep_is_assembled_leaves_its_manifest_saying_so(tmp_path, spec_file, monkeypatch):
    """Ctrl-C or SIGTERM after the manifest is written as running and before the sweep's own
    close takes over (Tune's assembly): the manifest says interrupted, with an end time. A fresh
    clone's CI met this window once, as `smith` started its stage 2."""
    import json
    from tunesmith.orchestrator import spec as spec_mod, sweep
    from tunesmith.cluster.connect import ClusterInfo

    def assembly(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep, "build_tuner", assembly)
    spec = spec_mod.load(spec_file("name: sw\ndataset: {name: digits}\nresults_dir: RESULTS\n"))
    cluster = ClusterInfo(address="local", cpus=2, gpus=0, nodes=1, started_here=True)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, cluster, trainable=lambda config: None)
    manifest = json.loads((tmp_path / "results" / "sw" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["ended_at"] and manifest["command"] == "run"
