"""The results writer without Ray: what it writes, read back by the real readers."""
import json
import math
import os

import pyarrow.parquet as pq
import pytest

from tunesmith.orchestrator import schema
from tunesmith.orchestrator.callback import LedgerCallback
from tunesmith.cluster.storage import Storage


def _result(epoch, acc, loss=0.5, **extra):
    return {"training_iteration": epoch, "epoch": epoch, "val_acc": acc, "val_loss": loss,
            "train_loss": loss, "train_acc": acc, "lr": 0.1, "momentum": 0.9, "epoch_seconds": 0.1,
            "samples_per_second": 1000.0, "step_ms": 2.0, "node_ip": "127.0.0.1", "device": "cpu",
            "time_total_s": epoch * 0.1, "global_batch": 64, **extra}


@pytest.fixture
def writer(tmp_path):
    w = LedgerCallback(Storage(str(tmp_path)), "s1", ["lr", "model.width"],
                      {"lr": [], "model.width": [16, 32]}, epochs=3, metric="val_acc", mode="max",
                      pruned={"t3": "pruned by ASHA at epoch 1"})
    cfgs = {"t1": {"lr": 0.1, "model.width": 16}, "t2": {"lr": 10.0, "model.width": 32},
            "t3": {"lr": 0.01, "model.width": 32}, "t4": {"lr": 0.05, "model.width": 16}}
    for t, c in cfgs.items():
        w.start(t, c)
    for e in (1, 2, 3):
        w.record("t1", _result(e, 0.5 + 0.1 * e, custom_metric=float(e)))
    w.record("t2", {**_result(1, math.nan, math.nan), "diverged": True, "stop_reason": "diverged: loss became nan"})
    w.record("t3", _result(1, 0.3))
    w.finish("t1")
    w.finish("t2")
    w.finish("t3")
    w.finish("t4", error="Traceback...\nValueError: boom")
    w.close()
    return w, tmp_path / "s1"


def test_trial_statuses_and_summaries(writer):
    _, root = writer
    t = pq.read_table(root / "trials.parquet").to_pandas().set_index("trial_id")
    assert t.loc["t1", "status"] == "completed" and t.loc["t1", "epochs"] == 3
    assert t.loc["t2", "status"] == "diverged" and "nan" in t.loc["t2", "stop_reason"]
    assert t.loc["t3", "status"] == "pruned" and "ASHA" in t.loc["t3", "stop_reason"]
    assert t.loc["t4", "status"] == "errored" and t.loc["t4", "stop_reason"] == "ValueError: boom"
    assert set(t.status) <= set(schema.STATUSES)
    assert t.loc["t1", "best_val_acc"] == pytest.approx(0.8) and t.loc["t1", "last_val_acc"] == pytest.approx(0.8)
    assert math.isnan(t.loc["t2", "best_val_acc"])   # null in Parquet, NaN in pandas
    assert json.loads(t.loc["t1", "config"]) == {"lr": 0.1, "model.width": 16}


