"""One contract for every object that Tune pickles into its experiment state (tuner.pkl and the
searcher's state) or that `resume` restores: it survives a pickle round trip as Tune makes it
(cloudpickle), what cannot travel comes back fresh, its get_state/set_state pair round-trips,
and a restored copy carries on where the original stopped. In the style of syne-tune's
scheduler API tests: one parametrised test over all of them. No Ray instance is started."""
import io
import sys
import time
from types import SimpleNamespace

import pytest

ray_cloudpickle = pytest.importorskip("ray.cloudpickle")

from tunesmith.cluster.storage import Storage  # noqa: E402
from tunesmith.search_spaces.space import Dimension  # noqa: E402

SPACE = [Dimension("lr", "loguniform", low=1e-3, high=1.0), Dimension("weight_decay", "choice", values=(0.0, 1e-4))]


def _result(epoch, acc, loss=None):
    return {"training_iteration": epoch, "val_acc": acc, "val_loss": 1 - acc if loss is None else loss,
            "train_loss": 0.5, "reported_at": time.time()}


def _ledger_callback(tmp_path, sinks=()):
    from tunesmith.orchestrator.callback import LedgerCallback
    from tunesmith.orchestrator.stopper import SweepStopper
    cb = LedgerCallback(Storage(str(tmp_path)), "sw", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max",
                        stopper=SweepStopper(None), sinks=list(sinks))
    for tid, accs in (("a", (0.5, 0.6, 0.7)), ("b", (0.4, 0.45))):
        cb.start(tid, {"lr": 0.1})
        for e, acc in enumerate(accs, 1):
            cb.record(tid, _result(e, acc))
    cb.finish("a")
    cb.flush()
    return cb


def _resume_ledger_callback(orig, restored):
    assert restored.stopper is None                    # a resumed sweep brings its own
    restored.set_state(orig.get_state())               # what Tune does on restore: read the files back
    assert {t: (r.status, r.epochs, r.best["val_acc"]) for t, r in restored.trials.items()} == \
        {"a": ("completed", 3, 0.7), "b": ("running", 2, 0.45)}
    restored.record("b", _result(2, 0.45))             # a replayed report is no new row
    restored.record("b", _result(3, 0.5))
    restored.close()
    import pyarrow.dataset as pds
    rows = pds.dataset(str(orig.storage.path("sw", "epochs")), format="parquet").to_table().to_pylist()
    assert sorted((r["trial_id"], r["epoch"]) for r in rows) == \
        [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]


def _make_ledger_callback(tmp_path):
    return _ledger_callback(tmp_path)


def _make_tensorboard_sink(tmp_path):
    cb = _ledger_callback(tmp_path)
    sink = cb.sinks[1]
    assert sink._writers   # "b" is still open
    return sink


def _resume_tensorboard_sink(orig, restored):
    assert restored._writers == {}
    restored.reopen()
    rec = type("R", (), {"trial_id": "c", "hparams": {"lr": 0.2}, "best": {}, "epochs": 0,
                                    "status": "completed"})()
    restored.trial_started(rec, True)
    restored.trial_ended(rec)
    import os
    assert os.listdir(orig.storage.path("sw", "tensorboard", "c"))   # its events went where the sweep's go


def _make_mlflow_sink(tmp_path):
    pytest.importorskip("mlflow")
    from tunesmith.orchestrator.sinks.mlflow import MLflowSink
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"   # a real tracking backend in a file: no server
    # its artifacts in the test's folder (a file store's default is ./mlruns, where the tests run)
    MlflowClient(uri).create_experiment("contract", artifact_location=(tmp_path / "artifacts").as_uri())
    return MLflowSink(uri, "contract", "sw", {"search": {"algorithm": "random"}}, {})


def _resume_mlflow_sink(orig, restored):
    assert restored.client is None and restored.failed is None
    restored.reopen()   # the resumed sweep reconnects
    rec = type("R", (), {"trial_id": "t1", "hparams": {"lr": 0.1}, "status": "completed", "stop_reason": "done",
                         "phase": "search", "of": None, "seed": 0})()
    restored.trial_started(rec, True)
    restored.epoch(rec, {}, {}, _result(1, 0.5))
    restored.trial_ended(rec)
    assert restored.failed is None
    run = restored.client.search_runs([restored.exp_id], "tags.`tunesmith.trial_id` = 't1'")[0]
    assert run.data.tags["status"] == "completed" and run.data.metrics["val_acc"] == 0.5


