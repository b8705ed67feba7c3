"""The sweep's Tune callback: Tune's hooks, in the driver, turned into the ledger's changes
(ledger.py), handed to the sinks (sinks/: Parquet, TensorBoard, MLflow) and to checkpoint
retention (retention.py). It decides when to flush: epoch rows at most ``flush_seconds`` after
they arrive, before each checkpoint and when a trial ends; trials.parquet at once when a status
changes, else at most every TRIALS_EVERY seconds."""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Dict, List, Optional

from tunesmith.cluster.storage import Storage, refused
from tunesmith.orchestrator.ledger import Ledger, TrialRecord
from tunesmith.orchestrator.retention import Retention
from tunesmith.orchestrator.sinks import transient_state
from tunesmith.orchestrator.tune_parts import forget_metric_history

try:
    from pyarrow import ArrowException as ArrowError
except ImportError:  # pragma: no cover - pyarrow is a dependency
    ArrowError = OSError

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - Ray is a dependency; this keeps the module importable
    Callback = object

ENDED = ("pruned", "completed", "diverged")   # what the files record as over: never continued by a resume
TRIALS_EVERY = 5.0   # seconds between trials.parquet rewrites that only update running trials' metrics
TRIALS_SHARE = 0.02  # a large sweep's trials.parquet is rewritten no oftener than this share of the time
                     # (a rewrite of 10,000 rows takes about 0.24 s: every 12 s, not every second)
RETRY_WAITS = (0.5, 1.0, 2.0)   # a failed write is tried again after these pauses, then the sweep stops


def _timed(hook):
    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.busy_seconds += time.perf_counter() - began
    return wrapper