def test_a_trial_that_annealed_early_for_the_time_budget_is_completed_and_says_so(tmp_path):
    """A trial fitted its schedule to the sweep's deadline and ended annealed at epoch 2 of 3:
    it completed a schedule, unlike one the budget cut off."""
    w = LedgerCallback(Storage(str(tmp_path)), "s1", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max")
    for t in ("fitted", "cut"):
        w.start(t, {"lr": 0.1})
    w.record("fitted", _result(1, 0.5, schedule_epochs=2))
    w.record("fitted", _result(2, 0.7, schedule_epochs=2))
    w.record("cut", _result(1, 0.5))
    w.finish("fitted")
    w.finish("cut")
    w.close()
    t = pq.read_table(tmp_path / "s1" / "trials.parquet").to_pandas().set_index("trial_id")
    assert t.loc["fitted", "status"] == "completed"
    assert t.loc["fitted", "stop_reason"] == "annealed in 2 of 3 epochs: its schedule was fitted to the time budget"
    assert t.loc["cut", "status"] == "stopped"


def test_stage3_is_held_back_at_the_trials_whole_epoch_cost(tmp_path):
    """smith --final keeps stage 3's time from the end of the budget at stage 2's pace: each
    trial's seconds between reports (its checkpoint and report included, 0.4 s here), not its
    training and validation time alone (0.1 s), which left stage 3 too little on a busy machine;
    a trial's first report, which holds its start, is not a pace."""
    import time
    from tunesmith.orchestrator.smith import STAGE3_MARGIN, STAGE3_WIND_DOWN_S, stage3_hold_back
    w = LedgerCallback(Storage(str(tmp_path)), "s1", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max")
    w.ledger.opened_at = time.time() - 3.1   # the sweep began 3.1 s before its first report (0.1 s of it the epoch)
    hold = stage3_hold_back(6)
    assert hold(w.ledger) == 0.0   # nothing measured: nothing held back yet
    w.start("a", {"lr": 0.1})
    w.record("a", _result(1, 0.5, time_this_iter_s=3.0))
    assert w.start_up == pytest.approx(3.0, abs=0.05)
    # no pace yet: the trainer's own time
    assert hold(w.ledger) == pytest.approx(STAGE3_MARGIN * (6 * 0.1 + 3.0) + STAGE3_WIND_DOWN_S, abs=0.1)
    w.record("a", _result(2, 0.6, time_this_iter_s=0.4))
    assert w.trials["a"].pace == 0.4
    assert hold(w.ledger) == pytest.approx(STAGE3_MARGIN * (6 * 0.4 + 3.0) + STAGE3_WIND_DOWN_S, abs=0.1)
    # only smith's pilot has a pace (0.1 s, in the driver): the slowest epoch seen counts instead
    p = LedgerCallback(Storage(str(tmp_path)), "s2", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max")
    p.start("pilot", {"lr": 0.1})
    p.record("pilot", {**_result(1, 0.5, time_this_iter_s=0.1), "epoch_seconds": 0.1})
    p.record("pilot", _result(2, 0.6, time_this_iter_s=0.1))
    # the pilot trained before the sweep opened: its first report is no measure of Tune's start-up
    # (it read near 0 s, and stage 3 started seconds after its hold-back)
    assert p.start_up is None
    p.ledger.opened_at = time.time() - 1.5
    p.start("b", {"lr": 0.2})
    p.record("b", {**_result(1, 0.4, time_this_iter_s=2.0), "epoch_seconds": 0.5})
    assert p.start_up == pytest.approx(1.0, abs=0.05)
    assert hold(p.ledger) == pytest.approx(STAGE3_MARGIN * (6 * 0.5 + 1.0) + STAGE3_WIND_DOWN_S, abs=0.1)


def test_hyperparameters_are_typed_columns(writer):
    _, root = writer
    table = pq.read_table(root / "trials.parquet")
    assert str(table.schema.field("hp_lr").type) == "double"
    assert str(table.schema.field("hp_model_width").type) == "int64"
    assert table.schema.field("schema_version").type.bit_width == 16


def test_every_report_is_an_epoch_row_with_extras(writer):
    _, root = writer
    rows = pq.read_table(root / "epochs").to_pandas()
    assert len(rows) == 5
    t1 = rows[rows.trial_id == "t1"].sort_values("epoch")
    assert list(t1.epoch) == [1, 2, 3]
    assert dict(t1.iloc[-1].extra)["custom_metric"] == 3.0
    assert rows[rows.trial_id == "t2"].diverged.all()
    assert rows[rows.trial_id == "t2"].val_acc.isna().all()


def test_no_temporary_files_left(writer):
    _, root = writer
    leftovers = [f for _, _, files in os.walk(root) for f in files if ".tmp-" in f]
    assert leftovers == []


def test_a_file_replaced_while_it_is_read_reads_as_one_version(tmp_path):
    """trials.parquet is renamed over while a sweep runs; Storage.read_table (analyze, resume)
    reads one version whole. Against this writer, pq.read_table(path) failed in 1 read in 5."""
    import threading
    import pyarrow as pa
    store = Storage(str(tmp_path))
    versions = [pa.table({"trial_id": [f"t{j}" for j in range(n)], "v": [float(n)] * n}) for n in (30, 77)]
    store.write_table("trials.parquet", versions[0])
    done = threading.Event()

    def replace_again_and_again():
        i = 0
        while not done.is_set():
            i += 1
            store.write_table("trials.parquet", versions[i % 2])
    writer_thread = threading.Thread(target=replace_again_and_again)
    writer_thread.start()
    try:
        for _ in range(400):
            t = store.read_table("trials.parquet")
            assert set(t.column("v").to_pylist()) == {float(t.num_rows)}
    finally:
        done.set()
        writer_thread.join()


def test_readers_pandas_polars_duckdb(writer):
    _, root = writer
    import duckdb
    import pandas as pd
    import polars as pl
    assert len(pd.read_parquet(root / "trials.parquet")) == 4
    assert pl.read_parquet(root / "trials.parquet").filter(pl.col("status") == "completed").height == 1
    assert pl.read_parquet(str(root / "epochs" / "*.parquet")).height == 5
    con = duckdb.connect()
    n, best = con.execute(
        f"select count(*), max(val_acc) from read_parquet('{root}/epochs/*.parquet')").fetchone()
    assert n == 5 and best == pytest.approx(0.8)
    joined = con.execute(
        f"select t.hp_lr, max(e.val_acc) from read_parquet('{root}/epochs/*.parquet') e "
        f"join read_parquet('{root}/trials.parquet') t using (trial_id) group by 1 order by 2 desc").fetchall()
    assert joined[0][0] == pytest.approx(0.1)


def test_tensorboard_scalars_hparams_and_status(writer):
    _, root = writer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(root / "tensorboard" / "t1"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for m in ("val_acc", "val_loss", "train_loss", "lr", "momentum", "custom_metric", "best_val_acc"):
        assert m in tags["scalars"], m
    assert [round(e.value, 4) for e in acc.Scalars("val_acc")] == [0.6, 0.7, 0.8]
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content and "_hparams_/session_end_info" in content
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.1)
    assert start.session_start_info.hparams["model.width"].number_value == 16
    # the diverged trial: NaN kept out of TB scalars, status FAILURE
    acc2 = EventAccumulator(str(root / "tensorboard" / "t2"))
    acc2.Reload()
    end = plugin_data_pb2.HParamsPluginData.FromString(acc2.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    from tensorboard.plugins.hparams import api_pb2
    assert end.session_end_info.status == api_pb2.STATUS_FAILURE
    assert "val_acc" not in acc2.Tags()["scalars"]


def test_prediction_grid_is_written_as_an_image(tmp_path):
    import numpy as np
    w = LedgerCallback(Storage(str(tmp_path)), "s2", [], {}, epochs=1, metric="val_acc", mode="max")
    preview = {"images": np.zeros((4, 1, 8, 8), np.uint8), "true": [0, 1, 2, 3], "pred": [0, 1, 3, 3],
               "classes": ["a", "b", "c", "d"]}
    w.record("t", {**_result(1, 0.5), "preview": preview})
    w.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "s2" / "tensorboard" / "t"))
    acc.Reload()
    assert acc.Tags()["images"] == ["predictions"]
    img = acc.Images("predictions")[0]
    assert img.width > 0 and img.height > 0


def test_schema_of_epoch_parts_is_the_documented_one(writer):
    _, root = writer
    part = sorted((root / "epochs").iterdir())[0]
    assert pq.read_schema(part).remove_metadata() == schema.EPOCH_SCHEMA


def test_trials_schema_is_the_documented_one(writer):
    _, root = writer
    table = pq.read_table(root / "trials.parquet")
    for name, type_ in schema.TRIAL_FIXED + schema.TRIAL_METRIC_COLUMNS:
        assert table.schema.field(name).type == type_, name
    t1 = table.to_pandas().set_index("trial_id").loc["t1"]
    assert t1.last_lr == pytest.approx(0.1) and t1.last_samples_per_second == pytest.approx(1000.0)


def test_several_sweeps_read_as_one_dataset(tmp_path):
    import duckdb
    import pyarrow.dataset as ds
    for name, keys in (("a", ["lr"]), ("b", ["lr", "momentum"])):
        w = LedgerCallback(Storage(str(tmp_path)), name, keys, {k: [] for k in keys}, epochs=2,
                          metric="val_acc", mode="max")
        for t in ("t1", "t2"):
            w.start(t, {"lr": 0.1, "momentum": 0.9})
            for e in (1, 2):
                w.record(t, _result(e, 0.5 + e / 10))
            w.finish(t)
        w.close()
    epochs = ds.dataset([ds.dataset(str(tmp_path / n / "epochs")) for n in ("a", "b")]).to_table()
    assert epochs.num_rows == 8 and set(epochs.column("sweep").to_pylist()) == {"a", "b"}
    con = duckdb.connect()
    rows = con.execute(f"""
        select t.sweep, count(*) from read_parquet('{tmp_path}/*/epochs/*.parquet') e
        join read_parquet('{tmp_path}/*/trials.parquet', union_by_name=true) t using (sweep, trial_id)
        group by 1 order by 1""").fetchall()
    assert rows == [("a", 4), ("b", 4)]
    momentum = con.execute(f"select sweep, hp_momentum from read_parquet('{tmp_path}/*/trials.parquet', "
                           f"union_by_name=true) order by 1").fetchall()
    assert momentum[0] == ("a", None) and momentum[-1] == ("b", 0.9)


def _resumable(tmp_path, epochs):
    """A writer of sweep "s" under tmp_path, searching lr: a second one stands for a resumed run."""
    return LedgerCallback(Storage(str(tmp_path)), "s", ["lr"], {"lr": []}, epochs=epochs, metric="val_acc", mode="max")


def test_reload_takes_epoch_rows_written_after_the_last_trials_file(tmp_path):
    """A driver killed after a trial's last epoch rows went to disk (before its checkpoint) but
    before trials.parquet was rewritten: the resumed writer reads the rows as the truth, so the
    trial, ended by Tune from its final checkpoint without a new report, reads as completed."""
    w = _resumable(tmp_path, epochs=4)
    w.start("t1", {"lr": 0.1})
    w.record("t1", _result(1, 0.4))
    w.flush()                                   # trials.parquet: running, 1 epoch
    for e in (2, 3, 4):
        w.record("t1", _result(e, 0.4 + 0.1 * e))
        w.get_state()                                              # Tune snapshots: rows to disk; no trials.parquet
    stale = pq.read_table(tmp_path / "s" / "trials.parquet").to_pandas()
    assert stale.epochs.tolist() == [1]
    w2 = _resumable(tmp_path, epochs=4)
    w2.reload()
    rec = w2.trials["t1"]
    assert rec.epochs == 4 and rec.written == {1, 2, 3, 4}
    assert rec.best["val_acc"] == pytest.approx(0.8) and rec.last["val_acc"] == pytest.approx(0.8)
    w2.record("t1", _result(4, 0.8))           # Tune's replay of the last report: no second row
    w2.finish("t1")
    w2.close()
    t = pq.read_table(tmp_path / "s" / "trials.parquet").to_pandas()
    assert t.status.tolist() == ["completed"] and t.epochs.tolist() == [4]
    e = pq.read_table(tmp_path / "s" / "epochs").to_pandas()
    assert sorted(e.epoch) == [1, 2, 3, 4]


def test_a_trial_tune_restored_as_ended_is_ended_once_after_reload(tmp_path):
    """The driver died after Tune's snapshot held the trial TERMINATED but before trials.parquet
    said so: Tune will not end it again, so the writer ends it from its rows at the first step."""
    from types import SimpleNamespace
    w = _resumable(tmp_path, epochs=2)
    for t in ("t1", "t2"):
        w.start(t, {"lr": 0.1})
        w.record(t, _result(1, 0.5))
    w.record("t1", _result(2, 0.6))
    w.flush()                                   # both 'running' on disk
    w2 = _resumable(tmp_path, epochs=2)
    w2.reload()
    tune_trials = [SimpleNamespace(trial_id="t1", status="TERMINATED"), SimpleNamespace(trial_id="t2", status="PENDING")]
    w2.on_step_end(0, tune_trials)
    assert w2.trials["t1"].status == "completed" and w2.trials["t2"].status == "running"
    w2.record("t2", _result(2, 0.7))
    w2.on_step_end(1, [SimpleNamespace(trial_id="t1", status="TERMINATED"),
                       SimpleNamespace(trial_id="t2", status="RUNNING")])
    w2.finish("t2")
    w2.close()
    t = pq.read_table(tmp_path / "s" / "trials.parquet").to_pandas().set_index("trial_id")
    assert t.status.to_dict() == {"t1": "completed", "t2": "completed"}


def test_a_trial_missing_from_the_trials_file_is_rebuilt_from_its_rows_and_not_written_twice(tmp_path):
    """The driver died after a new trial's epoch rows went to disk (at its checkpoints) but before
    trials.parquet listed it. On resume, Tune restores the trial from its checkpoint and replays
    its last report: that epoch must not get a second row (CI caught this on a cluster), and the
    trial must be listed with its config. A trial whose rows are all that is left, and which
    Tune's snapshot never held, is listed as stopped rather than left running, until Tune's
    restored random search makes it again under the same id (same config and seed)."""
    from types import SimpleNamespace

    w = _resumable(tmp_path, epochs=3)
    w.start("t1", {"lr": 0.1})
    w.record("t1", _result(1, 0.5))
    w.flush()                                   # trials.parquet lists t1 only
    for t in ("t2", "t3"):
        w.start(t, {"lr": 0.2})
        for e in (1, 2):
            w.record(t, _result(e, 0.5 + 0.1 * e))
            w.get_state()                                          # Tune snapshots: rows to disk; no trials.parquet
    assert pq.read_table(tmp_path / "s" / "trials.parquet").column("trial_id").to_pylist() == ["t1"]

    w2 = _resumable(tmp_path, epochs=3)
    w2.reload()
    assert w2.trials["t2"].written == {1, 2} and w2.trials["t2"].best["val_acc"] == pytest.approx(0.7)
    tune_trials = [SimpleNamespace(trial_id="t1", status="RUNNING", config={"lr": 0.1}),
                   SimpleNamespace(trial_id="t2", status="RUNNING", config={"lr": 0.2})]
    w2.on_trial_start(0, tune_trials, tune_trials[1])   # Tune restores t2 from its checkpoint
    w2.on_step_end(0, tune_trials)
    assert w2.trials["t3"].status == "stopped"
    assert "lost with the killed driver after 2 of 3 epochs" in w2.trials["t3"].stop_reason
    w2.flush()
    t = pq.read_table(tmp_path / "s" / "trials.parquet").to_pandas().set_index("trial_id")
    assert t.status.to_dict() == {"t1": "running", "t2": "running", "t3": "stopped"}
    w2.record("t2", _result(2, 0.7))           # Tune's replay of the report its checkpoint holds
    w2.record("t2", _result(3, 0.9))
    for e in (2, 3):
        w2.record("t1", _result(e, 0.9))
    w2.finish("t1")
    w2.finish("t2")
    t3 = SimpleNamespace(trial_id="t3", status="RUNNING", config={"lr": 0.3})
    w2.on_trial_start(1, [t3], t3)              # made again, from the start
    assert w2.trials["t3"].status == "running" and w2.trials["t3"].stop_reason == ""
    for e in (1, 2, 3):
        w2.record("t3", _result(e, 0.5 + 0.1 * e))
    w2.finish("t3")
    w2.close()
    t = pq.read_table(tmp_path / "s" / "trials.parquet").to_pandas().set_index("trial_id")
    assert t.status.to_dict() == {"t1": "completed", "t2": "completed", "t3": "completed"}
    assert t.hp_lr["t2"] == pytest.approx(0.2) and t.epochs["t2"] == 3 and t.best_val_acc["t2"] == pytest.approx(0.9)
    assert t.hp_lr["t3"] == pytest.approx(0.3) and t.epochs["t3"] == 3
    e = pq.read_table(tmp_path / "s" / "epochs").to_pandas()
    assert not e.duplicated(["trial_id", "epoch"]).any()
    assert sorted(e[e.trial_id == "t2"].epoch) == [1, 2, 3] and sorted(e[e.trial_id == "t3"].epoch) == [1, 2, 3]
    # the first writer never flushed t2's TensorBoard events: its session start is written on resume
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    acc = EventAccumulator(str(tmp_path / "s" / "tensorboard" / "t2"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.2)
    assert "_hparams_/session_end_info" in content


def test_the_display_reads_the_trials_while_they_are_added(tmp_path):
    """The live display's thread iterated the trials while Tune's thread added to them
    ("dictionary changed size during iteration"): it reads a snapshot."""
    import io
    import threading
    from tunesmith.orchestrator.display import LiveProgress
    w = LedgerCallback(Storage(str(tmp_path)), "s1", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max",
                       write=False)
    live = LiveProgress(w.ledger, 20000, stream=io.StringIO())
    errors, done = [], threading.Event()

    def draw():
        while not done.is_set():
            try:
                live.render()
                live._counts()
                w.ledger.top(5)
                w.ledger.status_counts()
            except Exception as exc:   # noqa: BLE001 - what the test looks for
                errors.append(repr(exc))
                return
    reader = threading.Thread(target=draw)
    reader.start()
    try:
        for i in range(20000):
            w.start(f"t{i}", {"lr": 0.1})
            w.record(f"t{i}", _result(1, (i % 97) / 97))
    finally:
        done.set()
        reader.join()
    assert errors == [] and len(w.trials) == 20000
