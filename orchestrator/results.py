"""The results writer: a Tune callback in the driver that turns every reported result into
Parquet and TensorBoard as the sweep runs.

Trials may run on any node; their results reach the driver through Tune, and the driver
writes them to the results location (a local path or a pyarrow-filesystem URI). Epoch rows
are flushed as Parquet part files at most ``flush_seconds`` after they arrive and whenever a
trial ends; trials.parquet is rewritten whole, atomically, at each flush. A crash loses at
most the reports of the last ``flush_seconds``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import pyarrow as pa

from tunesmith.orchestrator import schema
from tunesmith.orchestrator import tensorboard as tb
from tunesmith.orchestrator.storage import Storage, KeptCheckpoint, delete_checkpoints

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - Ray is a dependency; this keeps the module importable
    Callback = object


@dataclass
class TrialRecord:
    trial_id: str
    hparams: Dict[str, Any]
    config: Dict[str, Any]
    started_at: float
    status: str = "running"
    stop_reason: str = ""
    ended_at: Optional[float] = None
    epochs: int = 0
    node_ip: Optional[str] = None
    device: Optional[str] = None
    global_batch: Optional[int] = None
    best: Dict[str, float] = field(default_factory=dict)
    last: Dict[str, float] = field(default_factory=dict)
    error: str = ""
    curve: Dict[int, float] = field(default_factory=dict)   # the sweep's metric by epoch
    retries: int = 0                  # restarts from a checkpoint after a lost worker or node
    checkpoint: Optional[str] = None  # the kept checkpoint (the best trial's final one)
    written: set = field(default_factory=set)   # epochs already in epochs/: a replay is not a new row
    train_checkpoint: Optional[str] = None       # a data-parallel trial's latest (Ray Train's)
    schedule_epochs: Optional[int] = None        # where its schedule ends, once fitted to the time budget
    pace: Optional[float] = None   # seconds between its last two reports: an epoch's whole cost, report included


def _num(value: Any) -> Optional[float]:
    """A finite float, or None. NaN and inf become null in Parquet: SQL engines sort NaN above
    every number, so one diverged trial would win every max(); the row's ``diverged`` flag
    and the trial's stop_reason say what happened."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _take_row(rec: "TrialRecord", row: Dict[str, Any], metric: str) -> None:
    """An epoch row into the trial's record: written epochs, count, curve, last and best values.
    The same for a report as it arrives and for a row read back by a resume."""
    epoch = row["epoch"]
    rec.written.add(epoch)
    rec.epochs = max(rec.epochs, epoch)
    if row.get(metric) is not None:
        rec.curve[epoch] = row[metric]
    for m in schema.CORE_METRICS:
        v = row.get(m)
        if v is None:
            continue
        rec.last[m] = v
        if m in schema.SUMMARY_METRICS:
            better = min if m in schema.LOWER_IS_BETTER else max
            rec.best[m] = better(rec.best.get(m, v), v)


def report_time(result: dict) -> float:
    """When the trial reported the epoch, on its own clock, to the ms. The trainables stamp it as
    ``reported_at``: Tune's ``timestamp`` is whole seconds, which several short epochs share."""
    return float(result.get("reported_at") or result.get("timestamp") or time.time())