class LedgerCallback(Callback):
    """``write=False`` keeps the records in memory only (bench/writer_cost.py); ``sinks``
    (default: Parquet, then TensorBoard) are called in order."""
    TRANSIENT = {"stopper": lambda: None, "awaiting_restore": lambda: False}   # a resumed sweep has its own

    def __init__(self, storage: Storage, sweep: str, hp_keys: List[str], hp_domains: Dict[str, list],
                 epochs: int, metric: str, mode: str, flush_seconds: float = 1.0,
                 pruned: Optional[Dict[str, str]] = None, tensorboard: bool = True, write: bool = True,
                 stopper=None, keep_checkpoints: str = "best", scheduler=None, sinks=None,
                 seed: Optional[int] = None):
        from tunesmith.orchestrator.sinks.parquet import ParquetSink
        from tunesmith.orchestrator.sinks.tensorboard import TensorBoardSink
        self.storage, self.sweep = storage, sweep
        self.ledger = Ledger(sweep, hp_keys, epochs, metric, mode, pruned, seed=seed)
        self.parquet = ParquetSink(storage, sweep) if write else None
        default = [self.parquet] + ([TensorBoardSink(storage, sweep, hp_domains, metric)] if tensorboard else [])
        self.sinks = (default if write else []) + list(sinks or [])
        self.retention = Retention(keep_checkpoints, storage.fs)
        self.stopper = stopper           # stopper.SweepStopper: Ctrl-C and the time budget
        self.scheduler = scheduler       # its rungs are rebuilt from disk on resume (ray#30838)
        self.flush_seconds = flush_seconds
        self.busy_seconds = 0.0
        self._last_flush = time.monotonic()
        self._dirty = self._status_changed = False
        self._trials_written = 0.0
        self._closed = self._closing = False
        self._reconcile = False          # set on resume: Tune's ended trials checked once
        self.failure: Optional[str] = None   # the storage error that stopped the sweep, once writes failed for good
        self.unreadable: Dict[str, str] = {}   # file -> why: images streaming trials skipped
        self.hold_open = False           # a confirmation phase follows: the search's end closes nothing

    def __getstate__(self):
        return transient_state(self, self.TRANSIENT)

    # --- what the rest of tunesmith reads ----------------------------------------------------
    @property
    def trials(self) -> Dict[str, TrialRecord]:
        return self.ledger.trials

    @property
    def start_up(self) -> Optional[float]:
        return self.ledger.start_up

    @start_up.setter
    def start_up(self, value: Optional[float]) -> None:
        self.ledger.start_up = value

    def ranked(self) -> List[TrialRecord]:
        return self.ledger.ranked()

    def status_counts(self) -> Dict[str, int]:
        return self.ledger.status_counts()

    def _interrupted(self) -> bool:
        return self.stopper is not None and self.stopper.event.is_set() and self.stopper.failure is None

    def _out_of_time(self) -> bool:
        return self.stopper is not None and self.stopper.out_of_time()

    def _each(self, hook: str, *args) -> None:
        for sink in self.sinks:
            getattr(sink, hook)(*args)

    # --- Tune's hooks (each timed: busy_seconds is the writers' own cost in the driver) -------
    @_timed
    def on_trial_start(self, iteration, trials, trial, **info):
        self.start(trial.trial_id, dict(trial.config))

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.record(trial.trial_id, result, config=trial.config)
        if result.get("unreadable"):   # images a streaming trial's decoders skipped
            self.unreadable.update((f, why) for f, why in result["unreadable"])
        self.maybe_flush()

    # A trial's end is written with the next flush, within flush_seconds: writing two Parquet
    # files per trial was most of the per-trial overhead of short trials (bench/overhead.py).
    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id)
        self._retain(trial)
        forget_metric_history(trial, self.ledger.metric)
        self.maybe_flush()

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_text(trial)
        self.finish(trial.trial_id, error=error)
        self._retain(trial)
        self._refused(trial.trial_id, error)
        self.maybe_flush()

    @_timed
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Tune's next experiment snapshot will name this checkpoint, and a resume restarts the
        trial from it: the epochs it covers go to disk before that snapshot is saved (get_state),
        batched with the others rather than as one part file per checkpoint."""

    @_timed
    def on_trial_recover(self, iteration, trials, trial, **info):
        """A lost worker or node: Tune restarts the trial from its last checkpoint, elsewhere."""
        rec, error = self.ledger.trials.get(trial.trial_id), error_text(trial)
        if rec is not None:
            self.ledger.retried(rec, error)
            self._dirty = self._status_changed = True
        self._refused(trial.trial_id, error)

    def _refused(self, trial_id: str, error: str) -> None:
        """A trial whose checkpoint the storage refused (a full disk): its retries would meet
        the same, so the sweep stops as when the ledger's own writes fail."""
        why = refused(error)
        if why and self.failure is None:
            self._fail(f"{trial_id}'s checkpoint: {why}")

    def _fail(self, why: str) -> None:
        """The sweep cannot go on: every trial is stopped through the stopper, and nothing more
        is written."""
        self.failure = f"results could not be written to {self.storage.uri(self.sweep)}: {why}"
        if self.stopper is not None:
            self.stopper.fail(self.failure)

    def on_step_begin(self, iteration, trials, **info):
        if getattr(self, "awaiting_restore", False):   # set_state was not called: Tune's restore failed
            self.failure, self._closed = "Tune could not restore the sweep's state", True   # writes nothing
            raise RestoreFailed("Tune could not restore the sweep's state (its error is above); it would have "
                                "started the sweep afresh over the recorded trials; nothing ran and nothing was written")

    @_timed
    def on_step_end(self, iteration, trials, **info):
        if self._reconcile:
            self.reconcile(trials)
        self.maybe_flush()

    @_timed
    def on_experiment_end(self, trials, **info):
        if getattr(self, "hold_open", False):   # the same ledger and sinks write the confirmation next
            self.retention.sweep_ended()
            self._dirty = self._status_changed = True
            self.flush()
            return
        self.close()

    def mark_changed(self) -> None:
        """A record changed outside Tune's hooks: trials.parquet is rewritten at the next flush."""
        self._dirty = self._status_changed = True
        self.flush()

    def _retain(self, trial) -> None:
        rec = self.ledger.trials.get(trial.trial_id)
        if rec is not None and self.retention.trial_ended(rec, getattr(trial, "checkpoint", None), self.ledger):
            self._dirty = self._status_changed = True

    # --- resume: Tune restores this callback from tuner.pkl; the files on disk are the truth ---
    def get_state(self) -> Optional[Dict]:
        """Called at each of Tune's experiment snapshots, before it is saved: the epoch rows its
        checkpoints cover go to disk first (a killed driver would lose them otherwise)."""
        self._write("rows_due")
        self.retention.snapshot_saved()
        state = {"sweep": self.sweep}   # non-empty, so that Tune calls set_state on restore
        if self.failure is not None and self.parquet is not None and self.parquet.pending:
            # rows the failed storage refused, though checkpoints after them were saved: they
            # ride in Tune's state (its driver's copy is whole) for the resume to write
            state["unwritten"] = list(self.parquet.pending)
        return state

    def set_state(self, state: Dict) -> None:
        # the resumed run's trials start anew: its start-up is measured again, from now (from the
        # first run's opening, a resume's hold counted the pause as start-up: 30 s for 5)
        self.ledger.opened_at, self.ledger.start_up = time.time(), None
        self.awaiting_restore = False
        self.reload(unwritten=state.get("unwritten") or ())

    def relocate(self, storage: Storage) -> None:
        """A resumed sweep's folder may have moved or been copied since Tune pickled this
        callback: everything is read from and written to the folder ``resume`` was given."""
        self.storage = storage
        self.retention.filesystem = storage.fs
        for sink in self.sinks:
            if hasattr(sink, "relocate"):
                sink.relocate(storage)

    def reload(self, reconcile: bool = True, unwritten=()) -> None:
        """Rebuild every trial's record from trials.parquet and epochs/, so a resumed sweep keeps
        the rows its killed driver wrote, adds none twice, and ASHA's rungs start from them.
        ``reconcile``: square them with Tune's restored trials at the next step; ``unwritten``:
        epoch rows a failed storage refused, written now."""
        self._closed = self._closing = False
        self._reconcile = reconcile
        self.unreadable = getattr(self, "unreadable", {})   # a callback pickled before it had one
        self._each("reopen")
        if self.parquet is None:
            return
        if self.parquet.load(self.ledger, unwritten):
            self._dirty = True
        for rec in self.ledger.trials.values():
            self.retention.kept(rec)
        if any(not rec.config for rec in self.ledger.trials.values()):
            self._dirty = self._status_changed = True
        if hasattr(self.scheduler, "restore_rungs"):
            self.scheduler.restore_rungs({tid: r.curve for tid, r in self.ledger.trials.items()})
        if hasattr(self.scheduler, "restore_ended"):
            self.scheduler.restore_ended({tid: r.stop_reason for tid, r in self.ledger.trials.items()
                                          if r.status in ENDED})

    def reconcile(self, trials) -> None:
        """After a resume, once: the ledger's verdict on each record against Tune's trials."""
        self._reconcile = False
        for rec, action, trial in self.ledger.reconcile(trials):
            if action == "config":
                self.ledger.fill_config(rec, dict(trial.config))
                self._dirty = self._status_changed = True
                self._each("trial_started", rec, True)   # the killed driver may not have flushed it
            elif action == "end":
                self.finish(rec.trial_id)
            elif action == "error":
                self.finish(rec.trial_id, error=error_text(trial) or "errored")
            elif action == "lost":
                self.ledger.mark_lost(rec)
                self._dirty = self._status_changed = True
                self._each("trial_ended", rec)

    # --- the ledger's changes, usable without Tune --------------------------------------------
    def start(self, trial_id: str, config: Dict[str, Any]) -> TrialRecord:
        rec, fresh = self.ledger.start(trial_id, config)
        if fresh:
            self._dirty = self._status_changed = True
        self._each("trial_started", rec, fresh)
        return rec

    def record(self, trial_id: str, result: Dict[str, Any], config: Optional[Dict[str, Any]] = None) -> None:
        rec = self.ledger.trials.get(trial_id) or self.start(trial_id, dict(config or {}))
        taken = self.ledger.record(rec, result)
        if taken is None:
            return
        row, extra = taken
        self._dirty = True
        self._each("epoch", rec, row, extra, result)

    def finish(self, trial_id: str, error: str = "", status: Optional[str] = None) -> None:
        rec = self.ledger.trials.get(trial_id) or self.start(trial_id, {})
        self.ledger.finish(rec, error, status, self._interrupted(), self._out_of_time())
        self._dirty = self._status_changed = True
        self._each("trial_ended", rec)

    def set_time(self, trial_id: str, field: str, at: float) -> None:
        """A trial's ``started_at`` or ``ended_at``, where it ran outside Tune (smith's pilot)."""
        rec = self.ledger.trials.get(trial_id)
        if rec is not None and field in ("started_at", "ended_at"):
            setattr(rec, field, at)
            self._dirty = self._status_changed = True

    def maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        since = now - self._trials_written
        cost = self.parquet.trials_seconds / TRIALS_SHARE if self.parquet is not None else 0.0
        due = self._dirty and (self._closing or (self._status_changed and since >= cost)
                               or since >= max(TRIALS_EVERY, cost))
        if not self._write("flush", self.ledger, due):
            return
        if due:
            self._dirty = self._status_changed = False
            self._trials_written = now
        if not self.sinks:
            self._dirty = False
        self._last_flush = time.monotonic()

    def close(self, unfinished_reason: str = "sweep ended") -> None:
        if self._closed:
            return
        self._closing = True
        interrupted = self._interrupted()
        if interrupted:
            unfinished_reason = "sweep interrupted"
        elif self.failure is not None:
            unfinished_reason = "sweep stopped: its results could not be written"
        reason = unfinished_reason
        if not interrupted and self._out_of_time():
            reason = None   # each says how far it got
        stopped = self.ledger.stop_running(reason or "")
        for rec in stopped:
            if reason is None:
                rec.stop_reason = self.ledger.out_of_time_reason(rec)
        if stopped:
            self._dirty = True
        self.flush()
        self.retention.sweep_ended()
        self._write("close", self.ledger, stopped, interrupted, retry=False)
        self._closed = True

    def _write(self, hook: str, *args, retry: bool = True) -> bool:
        """The sinks' writes, tried again after RETRY_WAITS when storage fails (a full disk, an
        object store's 5xx). If it keeps failing, the sweep stops: every trial is stopped through
        the stopper, ``failure`` names the error, and nothing more is written (each file was
        written whole or not at all, so what is on disk stays readable). Returns whether it
        wrote."""
        if self.failure is not None:
            return False
        for wait in (*(RETRY_WAITS if retry else ()), None):
            try:
                self._each(hook, *args)
                return True
            except (OSError, ArrowError) as exc:
                if wait is None:
                    self._fail((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
                    return False
                time.sleep(wait)
        return False


class RestoreFailed(RuntimeError):
    """`tunesmith resume`: Tune's restore failed, and its loop was about to start afresh."""


def error_text(trial) -> str:
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
