"""The TensorBoard sink: one event file per trial, written by the driver's thread (no writer
thread per trial): scalars per epoch, HParams when the trial starts and its status when it ends,
prediction grids. On an object store the events are staged locally and uploaded at each flush."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, List

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import schema
from tunesmith.orchestrator import tb_events as tb
from tunesmith.orchestrator.sinks import Sink


class TensorBoardSink(Sink):
    TRANSIENT = {"_writers": dict}

    def __init__(self, storage: Storage, sweep: str, hp_domains: Dict[str, list], metric: str):
        self.storage, self.sweep, self.hp_domains, self.metric = storage, sweep, hp_domains, metric
        self._writers: Dict[str, Any] = {}
        self._local = storage.local_path(sweep, "tensorboard")
        self._staging = None if self._local else tempfile.mkdtemp(prefix="tunesmith-tb-")
        self._sent: Dict[str, tuple] = {}   # staged files already uploaded, by (size, mtime)

    def _tb(self, trial_id: str):
        w = self._writers.get(trial_id)
        if w is None:
            w = tb.EventLog(os.path.join(self._local or self._staging, trial_id))
            self._writers[trial_id] = w
        return w

    def trial_started(self, rec, fresh: bool) -> None:
        if fresh:
            w = self._tb(rec.trial_id)
            w.add_summary(tb.experiment_summary(
                self.hp_domains, list(dict.fromkeys([self.metric, "val_loss", "val_acc", *schema.TEST_METRICS]))))
            w.add_summary(tb.session_start(rec.hparams))

    def epoch(self, rec, row, extra, result) -> None:
        w = self._tb(rec.trial_id)
        epoch, at = row["epoch"], row["timestamp"].timestamp()
        for k, v in [*((m, row[m]) for m in schema.CORE_METRICS), *extra.items()]:
            if v is not None:   # NaN/inf are left out: one would flatten TB's chart scale
                w.add_scalar(k, v, epoch, at)   # TB's time axes: when the epoch ended
        preview = result.get("preview")
        if isinstance(preview, dict) and "images" in preview:
            w.add_image("predictions", tb.prediction_grid(preview), epoch, at)
            w.add_text("predictions", tb.prediction_caption(preview), epoch, at)

    def trial_ended(self, rec) -> None:
        w = self._tb(rec.trial_id)
        for m, v in rec.best.items():
            w.add_scalar(f"best_{m}", v, rec.epochs)
        w.add_summary(tb.session_end(rec.status))
        w.close()   # one open file per running trial, not per trial ever started
        del self._writers[rec.trial_id]

    def flush(self, ledger, trials_due: bool) -> None:
        for w in self._writers.values():
            w.flush()
        if self._staging:
            self.storage.upload_dir(self._staging, f"{self.sweep}/tensorboard", self._sent)

    def close(self, ledger, stopped: List[Any], interrupted: bool) -> None:
        for rec in stopped:
            w = self._writers.get(rec.trial_id)
            if w is not None:
                w.add_summary(tb.session_end("stopped"))
        for w in self._writers.values():
            w.close()
        self._writers = {}
        if self._staging:
            self.storage.upload_dir(self._staging, f"{self.sweep}/tensorboard", self._sent)
            shutil.rmtree(self._staging, ignore_errors=True)

    def relocate(self, storage: Storage) -> None:
        self.storage = storage
        self._local = storage.local_path(self.sweep, "tensorboard")
        if self._local is None and self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="tunesmith-tb-")
        elif self._local is not None:
            self._staging = None

    def reopen(self) -> None:
        self._writers = {}
        if self._staging is not None:
            self._staging = tempfile.mkdtemp(prefix="tunesmith-tb-")
            self._sent = {}
