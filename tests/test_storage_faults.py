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


def _tmpfs(tmp_path, size: str):
    """A tmpfs of ``size`` in the test's folder; mounting needs root, as the cluster tests'
    namespaces do."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]).returncode != 0:
        pytest.fail("could not mount a tmpfs: these tests need root, as CI has")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs."""
    yield from _tmpfs(tmp_path, "512k")


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


def _state_folder(root, trial="abc12_00000", session="session_2026-12-05_11-09-49_1", sweep_too=True):
    """A sweep folder with Tune's state files, and the driver's copies in a Ray session folder."""
    import json as json_mod
    import pickle
    sweep = root / "results" / "sw" / "_tune"
    staged = root / "ray" / "ray" / session / "artifacts" / "2026-12-05_11-09-55" / "_tune" / "driver_artifacts"
    files = {"experiment_state-2026-12-05_11-09-55.json": json_mod.dumps({"trial_data": [trial]}).encode(),
             "basic-variant-state-2026-12-05_11-09-55.json": pickle.dumps({"searcher": [1, 2, 3], "of": trial}),
             "callback-states-2026-12-05_11-09-55.pkl": pickle.dumps({"cb": {"sweep": "sw"}, "of": trial})}
    for folder in ((sweep, staged) if sweep_too else (staged,)):
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return sweep, staged, files


