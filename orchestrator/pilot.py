"""smith's pilot: stage 2's first trial, trained in the driver while Ray starts its workers.

On a machine of its own, smith's driver has just run the range test: torch is imported, the
data is loaded and the optimizer's first step has paid for ``torch._dynamo``. A Tune trial pays
all of that again in a new worker process, after Ray's own start (bench/quality.py measures a
plain Ray Tune script's first report at about 9 s on 2 cores). The pilot trains stage 2's
centre point (the LR range's geometric middle, the middle momentum bound and weight decay) in
the driver at once, as one of stage 2's trials: it holds one of the sweep's concurrency slots
while it runs, reports its epochs to the same callbacks as Tune's trials (the results writer,
TensorBoard, MLflow, the progress display), and keeps the same deadline. It is not pruned by
ASHA, which never sees it. Only where trials would run on this host, on CPUs, one process each,
with the data in memory: on a cluster, or with GPUs that Ray hands to trials, stage 2 is
Tune's alone.

This module imports no Ray: the pilot starts in the range test's thread as soon as the test has
decided, and Ray's import (about 2 s holding the GIL) is the sweep's, in another thread.
orchestrator/pilot_relay.py hands its reports to Tune's callbacks.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Dict, Optional

TRIAL_ID = "pilot"
STATE_FILE = "trainer.pt"


class DriverTrial:
    """What Tune's callbacks read of a trial, for the one that runs in the driver."""
    pickled_error_file = error_file = None

    def __init__(self, config: Dict[str, Any]):
        self.trial_id = TRIAL_ID
        self.config = dict(config)
        self.checkpoint = None
        self.status = "RUNNING"


class Pilot:
    """Trains ``config`` over ``base`` (stage 2's trial config) in this process; its reports
    wait in a queue until a PilotRelay hands them to the sweep's callbacks."""

    def __init__(self, base: Dict[str, Any], config: Dict[str, Any], storage, sweep: str,
                 cpu_threads: float, deadline: Optional[float] = None, checkpoint_every: int = 1):
        self.base, self.config = base, dict(config)
        self.checkpoint_every = checkpoint_every
        self.storage, self.sweep = storage, sweep
        self.cpu_threads, self.deadline = cpu_threads, deadline
        self.trial = DriverTrial(config)
        self.events: "queue.Queue[tuple]" = queue.Queue()
        self.ended = threading.Event()
        self.trainer = None
        self.relay = None   # the PilotRelay (pilot_relay.py) of the sweep that takes it in

    def holding(self) -> int:
        """From its creation (before the sweep asks for trials) until it ends: one slot."""
        return 0 if self.ended.is_set() else 1

    def stop(self) -> None:
        """The sweep was interrupted or ran out of time: end at the next mini-batch."""
        self.move_deadline(time.time())

    def move_deadline(self, deadline: Optional[float]) -> None:
        """Earlier only (smith holds budget back for stage 3 as stage 2's pace is measured)."""
        if deadline is None:
            return
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)
        if self.trainer is not None:   # read at every mini-batch
            self.trainer.deadline = self.deadline

    def _checkpoint(self, trainer) -> None:
        """As a Tune trial's: ``checkpoint_<epoch - 1>/trainer.pt`` under the sweep's ``pilot/``
        folder; the one before it goes, since a pilot is never resumed."""
        import io
        import torch
        from tunesmith.orchestrator.retention import KeptCheckpoint, delete_checkpoints
        buf = io.BytesIO()
        torch.save(trainer.state_dict(), buf)
        name = f"checkpoint_{trainer.epoch - 1:06d}"
        rel = f"{self.sweep}/pilot/{name}"
        self.storage.makedirs(self.sweep, "pilot", name)
        self.storage.write_bytes(f"{rel}/{STATE_FILE}", buf.getvalue())
        kept = KeptCheckpoint(self.storage.path(rel), self.storage.fs)
        delete_checkpoints(kept, keep_latest=True)
        self.events.put(("checkpoint", kept))

    def run(self) -> None:
        """In the thread that ran the range test. Never raises: an error ends the trial as
        errored, as a Tune trial's would."""
        from tunesmith.trainables.config import TrainConfig
        from tunesmith.trainables.trainer import Trainer
        began = time.time()
        try:
            cfg = TrainConfig.from_dict(self.base).with_overrides(self.config)
            self.trainer = trainer = Trainer(cfg, num_gpus=0, cpu_threads=self.cpu_threads)
            trainer.deadline = self.deadline   # already past if stopped while it was being built
            self.events.put(("start", began))
            last = began
            for metrics in trainer.run():
                now = time.time()
                done = metrics.pop("done", False)
                metrics.update(training_iteration=metrics["epoch"], time_this_iter_s=now - last,
                               time_total_s=now - began, reported_at=now, device="cpu",
                               global_batch=trainer.global_batch)
                last = now
                if self.checkpoint_every and not metrics.get("diverged") and \
                        (metrics["epoch"] % self.checkpoint_every == 0 or done):
                    self._checkpoint(trainer)
                self.events.put(("result", metrics))
            self.events.put(("complete", time.time()))
        except BaseException as exc:   # noqa: BLE001 - the sweep goes on without it
            self.events.put(("error", (time.time(), f"{type(exc).__name__}: {exc}")))
        finally:
            self.ended.set()
