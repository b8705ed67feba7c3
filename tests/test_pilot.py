"""smith's pilot without a Ray instance: a trial trained in this process, whose reports reach
the sweep's callbacks (here the results writer) through the relay, as a Tune trial's would."""
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import torch

from tunesmith.orchestrator.pilot import Pilot
from tunesmith.orchestrator.pilot_relay import PilotRelay
from tunesmith.orchestrator.callback import LedgerCallback
from tunesmith.orchestrator.stopper import SweepStopper
from tunesmith.cluster.storage import Storage
from tunesmith.trainables.config import TrainConfig

BASE = TrainConfig.from_dict({"dataset": {"name": "digits"}, "trainer": {"epochs": 2, "lr": 0.05}}).to_dict()


def _sweep(tmp_path, stopper=None):
    storage = Storage(str(tmp_path))
    writer = LedgerCallback(storage, "sw", ["lr"], {"lr": []}, epochs=2, metric="val_acc", mode="max")
    pilot = Pilot(BASE, {"lr": 0.05}, storage, "sw", cpu_threads=1)
    relay = PilotRelay(pilot, [writer], writer, stopper or SweepStopper(None), "127.0.0.1")
    return storage, writer, pilot, relay


def test_the_pilot_is_a_trial_of_the_sweep(tmp_path):
    storage, writer, pilot, relay = _sweep(tmp_path)
    assert pilot.holding() == 1   # from its creation, before the sweep asks for trials
    pilot.run()   # all of it before Tune's first step, as on digits while Ray starts
    relay.on_step_end(0, [])   # Tune's loop passes its reports on
    relay.on_experiment_end([])
    writer.close()
    assert pilot.holding() == 0
    t = pq.read_table(tmp_path / "sw" / "trials.parquet").to_pandas().set_index("trial_id")
    row = t.loc["pilot"]
    assert row.status == "completed" and row.epochs == 2 and row.hp_lr == 0.05 and row.device == "cpu"
    assert row.node_ip == "127.0.0.1" and row.best_val_acc > 0.5
    # the best trial's final checkpoint is kept, and loads
    assert row.checkpoint.endswith("sw/pilot/checkpoint_000001")
    state = torch.load(f"{row.checkpoint}/trainer.pt", weights_only=True)
    assert state["epoch"] == 2
    assert not (tmp_path / "sw" / "pilot" / "checkpoint_000000").exists()
    epochs = pds.dataset(str(tmp_path / "sw" / "epochs")).to_table().to_pandas().sort_values("epoch")
    assert list(epochs.epoch) == [1, 2] and epochs.timestamp.is_monotonic_increasing
    # its times are the pilot's own, not when the relay passed them on
    stamps = epochs.timestamp.map(lambda x: x.timestamp())
    assert row.started_at.timestamp() < stamps.min() and stamps.max() <= row.ended_at.timestamp() + 0.001
    assert (tmp_path / "sw" / "tensorboard" / "pilot").is_dir()


def test_an_interrupted_sweep_stops_its_pilot(tmp_path):
    stopper = SweepStopper(None)
    storage, writer, pilot, relay = _sweep(tmp_path, stopper)
    stopper.event.set()   # Ctrl-C before its first epoch ends
    relay.on_step_end(0, [])
    pilot.run()
    relay.finish()
    writer.close()
    row = pq.read_table(tmp_path / "sw" / "trials.parquet").to_pandas().set_index("trial_id").loc["pilot"]
    assert row.status == "stopped" and row.epochs == 0, row.to_dict()