def _make_ledger(tmp_path):
    return _ledger_callback(tmp_path).ledger


def _resume_ledger(orig, restored):
    assert [r.trial_id for r in restored.ranked()] == [r.trial_id for r in orig.ranked()] == ["a", "b"]
    assert restored.trials["a"].curve == {1: 0.5, 2: 0.6, 3: 0.7}


def _make_retention(tmp_path):
    from tunesmith.orchestrator.retention import KeptCheckpoint, Retention
    import pyarrow.fs as pafs
    r = Retention("best", pafs.LocalFileSystem())
    r.candidates["a"] = KeptCheckpoint(str(tmp_path / "a" / "checkpoint_000001"), pafs.LocalFileSystem())
    return r


def _resume_retention(orig, restored):
    assert list(restored.candidates) == ["a"] and restored.candidates["a"].path == orig.candidates["a"].path


def _make_stopper(tmp_path):
    from tunesmith.orchestrator.stopper import SweepStopper
    s = SweepStopper(time.time() + 100)
    s.event.set()
    return s


def _resume_stopper(orig, restored):
    assert not restored.event.is_set() and not restored.timed_out.is_set()   # a resume is not interrupted
    assert 90 < restored.deadline - time.time() <= 100                       # what was left of the budget


def _make_pilot_relay(tmp_path):
    from tunesmith.orchestrator.pilot_relay import PilotRelay
    cb = _ledger_callback(tmp_path)
    return PilotRelay(None, [cb], cb, cb.stopper, "127.0.0.1")


def _resume_pilot_relay(orig, restored):
    assert restored.pilot is None and restored.done and restored.callbacks == []
    restored.on_step_end(0, [])   # a resumed sweep has no pilot: its hooks do nothing


def _make_printer(tmp_path):
    from tunesmith.orchestrator.display import ProgressPrinter
    return ProgressPrinter(_ledger_callback(tmp_path).ledger, 2, stream=io.StringIO())


def _resume_printer(orig, restored):
    assert restored.stream is sys.stdout and restored.ledger.trials.keys() == {"a", "b"}


def _make_live(tmp_path):
    from tunesmith.orchestrator.display import LiveProgress
    return LiveProgress(_ledger_callback(tmp_path).ledger, 2, budget_s=30, stream=io.StringIO())


def _resume_live(orig, restored):
    assert restored._live is None and restored.stream is sys.stdout
    from rich.console import Console
    out = Console(file=io.StringIO(), width=120)
    out.print(restored.render())   # the restored display still draws the sweep's trials
    assert "b " in out.file.getvalue() and "2/3" in out.file.getvalue()


def _make_asha(tmp_path):
    from tunesmith.orchestrator.asha import RecordingASHA
    s = RecordingASHA(time_attr="training_iteration", metric="val_acc", mode="max", max_t=9, grace_period=3,
                      reduction_factor=3)
    s.pruned["x"] = "pruned by ASHA at epoch 3"
    return s


def _resume_asha(orig, restored):
    assert restored.pruned == orig.pruned
    restored.restore_rungs({"x": {3: 0.5}, "y": {3: 0.7, 9: 0.8}})
    restored._apply_pending_rungs()
    rungs = {m: rec for b in restored._brackets for m, rec in b._rungs}
    assert rungs[3] == {"x": 0.5, "y": 0.7} and rungs[3].ordered == [0.5, 0.7]
    assert restored._brackets[0].cutoff(rungs[3]) == pytest.approx(0.5 + 0.2 * (1 - 1 / 3))


def _make_queue(tmp_path):
    from tunesmith.orchestrator.asha import LiveQueue
    q = LiveQueue()
    for tid in ("a", "b"):
        q.on_trial_add(None, SimpleNamespace(trial_id=tid))
    q.restore_ended({"z": "completed"})
    return q