def test_tunes_state_cut_short_by_a_full_disk_is_put_back_from_the_drivers_copy(tmp_path, monkeypatch, capsys):
    """A disk that fills as Tune saves its state leaves the file cut short; Tune's restore then
    fails and starts the experiment afresh, over the recorded trials (a resume did, lr None).
    The driver's whole copy in Ray's session folder is put back; without one, one line, exit 2."""
    from tunesmith.orchestrator.resume import mend_tune_state
    from tunesmith.trainables.config import ConfigError
    import pyarrow as pa
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    sweep, staged, files = _state_folder(tmp_path)
    # another sweep whose Tune started in the same second: its copies have the same names
    _state_folder(tmp_path, "fff99_00000", "session_2026-12-05_11-09-50_2", sweep_too=False)
    pq.write_table(pa.table({"trial_id": ["abc12_00000"], "phase": ["search"]}), sweep.parent / "trials.parquet")
    parent = Storage(str(tmp_path / "results"))
    assert mend_tune_state(parent, "sw", "_tune", "sw") == []   # whole: nothing touched
    cut = {"experiment_state-2026-12-05_11-09-55.json": 12, "basic-variant-state-2026-12-05_11-09-55.json": 0,
           "callback-states-2026-12-05_11-09-55.pkl": len(files["callback-states-2026-12-05_11-09-55.pkl"]) - 1}
    for name, size in cut.items():
        (sweep / name).write_bytes(files[name][:size])
    # an older run's file, cut short, is not the one Tune reads: left alone
    (sweep / "experiment_state-2026-12-05_10-00-00.json").write_bytes(b"{")
    assert sorted(mend_tune_state(parent, "sw", "_tune", "sw")) == sorted(cut)
    assert all((sweep / name).read_bytes() == data for name, data in files.items())
    assert (sweep / "experiment_state-2026-12-05_10-00-00.json").read_bytes() == b"{"
    assert "had been cut short as it was written; put back" in capsys.readouterr().out
    # no whole copy on this machine (another machine's driver, or Ray's session folder cleared)
    (sweep / "callback-states-2026-12-05_11-09-55.pkl").write_bytes(b"\x80\x04")
    (staged / "callback-states-2026-12-05_11-09-55.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match=r"callback-states-2026-12-05_11-09-55.pkl was cut short .* no whole copy"):
        mend_tune_state(parent, "sw", "_tune", "sw")


@pytest.fixture
def disk(tmp_path):
    """A 64 MiB tmpfs, room for a sweep until a test fills it."""
    yield from _tmpfs(tmp_path, "64m")


def _fill(mnt, filler, leave: int = 0):
    """Write ``filler`` until the disk has no room left, then give back ``leave`` bytes."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)


def test_rows_a_full_disk_refused_ride_in_tunes_state_to_the_resume(disk, monkeypatch):
    """Epoch rows the full disk refused, while the trial's checkpoints after them were saved: the
    resumed trial starts after them, so they would never be written. They go into Tune's state
    (the driver's copy of it is whole), and the resume writes them, once."""
    import pickle
    monkeypatch.setattr(callback_mod, "RETRY_WAITS", ())

    def callback():
        return LedgerCallback(Storage(str(disk)), "sw", ["lr"], {"lr": []}, epochs=10, metric="val_acc", mode="max",
                              stopper=SweepStopper(None), flush_seconds=0.0)
    cb = callback()
    cb.start("a", {"lr": 0.1})
    for epoch in (1, 2, 3):
        if epoch == 2:
            _fill(disk, disk / "filler")
        cb.record("a", {"training_iteration": epoch, "val_acc": 0.5 + epoch / 10, "val_loss": 0.7})
        cb.flush()
    assert cb.failure and cb.stopper.failure
    state = pickle.loads(pickle.dumps(cb.get_state()))   # as Tune saves it
    assert [r["epoch"] for r in state["unwritten"]] == [2, 3]

    (disk / "filler").unlink()
    resumed = callback()   # Tune's restored copy
    resumed.set_state(state)
    assert resumed.trials["a"].epochs == 3 and resumed.trials["a"].best["val_acc"] == pytest.approx(0.8)
    resumed.flush()
    resumed.set_state(state)   # a second restore of the same state adds nothing twice
    resumed.flush()
    rows = pds.dataset(str(disk / "sw" / "epochs"), format="parquet").to_table().to_pandas()
    assert sorted(rows.epoch) == [1, 2, 3]
    assert pq.read_table(disk / "sw" / "trials.parquet").to_pandas().epochs.tolist() == [3]


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_stopped_by_a_full_disk_resumes_once_there_is_room(ray_session, disk, tmp_path, monkeypatch, capsys):
    """The results disk fills mid-sweep: the sweep stops (exit 1, the error named, the way on
    given). Freed, `tunesmith resume` continues the stopped trials and the search, where the
    sweep once ended them for good, and Tune's state cut short by the full disk is put back."""
    import threading
    from tunesmith.orchestrator.cli import main
    monkeypatch.setattr(callback_mod, "RETRY_WAITS", (0.05,))
    spec = tmp_path / "s.yaml"
    spec.write_text(f"""name: sw
dataset: {{name: digits}}
trainer: {{epochs: 6}}
search: {{algorithm: random, num_samples: 3, max_concurrent: 2, space: {{lr: {{loguniform: [0.02, 0.3]}}}}}}
asha: {{enabled: false}}
confirm: {{top: 0}}
results_dir: {disk}
""")
    epochs_dir, filler = disk / "sw" / "epochs", disk / "filler"

    def fill_when_epochs_written():
        deadline = time.time() + 120
        while time.time() < deadline and not (epochs_dir.exists() and any(p.suffix == ".parquet"
                                                                           for p in epochs_dir.iterdir())):
            time.sleep(0.05)
        _fill(disk, filler)
    filling = threading.Thread(target=fill_when_epochs_written, daemon=True)
    filling.start()
    assert main(["run", str(spec)]) == 1
    filling.join()
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"tunesmith resume {disk / 'sw'}" in err
    before = pq.read_table(disk / "sw" / "trials.parquet").to_pandas().set_index("trial_id")
    assert len(before) < 3 or (before.epochs < 6).any(), before

    written = set(pds.dataset(str(epochs_dir), format="parquet").to_table(columns=["trial_id", "epoch"])
                  .to_pandas().itertuples(index=False, name=None))
    filler.unlink()
    assert main(["resume", str(disk / "sw")]) == 0
    assert "had been cut short as it was written; put back" in capsys.readouterr().out
    after = pq.read_table(disk / "sw" / "trials.parquet").to_pandas().set_index("trial_id")
    assert len(after) == 3 and set(after.status) == {"completed"} and (after.epochs == 6).all(), after
    for tid in before.index:   # the same trials, their settings kept, continued (not started again)
        assert after.loc[tid, "hp_lr"] == before.loc[tid, "hp_lr"]
        assert after.loc[tid, "started_at"] == before.loc[tid, "started_at"]
    epochs = pds.dataset(str(epochs_dir), format="parquet").to_table().to_pandas()
    rows = set(epochs[["trial_id", "epoch"]].itertuples(index=False, name=None))
    assert written <= rows   # nothing written before is lost
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 3 * 6


@pytest.mark.ray
@pytest.mark.slow
def test_a_restore_tune_cannot_make_is_refused_before_anything_runs(ray_session, tmp_path, capsys):
    """Tune's restore failing (state it cannot read: another Ray, a file mangled) made Tune start
    the sweep afresh in its folder: it trained new trials over the recorded ones (their settings
    lost), then said so. Now the resume stops at Tune's first step: one line, exit 2, every file
    as it was."""
    import json
    from tunesmith.orchestrator.cli import main
    spec = tmp_path / "s.yaml"
    spec.write_text(f"""name: sw
dataset: {{name: digits}}
trainer: {{epochs: 1}}
search: {{algorithm: random, num_samples: 1, space: {{lr: {{loguniform: [0.02, 0.3]}}}}}}
confirm: {{top: 0}}
results_dir: {tmp_path / 'results'}
""")
    assert main(["run", str(spec)]) == 0
    folder = tmp_path / "results" / "sw"
    man = json.loads((folder / "manifest.json").read_text())
    man["status"] = "running"   # as a driver killed by SIGKILL leaves it
    (folder / "manifest.json").write_text(json.dumps(man))
    (state,) = sorted((folder / "_tune").glob("experiment_state-*.json"))
    state.write_text(json.dumps({"trial_data": [], "runner_data": 5}))   # whole, and not Tune's
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["resume", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tunesmith: error: resume = ") and "Tune could not restore the sweep's state" in err
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    manifest = folder / "manifest.json"
    assert json.loads(after.pop(manifest)) == json.loads(before.pop(manifest)) == man   # saved again, as it was
    assert after == before


def test_plots_and_the_page_on_a_full_disk_are_one_line_and_leave_nothing_half_written(small_disk, tmp_path):
    """`analyze` wrote its PNGs and its HTML page in place: a disk that filled gave a traceback
    and left the files cut short."""
    from tunesmith.orchestrator import analyze, page
    from tunesmith.trainables.config import ConfigError
    w = LedgerCallback(Storage(str(tmp_path / "results")), "sw", ["lr"], {"lr": []}, epochs=2, metric="val_acc",
                       mode="max", pruned={})
    for i, lr in enumerate((0.01, 0.1, 0.3)):
        w.start(f"t{i}", {"lr": lr})
        for epoch in (1, 2):
            w.record(f"t{i}", {"training_iteration": epoch, "val_acc": 0.5 + 0.1 * i + 0.01 * epoch, "val_loss": 1.0})
        w.finish(f"t{i}")
    w.close()
    (tmp_path / "results" / "sw" / "spec.yaml").write_text("metric: val_acc\nmode: max\n")
    _fill(small_disk, small_disk / "filler")
    with pytest.raises(ConfigError, match="No space left on device") as err:
        analyze.run(str(tmp_path / "results"), None, "table", 3, str(small_disk / "plots"))
    assert "--plots" in str(err.value) and "\n" not in str(err.value)
    sweeps = analyze.load(str(tmp_path / "results"))
    with pytest.raises(ConfigError, match="No space left on device"):
        page.write(str(small_disk / "page.html"), sweeps, [analyze.summary(s, 3) for s in sweeps], top=3)
    assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == ["filler"]


def test_a_command_whose_disk_fills_ends_in_one_line(small_disk, tmp_path, capsys):
    """`lr-find` (as smith's report, a manifest) writes after its check that the folder takes
    writes: a disk that filled between gave a traceback."""
    from tunesmith.orchestrator.cli import main
    spec = tmp_path / "lf.yaml"
    spec.write_text(f"name: lf\ndataset: {{name: digits}}\nresults_dir: {small_disk}\n")
    _fill(small_disk, small_disk / "filler", leave=40 * 1024)   # room for the check, not for the outputs
    assert main(["lr-find", str(spec)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "tunesmith: error: could not write the results: No space left on device; every file written before reads whole"]
    assert [p for p in small_disk.rglob("*") if ".tmp-" in p.name] == []


def test_a_checkpoint_the_storage_refused_stops_the_sweep_at_once(tmp_path):
    """A trial whose checkpoint a full disk refused was retried (max_failures), meeting the same,
    before the ledger's own write failed: the sweep stops at the first, naming it."""
    from types import SimpleNamespace
    stopper = SweepStopper(None)
    cb = LedgerCallback(Storage(str(tmp_path)), "sw", ["lr"], {"lr": []}, epochs=4, metric="val_acc", mode="max",
                        stopper=stopper, flush_seconds=0.0)
    cb.start("a", {"lr": 0.1})
    error = tmp_path / "error.txt"
    error.write_text("Traceback ...\nValueError: the model's input was 3x8x8")
    trial = SimpleNamespace(trial_id="a", pickled_error_file=None, error_file=str(error))
    cb.on_trial_recover(1, [], trial)   # any other error: retried, the sweep goes on
    assert cb.failure is None and not stopper.event.is_set()
    error.write_text("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    cb.on_trial_recover(2, [], trial)
    assert cb.failure == f"results could not be written to {tmp_path / 'sw'}: a's checkpoint: No space left on device"
    assert stopper.event.is_set() and stopper.failure == cb.failure