def _ts(seconds: Optional[float]):
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _hp_array(values: List[Any]) -> pa.Array:
    """One typed column per hyperparameter: int, float, bool, else string."""
    vals = [tb.plain(v) for v in values]
    present = [v for v in vals if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(vals, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(vals, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    return pa.array([None if v is None else str(v) for v in vals], pa.string())


def _timed(hook):
    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.busy_seconds += time.perf_counter() - began
    return wrapper


TRIALS_EVERY = 5.0   # seconds between trials.parquet rewrites that only update running trials' metrics


class ResultsWriter(Callback):
    def __init__(self, storage: Storage, sweep: str, hp_keys: List[str], hp_domains: Dict[str, list],
                 epochs: int, metric: str, mode: str, flush_seconds: float = 1.0,
                 pruned: Optional[Dict[str, str]] = None, tensorboard: bool = True, write: bool = True,
                 stopper=None, keep_checkpoints: str = "best", scheduler=None):
        self.storage, self.sweep = storage, sweep
        self.hp_keys, self.hp_domains = list(hp_keys), hp_domains
        self.epochs, self.metric, self.mode = epochs, metric, mode
        self.flush_seconds = flush_seconds
        self.pruned = pruned if pruned is not None else {}   # trial_id -> reason, from the scheduler
        self.stopper = stopper           # scheduler.SweepStopper: Ctrl-C and the time budget
        self.trials: Dict[str, TrialRecord] = {}
        self.opened_at = time.time()   # with Tune's set-up about to begin
        self.start_up: Optional[float] = None   # seconds to the first report, less its epoch's own time
        self._rows: List[dict] = []
        self._last_flush = time.monotonic()
        self._dirty = False
        self._part = 0
        self._token = uuid.uuid4().hex[:6]   # part names stay unique across resumed runs
        self._tensorboard = tensorboard and write
        self._write = write   # False: keep the records in memory only (bench/writer_cost.py)
        self._tb_writers: Dict[str, Any] = {}
        self._tb_local = storage.local_path(sweep, "tensorboard")
        self._tb_staging = None if self._tb_local else tempfile.mkdtemp(prefix="tunesmith-tb-")
        self._closed = self._closing = False
        self._reconcile = False            # set by reload: Tune's ended trials checked once
        self._lost: set = set()            # trials known from epoch rows alone that Tune's state lacks
        self.busy_seconds = 0.0
        self.keep_checkpoints = keep_checkpoints   # best | all | none
        self.scheduler = scheduler         # its rungs are rebuilt from disk on resume (ray#30838)
        self._ckpt: Dict[str, Any] = {}    # trial_id -> its latest Ray checkpoint, while it may be kept
        # checkpoint deletions (checkpoint, keep_latest), due once Tune's saved experiment state
        # knows their trial ended: queued since the last snapshot, and before it
        self._doomed: List[tuple] = []
        self._doomed_saved: List[tuple] = []
        self._status_changed = False      # trials.parquet: rewritten at once when a status changes,
        self._trials_written = 0.0        # and at most every TRIALS_EVERY seconds for metrics alone
        if write:
            storage.makedirs(sweep, "epochs")

    def __getstate__(self):
        # Tune pickles its run config into tuner.pkl (for restore): leave the open writers out.
        state = dict(self.__dict__)
        state["_tb_writers"] = {}
        state["stopper"] = None   # a resumed sweep has its own
        return state

    def _was_interrupted(self) -> bool:
        return self.stopper is not None and self.stopper.event.is_set()

    def _out_of_time(self, rec: TrialRecord) -> Optional[str]:
        """The stop reason of a trial the time budget stopped, else None."""
        if self.stopper is None or not self.stopper.out_of_time():
            return None
        return f"time budget reached after {rec.epochs} of {self.epochs} epochs"

    # --- Tune hooks (each timed: busy_seconds is the writer's own cost in the driver) ------
    @_timed
    def on_trial_start(self, iteration, trials, trial, **info):
        self._start(trial.trial_id, dict(trial.config))

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.record(trial.trial_id, result, config=trial.config)
        self.maybe_flush()

    # A trial's end is written with the next flush, within flush_seconds: writing two Parquet
    # files per trial was most of the per-trial overhead of short trials (bench/overhead.py).
    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id)
        self._housekeep(trial)
        self.maybe_flush()

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, error=_error_text(trial))
        self._housekeep(trial)
        self.maybe_flush()

    @_timed
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Tune's next experiment snapshot will name this checkpoint, and a resume restarts the
        trial from it: the epochs it covers go to disk first, or a killed driver would lose them."""
        self._write_rows()

    @_timed
    def on_trial_recover(self, iteration, trials, trial, **info):
        """A lost worker or node: Tune restarts the trial from its last checkpoint, elsewhere."""
        rec = self.trials.get(trial.trial_id)
        if rec is not None:
            rec.retries += 1
            rec.stop_reason = f"retried from its checkpoint after: {_error_text(trial).strip().splitlines()[-1][:300]}" \
                if _error_text(trial).strip() else "retried from its checkpoint"
            self._dirty = self._status_changed = True

    # --- checkpoints: bounded disk, the winner kept ------------------------------------------
    def _housekeep(self, trial) -> None:
        """An ended trial's checkpoint goes, unless it is the best trial's final one (whose path
        trials.parquet keeps) or the spec keeps them all."""
        rec = self.trials.get(trial.trial_id)
        # a data-parallel trial's checkpoints are Ray Train's, named in its reports (rank 0's)
        ckpt = getattr(trial, "checkpoint", None) or (
            KeptCheckpoint(rec.train_checkpoint, self.storage.fs) if rec is not None and rec.train_checkpoint else None)
        if ckpt is None or rec is None or self.keep_checkpoints == "all":
            return
        self._ckpt[trial.trial_id] = ckpt
        ranked = [r for r in self.ranked() if r.trial_id in self._ckpt]
        keep = ranked[0].trial_id if ranked and self.keep_checkpoints == "best" else None
        for tid in list(self._ckpt):
            if tid == keep:
                self.trials[tid].checkpoint = self._ckpt[tid].path
                self._doomed.append((self._ckpt[tid], True))   # its earlier epochs
                continue
            self._doomed.append((self._ckpt.pop(tid), False))
            if tid in self.trials and self.trials[tid].checkpoint:
                self.trials[tid].checkpoint = None
        self._dirty = self._status_changed = True

    # --- resume: Tune restores this callback from tuner.pkl; the files on disk are the truth --
    def get_state(self) -> Optional[Dict]:
        """Called at each of Tune's experiment snapshots. A checkpoint is deleted only once a
        snapshot taken after its trial ended has been saved: a driver killed between a trial's
        end and the next snapshot leaves Tune's state calling the trial unfinished, and resume
        restores it from that checkpoint."""
        for ckpt, keep_latest in self._doomed_saved:
            delete_checkpoints(ckpt, keep_latest)
        self._doomed_saved, self._doomed = self._doomed, []
        return {"sweep": self.sweep}   # non-empty, so that Tune calls set_state on restore

    def set_state(self, state: Dict) -> None:
        self.reload()

    def reload(self) -> None:
        """Rebuild every trial's record from trials.parquet and epochs/, so a resumed sweep keeps
        the rows its killed driver wrote, adds none twice, and ASHA's rungs start from them."""
        import pyarrow.dataset as pds
        self._tb_writers = {}
        self._token = uuid.uuid4().hex[:6]
        self._closed = self._closing = False
        self._reconcile = True
        self._lost = set()
        if self._tb_staging is not None:
            self._tb_staging = tempfile.mkdtemp(prefix="tunesmith-tb-")
        if not self.storage.exists(self.sweep, "trials.parquet"):
            return
        trials = self.storage.read_table(f"{self.sweep}/trials.parquet").to_pylist()
        for row in trials:
            rec = TrialRecord(row["trial_id"], json.loads(row["config"] or "{}"), json.loads(row["config"] or "{}"),
                              row["started_at"].timestamp() if row["started_at"] else time.time())
            rec.hparams = {k: rec.config.get(k) for k in self.hp_keys}
            rec.status, rec.stop_reason, rec.epochs = row["status"], row["stop_reason"] or "", row["epochs"] or 0
            rec.ended_at = row["ended_at"].timestamp() if row["ended_at"] else None
            rec.node_ip, rec.device, rec.global_batch = row["node_ip"], row["device"], row["global_batch"]
            rec.retries, rec.checkpoint, rec.error = row.get("retries") or 0, row.get("checkpoint"), row["error"] or ""
            if rec.checkpoint:   # the kept one: it goes when a better trial ends
                self._ckpt[rec.trial_id] = KeptCheckpoint(rec.checkpoint, self.storage.fs)
            for m in schema.SUMMARY_METRICS:
                if row.get(f"best_{m}") is not None:
                    rec.best[m] = row[f"best_{m}"]
            for m in schema.CORE_METRICS:
                if row.get(f"last_{m}") is not None:
                    rec.last[m] = row[f"last_{m}"]
            self.trials[rec.trial_id] = rec
        if self.storage.exists(self.sweep, "epochs"):
            fs, path = self.storage.fs, self.storage.path(self.sweep, "epochs")
            files = [f for f in pds.dataset(path, filesystem=fs, format="parquet").files]
            self._part = len(files)
            columns = list(dict.fromkeys(["trial_id", "epoch", "timestamp", "time_total_s", "node_ip", "device",
                                          self.metric, *schema.CORE_METRICS]))
            rows = pds.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns).to_pylist()
            # trials.parquet is rewritten on status changes and every few seconds, the epoch rows
            # before each checkpoint: where they disagree, the rows are newer (a trial whose last
            # epoch was written just before the driver died must not read as stopped short, and
            # one that started and checkpointed since the last trials.parquet must not be missing,
            # or its epochs would be written again when Tune restores it).
            for row in sorted(rows, key=lambda r: r["epoch"]):
                rec = self.trials.get(row["trial_id"]) or self._unlisted(row)
                if row["epoch"] not in rec.written:
                    _take_row(rec, row, self.metric)
        if self.scheduler is not None and hasattr(self.scheduler, "restore_rungs"):
            self.scheduler.restore_rungs({tid: r.curve for tid, r in self.trials.items()})

    def _unlisted(self, row: Dict[str, Any]) -> TrialRecord:
        """The record of a trial known from its epoch rows alone; its config comes from Tune."""
        started = row["timestamp"].timestamp() - (row["time_total_s"] or 0.0) if row["timestamp"] else time.time()
        rec = TrialRecord(row["trial_id"], {}, {}, started, node_ip=row["node_ip"], device=row["device"])
        self.trials[rec.trial_id] = rec
        self._dirty = self._status_changed = True
        return rec

    @_timed
    def on_step_end(self, iteration, trials, **info):
        if self._reconcile:
            self.reconcile(trials)
        self.maybe_flush()

    def reconcile(self, trials) -> None:
        """After a resume: a trial that Tune's snapshot holds as ended, while the files on disk
        still say running (the driver died between the two writes), gets no second end from Tune;
        it is ended here, from what its rows say. A trial known from its epoch rows alone takes
        its config from Tune; one that Tune's snapshot does not hold either will not run again."""
        self._reconcile = False
        known = {trial.trial_id for trial in trials}
        for trial in trials:
            rec = self.trials.get(trial.trial_id)
            if rec is not None and not rec.config and getattr(trial, "config", None):
                self._fill_config(rec, dict(trial.config))
            if rec is None or rec.status != "running":
                continue
            if trial.status == "TERMINATED":
                self.finish(trial.trial_id)
            elif trial.status == "ERROR":
                self.finish(trial.trial_id, error=_error_text(trial) or "errored")
        for rec in self.trials.values():
            if rec.status == "running" and not rec.config and rec.trial_id not in known:
                self.finish(rec.trial_id, status="stopped")
                self._lost.add(rec.trial_id)
                rec.stop_reason = (f"lost with the killed driver after {rec.epochs} of {self.epochs} epochs: "
                                   "Tune's saved state did not hold it, so resume could not restart it")

    @_timed
    def on_experiment_end(self, trials, **info):
        self.close()

    # --- the writer, usable without Tune -------------------------------------------------
    def _fill_config(self, rec: TrialRecord, config: Dict[str, Any]) -> None:
        """A trial known from its epoch rows alone: the killed driver may not have flushed its
        TensorBoard session start, so it is written (again) with the config."""
        rec.hparams = {k: tb.plain(config.get(k)) for k in self.hp_keys}
        rec.config = {k: tb.plain(v) for k, v in config.items()}
        self._dirty = self._status_changed = True
        self._tb_session_start(rec)

    def _tb_session_start(self, rec: TrialRecord) -> None:
        w = self._tb(rec.trial_id)
        if w is not None:
            w.add_summary(tb.experiment_summary(
                self.hp_domains, list(dict.fromkeys([self.metric, "val_loss", "val_acc"]))))
            w.add_summary(tb.session_start(rec.hparams))

    def _start(self, trial_id: str, config: Dict[str, Any]) -> TrialRecord:
        rec = self.trials.get(trial_id)
        if rec is not None and not rec.config and config:   # known from its epoch rows alone
            self._fill_config(rec, config)
        if rec is not None and trial_id in self._lost:
            # Tune's restored random or grid search makes the same trial again, under the same id
            # and config and with the same seed: its epochs match the rows kept, and run on
            self._lost.discard(trial_id)
            rec.status, rec.stop_reason, rec.ended_at = "running", "", None
        if rec is None:
            hps = {k: tb.plain(config.get(k)) for k in self.hp_keys}
            rec = TrialRecord(trial_id, hps, {k: tb.plain(v) for k, v in config.items()}, time.time())
            self.trials[trial_id] = rec
            self._dirty = self._status_changed = True
            self._tb_session_start(rec)
        return rec

    def record(self, trial_id: str, result: Dict[str, Any], config: Optional[Dict[str, Any]] = None) -> None:
        rec = self.trials.get(trial_id) or self._start(trial_id, dict(config or {}))
        epoch = int(result.get("training_iteration") or result.get("epoch") or rec.epochs + 1)
        if epoch in rec.written:
            return   # Tune replays the reports made since a retried trial's last checkpoint
        if rec.status not in ("running",) and rec.status != "diverged":
            rec.status = "running"   # a resumed trial runs again
        if result.get(TRAIN_CHECKPOINT):
            rec.train_checkpoint = str(result[TRAIN_CHECKPOINT])
        rec.node_ip = result.get("node_ip", rec.node_ip)
        rec.device = result.get("device", rec.device)
        rec.global_batch = result.get("global_batch", rec.global_batch)
        if result.get("schedule_epochs"):
            rec.schedule_epochs = int(result["schedule_epochs"])
        if epoch > 1 and _num(result.get("time_this_iter_s")):   # the first also holds the trial's start
            rec.pace = float(result["time_this_iter_s"])
        if self.start_up is None and _num(result.get("epoch_seconds")):
            self.start_up = max(0.0, time.time() - self.opened_at - float(result["epoch_seconds"]))
        reported_at = report_time(result)
        row = {"schema_version": schema.SCHEMA_VERSION, "sweep": self.sweep, "trial_id": trial_id,
               "epoch": epoch, "timestamp": _ts(reported_at),
               "time_total_s": _num(result.get("time_total_s")),
               "diverged": bool(result.get("diverged", False)), "node_ip": rec.node_ip,
               "device": rec.device}
        for m in schema.CORE_METRICS:
            row[m] = _num(result.get(m))
        extra = {}
        for k, v in result.items():
            if k in schema.CORE_METRICS or k in _TUNE_KEYS or k in row:
                continue
            num = _num(v)
            if num is not None:
                extra[k] = num
        row["extra"] = list(extra.items())
        self._rows.append(row)
        _take_row(rec, row, self.metric)
        if result.get("diverged"):
            rec.stop_reason = str(result.get("stop_reason", "diverged"))
            rec.status = "diverged"
        self._dirty = True
        w = self._tb(trial_id)
        if w is not None:
            for k, v in [*((m, row[m]) for m in schema.CORE_METRICS), *extra.items()]:
                if v is not None:   # NaN/inf are left out: one would flatten TB's chart scale
                    w.add_scalar(k, v, epoch, reported_at)   # TB's time axes: when the epoch ended
            preview = result.get("preview")
            if isinstance(preview, dict) and "images" in preview:
                w.add_image("predictions", tb.prediction_grid(preview), epoch, reported_at)
                w.add_text("predictions", tb.prediction_caption(preview), epoch, reported_at)

    def finish(self, trial_id: str, error: str = "", status: Optional[str] = None) -> None:
        rec = self.trials.get(trial_id) or self._start(trial_id, {})
        rec.ended_at = time.time()
        if status:
            rec.status = status
        elif error:
            rec.status, rec.error = "errored", error
            rec.stop_reason = error.strip().splitlines()[-1][:500] if error.strip() else "errored"
        elif rec.status == "diverged":
            pass
        elif trial_id in self.pruned:
            rec.status, rec.stop_reason = "pruned", self.pruned[trial_id]
        elif rec.epochs >= self.epochs:
            rec.status, rec.stop_reason = "completed", f"trained all {self.epochs} epochs"
        elif rec.schedule_epochs and rec.epochs >= rec.schedule_epochs:
            rec.status, rec.stop_reason = "completed", (f"annealed in {rec.epochs} of {self.epochs} epochs: its "
                                                        "schedule was fitted to the time budget")
        elif self._was_interrupted():
            rec.status, rec.stop_reason = "stopped", "sweep interrupted"
        elif (reason := self._out_of_time(rec)) is not None:
            rec.status, rec.stop_reason = "stopped", reason
        else:
            rec.status, rec.stop_reason = "stopped", f"stopped after {rec.epochs} of {self.epochs} epochs"
        self._dirty = self._status_changed = True
        w = self._tb(trial_id)
        if w is not None:
            for m, v in rec.best.items():
                w.add_scalar(f"best_{m}", v, rec.epochs)
            w.add_summary(tb.session_end(rec.status))
            w.close()   # one open file per running trial, not per trial ever started
            del self._tb_writers[trial_id]

    def set_time(self, trial_id: str, field: str, at: float) -> None:
        """A trial's ``started_at`` or ``ended_at``, where it ran outside Tune (smith's pilot)."""
        rec = self.trials.get(trial_id)
        if rec is not None and field in ("started_at", "ended_at"):
            setattr(rec, field, at)
            self._dirty = self._status_changed = True

    def maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._write:
            self._rows, self._dirty = [], False
            return
        self._write_rows()
        now = time.monotonic()
        if self._dirty and (self._status_changed or self._closing or now - self._trials_written >= TRIALS_EVERY):
            self.storage.write_table(f"{self.sweep}/trials.parquet", self.trials_table())
            self._dirty = self._status_changed = False
            self._trials_written = now
        for w in self._tb_writers.values():
            w.flush()
        if self._tb_staging:
            self.storage.upload_dir(self._tb_staging, f"{self.sweep}/tensorboard")
        self._last_flush = time.monotonic()

    def _write_rows(self) -> None:
        if self._rows and self._write:
            table = pa.Table.from_pylist(self._rows, schema=schema.EPOCH_SCHEMA)
            self.storage.write_table(f"{self.sweep}/epochs/part-{self._token}-{self._part:05d}.parquet", table)
            self._part += 1
            self._rows = []

    def trials_table(self) -> pa.Table:
        recs = list(self.trials.values())
        cols: Dict[str, pa.Array] = {
            "schema_version": pa.array([schema.SCHEMA_VERSION] * len(recs), pa.int16()),
            "sweep": pa.array([self.sweep] * len(recs), pa.string()),
            "trial_id": pa.array([r.trial_id for r in recs], pa.string()),
            "status": pa.array([r.status for r in recs], pa.string()),
            "stop_reason": pa.array([r.stop_reason for r in recs], pa.string()),
            "epochs": pa.array([r.epochs for r in recs], pa.int32()),
            "wall_seconds": pa.array([(r.ended_at or time.time()) - r.started_at for r in recs], pa.float64()),
            "started_at": pa.array([_ts(r.started_at) for r in recs], pa.timestamp("ms", tz="UTC")),
            "ended_at": pa.array([_ts(r.ended_at) for r in recs], pa.timestamp("ms", tz="UTC")),
            "node_ip": pa.array([r.node_ip for r in recs], pa.string()),
            "device": pa.array([r.device for r in recs], pa.string()),
            "global_batch": pa.array([r.global_batch for r in recs], pa.int64()),
            "config": pa.array([json.dumps(r.config, sort_keys=True, default=str) for r in recs], pa.string()),
        }
        for m in schema.SUMMARY_METRICS:
            cols[f"best_{m}"] = pa.array([r.best.get(m) for r in recs], pa.float64())
        for m in schema.CORE_METRICS:
            cols[f"last_{m}"] = pa.array([r.last.get(m) for r in recs], pa.float64())
        for key in self.hp_keys:
            cols[schema.hp_column(key)] = _hp_array([r.hparams.get(key) for r in recs])
        cols["retries"] = pa.array([r.retries for r in recs], pa.int32())
        cols["checkpoint"] = pa.array([r.checkpoint for r in recs], pa.string())
        cols["error"] = pa.array([r.error or None for r in recs], pa.string())
        return pa.table(cols)

    def close(self, unfinished_reason: str = "sweep ended") -> None:
        if self._closed:
            return
        self._closing = True
        interrupted = self._was_interrupted()
        if interrupted:
            unfinished_reason = "sweep interrupted"
        for rec in self.trials.values():
            if rec.status == "running":
                reason = (not interrupted and self._out_of_time(rec)) or unfinished_reason
                rec.status, rec.stop_reason, rec.ended_at = "stopped", reason, time.time()
                self._dirty = True
                w = self._tb_writers.get(rec.trial_id)
                if w is not None:
                    w.add_summary(tb.session_end("stopped"))
        self.flush()
        for ckpt, keep_latest in self._doomed_saved + self._doomed:   # Tune saves its state at the end
            delete_checkpoints(ckpt, keep_latest)
        self._doomed_saved = self._doomed = []
        for w in self._tb_writers.values():
            w.close()
        if self._tb_staging:
            self.storage.upload_dir(self._tb_staging, f"{self.sweep}/tensorboard")
            shutil.rmtree(self._tb_staging, ignore_errors=True)
        self._closed = True

    def _tb(self, trial_id: str):
        if not self._tensorboard:
            return None
        w = self._tb_writers.get(trial_id)
        if w is None:
            w = tb.EventLog(os.path.join(self._tb_local or self._tb_staging, trial_id))
            self._tb_writers[trial_id] = w
        return w

    # --- summaries for the end-of-sweep table ---------------------------------------------
    def status_counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for rec in self.trials.values():
            counts[rec.status] = counts.get(rec.status, 0) + 1
        return dict(sorted(counts.items()))

    def ranked(self) -> List[TrialRecord]:
        key = self.metric
        sign = -1 if self.mode == "max" else 1
        have = [r for r in self.trials.values() if key in r.best]
        # ties (common on small validation sets) go to the lower validation loss
        return sorted(have, key=lambda r: (sign * r.best[key], r.best.get("val_loss", math.inf)))


TRAIN_CHECKPOINT = "checkpoint_path"   # ray.tune.integration.ray_train.TuneReportCallback's key
_TUNE_KEYS = {TRAIN_CHECKPOINT, "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "reported_at",
              "done", "trial_id", "date", "pid", "hostname", "node_ip", "time_since_restore",
              "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint", "epoch",
              "diverged", "global_batch", "experiment_tag", "config"}


def _error_text(trial) -> str:
    """The trial's exception as 'Type: message' (last line), with Ray's traceback before it.
    Tune writes it beside the trial's local staging folder before this hook runs."""
    path = getattr(trial, "pickled_error_file", None)
    if path and os.path.exists(path):
        try:
            import ray.cloudpickle as cloudpickle
            with open(path, "rb") as fh:
                exc = cloudpickle.load(fh)
            cause = getattr(exc, "cause", None) or exc
            return f"{exc}\n{type(cause).__name__}: {cause}"
        except Exception:
            pass
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        with open(path, errors="replace") as fh:
            return fh.read()
    return "trial raised an error (see Ray's logs)"