def _resume_queue(orig, restored):
    assert restored._order == {"a": 1, "b": 2} and restored._ended == {"z": "completed"}
    # one pickled by a tunesmith before the queue: it starts empty
    old = orig.__dict__.copy()
    for name in ("_order", "_added", "_ended"):
        old.pop(name)
    before = type(orig).__new__(type(orig))
    before.__setstate__(old)
    assert before._order == {} and before._added == 0 and before._ended == {}


def _make_quasi(tmp_path):
    from tunesmith.search_spaces.quasi import QuasiRandomSearch
    q = QuasiRandomSearch(SPACE, seed=3, metric="val_acc", mode="max")
    q.held = lambda: 1
    for i in range(3):
        q.suggest(f"t{i}")
    return q


def _resume_quasi(orig, restored):
    assert restored.held is None
    fresh = type(orig)(SPACE, seed=3, metric="val_acc", mode="max")
    fresh.set_state(orig.get_state())
    assert fresh.suggest("t3") == restored.suggest("t3") == orig.suggest("t3")   # continues, not repeats


def _make_tpe(tmp_path):
    from ray import tune
    from tunesmith.search_spaces.tpe import TPESearch
    t = TPESearch(space={"lr": tune.loguniform(1e-3, 1.0)}, metric="val_acc", mode="max", n_initial_points=2,
                  random_state_seed=0)
    for i in range(3):
        t.suggest(f"t{i}")
        t.on_trial_complete(f"t{i}", {"val_acc": 0.1 * i, "training_iteration": 1})
    return t


def _resume_tpe(orig, restored, tmp_path=None):
    import tempfile
    path = tempfile.mktemp()
    orig.save(path)
    again = type(orig)(space=None, metric="val_acc", mode="max")
    again.restore(path)
    assert again.suggest("t3") == orig.suggest("t3")   # the model's state came back with the trials


CASES = {
    "ledger callback": (_make_ledger_callback, _resume_ledger_callback),
    "ledger": (_make_ledger, _resume_ledger),
    "tensorboard sink": (_make_tensorboard_sink, _resume_tensorboard_sink),
    "mlflow sink": (_make_mlflow_sink, _resume_mlflow_sink),
    "checkpoint retention": (_make_retention, _resume_retention),
    "stopper": (_make_stopper, _resume_stopper),
    "pilot relay": (_make_pilot_relay, _resume_pilot_relay),
    "progress printer": (_make_printer, _resume_printer),
    "live display": (_make_live, _resume_live),
    "asha": (_make_asha, _resume_asha),
    "live queue": (_make_queue, _resume_queue),
    "quasi search": (_make_quasi, _resume_quasi),
    "tpe search": (_make_tpe, _resume_tpe),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pickled_objects_round_trip_and_resume(case, tmp_path):
    make, resume = CASES[case]
    obj = make(tmp_path)
    restored = ray_cloudpickle.loads(ray_cloudpickle.dumps(obj))
    assert type(restored) is type(obj)
    if hasattr(obj, "get_state") and hasattr(obj, "set_state") and case not in ("ledger callback", "tpe search"):
        state = obj.get_state()
        twin = ray_cloudpickle.loads(ray_cloudpickle.dumps(obj))
        twin.set_state(state)
    resume(obj, restored)


def test_every_class_tune_pickles_is_covered():
    """A new callback, sink or searcher joins CASES, or this fails."""
    import inspect
    from tunesmith.orchestrator import asha, callback, display, pilot_relay, stopper
    from tunesmith.orchestrator.sinks import mlflow, parquet, tensorboard
    from tunesmith.search_spaces import quasi, tpe
    names = {n for mod in (asha, callback, display, pilot_relay, stopper, mlflow, parquet, tensorboard, quasi, tpe)
             for n, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__}
    covered = {"RecordingASHA", "LiveQueue", "LedgerCallback", "ProgressPrinter", "LiveProgress", "PilotRelay",
               "SweepStopper", "MLflowSink", "TensorBoardSink", "QuasiRandomSearch", "TPESearch",
               "ParquetSink",           # inside the ledger callback's case (its files are what resume reads)
               "NoTrialLines",          # Tune's own progress callback, with one method changed
               "DeadlineKeeper",        # a Ray actor, never pickled by Tune
               "RestoreFailed",         # an exception the driver raises, never pickled
               "Rung"}                  # inside the asha case
    assert names == covered
