"""The sweep's ledger: every trial's record and the rules that govern it (its status and why it
stopped, its best values, the ranking), kept in the driver as Tune reports. Pure: no Ray and no
files. The Tune adapter (callback.py) feeds it and hands each change to the sinks (sinks/), and a
resume rebuilds it from the Parquet files (``load``) and squares it with Tune's state
(``reconcile``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tunesmith.orchestrator import schema
from tunesmith.orchestrator.pilot import TRIAL_ID as PILOT_ID
from tunesmith.trainables.config import unpack

TRAIN_CHECKPOINT = "checkpoint_path"   # ray.tune.integration.ray_train.TuneReportCallback's key
# Tune's and the trainables' bookkeeping: not metrics, kept out of a row's extras and MLflow's metrics
TUNE_KEYS = frozenset({TRAIN_CHECKPOINT, "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
                       "reported_at", "done", "trial_id", "date", "pid", "hostname", "node_ip", "time_since_restore",
                       "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint", "epoch",
                       "diverged", "global_batch", "experiment_tag", "config"})


def num(value: Any) -> Optional[float]:
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


def plain(value: Any) -> Any:
    """numpy scalars (from search algorithms) as Python values, for Parquet, JSON and HParams."""
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


def report_time(result: dict) -> float:
    """When the trial reported the epoch, on its own clock, to the ms. The trainables stamp it as
    ``reported_at``: Tune's ``timestamp`` is whole seconds, which several short epochs share."""
    return float(result.get("reported_at") or result.get("timestamp") or time.time())


def utc(seconds: Optional[float]) -> Optional[datetime]:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def rank_key(value: float, val_loss: Optional[float], mode: str) -> Tuple[float, float]:
    """The one ranking rule (the sweep's table, smith, the checkpoint kept, `analyze`): the best
    metric first; ties, common on small validation sets, go to the lower validation loss."""
    loss = val_loss if val_loss is not None and val_loss == val_loss else math.inf
    return (-value if mode == "max" else value), loss


WHOLE = "trained all"       # a completed trial's stop reason where it trained its whole, unfitted schedule
HOLD_START_S = 5.0        # Tune's set-up and a trial's worker start before a later run's first epoch,
                          # until the sweep's own start-up is measured
HOLD_WIND_DOWN_S = 1.5    # the sweep stopping its trials and writing its results
HOLD_MARGIN = 1.2         # epochs vary; a fitted schedule that overruns loses its end


def hold_for_epochs(ledger, epochs: float) -> float:
    """Seconds to keep from a time budget for ``epochs`` more epochs after this sweep (smith's
    stage 3, a confirmation): the sweep's own start-up (Tune's set-up, the trial's worker, the
    data: from its start to its first report, less that epoch), then the epochs at the median
    pace of its trials so far (an epoch's whole cost, its report and checkpoint included; the
    training and validation time alone where no trial has a second epoch yet), with a margin,
    after the sweep's wind-down."""
    pace, start = pace_of(ledger)
    return hold_at_pace(epochs, pace, start) if pace else 0.0


def pace_of(ledger) -> Tuple[Optional[float], float]:
    """The sweep's seconds per epoch (None where nothing is measured) and its start-up, as
    ``hold_for_epochs`` reads them."""
    import statistics
    start = HOLD_START_S if ledger.start_up is None else ledger.start_up
    tuned = [r for r in ledger.trials.values() if r.trial_id != PILOT_ID]
    paces = [r.pace for r in tuned if r.pace]
    if paces:
        return statistics.median(paces), start
    # thin evidence: the slowest epoch seen, the pilot's (in the driver, without Tune's per-epoch
    # report and checkpoint, which a Tune trial pays) among them; a median of the pilot's pace
    # alone left a loaded machine's stage 3 a third of its epochs
    seen = [r.pace for r in ledger.trials.values() if r.pace] + \
        [r.last["epoch_seconds"] for r in ledger.trials.values() if r.last.get("epoch_seconds")]
    return (max(seen) if seen else None), start


def hold_at_pace(epochs: float, pace: float, start: float = HOLD_START_S) -> float:
    """Seconds to keep for ``epochs`` more epochs at ``pace`` seconds each, after a start-up of
    ``start`` and the sweep's wind-down, with the margin."""
    return HOLD_MARGIN * (epochs * pace + start) + HOLD_WIND_DOWN_S


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
    losses: Dict[int, float] = field(default_factory=dict)  # val_loss by epoch (confirm.rank_by late_val_loss)
    retries: int = 0                  # restarts from a checkpoint after a lost worker or node
    checkpoint: Optional[str] = None  # the kept checkpoint (the best trial's final one)
    written: set = field(default_factory=set)   # epochs already in epochs/: a replay is not a new row
    train_checkpoint: Optional[str] = None       # a data-parallel trial's latest (Ray Train's)
    schedule_epochs: Optional[int] = None        # where its schedule ends, once fitted to the time budget
    pace: Optional[float] = None   # seconds between its last two reports: an epoch's whole cost, report included
    phase: str = "search"          # or "confirm": a finalist's settings trained again with a new seed
    of: Optional[str] = None       # a confirmation trial's finalist (its search trial)
    seed: Optional[int] = None
    test: Dict[str, float] = field(default_factory=dict)   # test_acc, test_loss: a confirmation's final model

    def best_epoch(self, mode: str) -> Optional[int]:
        if not self.curve:
            return None
        return max(self.curve, key=lambda e: self.curve[e] if mode == "max" else -self.curve[e])

    def take_row(self, row: Dict[str, Any], metric: str) -> None:
        """An epoch row into the record: written epochs, count, curve, last and best values.
        The same for a report as it arrives and for a row read back by a resume."""
        epoch = row["epoch"]
        self.written.add(epoch)
        self.epochs = max(self.epochs, epoch)
        if row.get(metric) is not None:
            self.curve[epoch] = row[metric]
        if row.get("val_loss") is not None:
            self.losses[epoch] = row["val_loss"]
        for m in schema.CORE_METRICS:
            v = row.get(m)
            if v is None:
                continue
            self.last[m] = v
            if m in schema.SUMMARY_METRICS:
                better = min if m in schema.LOWER_IS_BETTER else max
                self.best[m] = better(self.best.get(m, v), v)


class Ledger:
    """The trials of one sweep and their rules. ``pruned`` is the scheduler's record of whom it
    pruned and why (RecordingASHA.pruned), shared by reference."""

    def __init__(self, sweep: str, hp_keys: List[str], epochs: int, metric: str, mode: str,
                 pruned: Optional[Dict[str, str]] = None, seed: Optional[int] = None):
        """``seed``: the spec's, every search trial's unless the search draws it."""
        self.sweep, self.hp_keys, self.seed = sweep, list(hp_keys), seed
        self.epochs, self.metric, self.mode = epochs, metric, mode
        self.pruned = pruned if pruned is not None else {}
        self.trials: Dict[str, TrialRecord] = {}
        self.opened_at = time.time()   # with Tune's set-up about to begin
        self.start_up: Optional[float] = None   # seconds to the first report, less its epoch's own time
        self.lost: set = set()         # trials known from epoch rows alone that Tune's state lacks

    # --- a trial's life ----------------------------------------------------------------------
    def start(self, trial_id: str, config: Dict[str, Any]) -> Tuple[TrialRecord, bool]:
        """(its record, whether its session starts now: a new trial, or one known from its epoch
        rows alone whose config Tune now gives)."""
        rec = self.trials.get(trial_id)
        fresh = False
        if rec is not None and not rec.config and config:
            self.fill_config(rec, config)
            fresh = True
        if rec is not None and trial_id in self.lost:
            # Tune's restored random or grid search makes the same trial again, under the same id
            # and config and with the same seed: its epochs match the rows kept, and run on
            self.lost.discard(trial_id)
            rec.status, rec.stop_reason, rec.ended_at = "running", "", None
        if rec is None:
            rec = TrialRecord(trial_id, {}, {}, time.time())
            self.fill_config(rec, config)
            self.trials[trial_id] = rec
            fresh = True
        return rec, fresh

    def fill_config(self, rec: TrialRecord, config: Dict[str, Any]) -> None:
        flat, rec.of = unpack(config)
        rec.phase = "confirm" if rec.of else "search"
        rec.hparams = {k: plain(flat.get(k)) for k in self.hp_keys}
        rec.config = {k: plain(v) for k, v in flat.items()}
        rec.seed = flat.get("seed", self.seed)

    def record(self, rec: TrialRecord, result: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, float]]]:
        """One report: (its epoch row, its extra metrics), or None for a replay (Tune replays the
        reports made since a retried trial's last checkpoint)."""
        epoch = int(result.get("training_iteration") or result.get("epoch") or rec.epochs + 1)
        if epoch in rec.written:
            return None
        if rec.status != "running" and rec.status != "diverged":
            rec.status = "running"   # a resumed trial runs again
        if result.get(TRAIN_CHECKPOINT):
            rec.train_checkpoint = str(result[TRAIN_CHECKPOINT])
        rec.node_ip = result.get("node_ip", rec.node_ip)
        rec.device = result.get("device", rec.device)
        rec.global_batch = result.get("global_batch", rec.global_batch)
        if result.get("schedule_epochs"):
            rec.schedule_epochs = int(result["schedule_epochs"])
        if epoch > 1 and num(result.get("time_this_iter_s")):   # the first also holds the trial's start
            rec.pace = float(result["time_this_iter_s"])
        if self.start_up is None and rec.trial_id != PILOT_ID and num(result.get("epoch_seconds")):
            # Tune's start-up: smith's pilot trains in the driver from before the sweep opens
            self.start_up = max(0.0, time.time() - self.opened_at - float(result["epoch_seconds"]))
        row = {"schema_version": schema.SCHEMA_VERSION, "sweep": self.sweep, "trial_id": rec.trial_id,
               "epoch": epoch, "timestamp": utc(report_time(result)),
               "time_total_s": num(result.get("time_total_s")),
               "diverged": bool(result.get("diverged", False)), "node_ip": rec.node_ip, "device": rec.device}
        for m in schema.CORE_METRICS:
            row[m] = num(result.get(m))
        rec.test.update((m, num(result[m])) for m in schema.TEST_METRICS if num(result.get(m)) is not None)
        extra = {}
        for k, v in result.items():
            if k in schema.CORE_METRICS or k in TUNE_KEYS or k in row:
                continue
            value = num(v)
            if value is not None:
                extra[k] = value
        rec.take_row(row, self.metric)
        if result.get("diverged"):
            rec.stop_reason = str(result.get("stop_reason", "diverged"))
            rec.status = "diverged"
        return row, extra

    def finish(self, rec: TrialRecord, error: str = "", status: Optional[str] = None,
               interrupted: bool = False, out_of_time: bool = False) -> None:
        """A trial's end, and why: the status rules. A record that already ended as pruned or
        completed (read back by a resume, whose restored trial is stopped again) keeps its end."""
        if not status and not error and rec.status in ("pruned", "completed") and rec.ended_at is not None:
            return
        rec.ended_at = time.time()
        if status:
            rec.status = status
        elif error:
            rec.status, rec.error = "errored", error
            rec.stop_reason = error.strip().splitlines()[-1][:500] if error.strip() else "errored"
        elif rec.status == "diverged":
            pass
        elif rec.trial_id in self.pruned:
            rec.status, rec.stop_reason = "pruned", self.pruned[rec.trial_id]
        elif rec.epochs >= self.epochs:
            rec.status, rec.stop_reason = "completed", f"{WHOLE} {self.epochs} epochs"
        elif rec.schedule_epochs and rec.epochs >= rec.schedule_epochs:
            rec.status, rec.stop_reason = "completed", (f"annealed in {rec.epochs} of {self.epochs} epochs: its "
                                                        "schedule was fitted to the time budget")
        elif interrupted:
            rec.status, rec.stop_reason = "stopped", "sweep interrupted"
        elif out_of_time:
            rec.status, rec.stop_reason = "stopped", self.out_of_time_reason(rec)
        else:
            rec.status, rec.stop_reason = "stopped", f"stopped after {rec.epochs} of {self.epochs} epochs"

    def out_of_time_reason(self, rec: TrialRecord) -> str:
        return f"time budget reached after {rec.epochs} of {self.epochs} epochs"

    def retried(self, rec: TrialRecord, error_text: str) -> None:
        rec.retries += 1
        text = error_text.strip()
        rec.stop_reason = f"retried from its checkpoint after: {text.splitlines()[-1][:300]}" if text \
            else "retried from its checkpoint"

    def stop_running(self, reason: str) -> List[TrialRecord]:
        """The sweep ended with these trials still running: each is stopped, with ``reason``."""
        stopped = [rec for rec in self.trials.values() if rec.status == "running"]
        for rec in stopped:
            rec.status, rec.stop_reason, rec.ended_at = "stopped", reason, time.time()
        return stopped

    # --- summaries ---------------------------------------------------------------------------
    def status_counts(self, among: Optional[Iterable[TrialRecord]] = None) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for rec in list(self.trials.values() if among is None else among):
            counts[rec.status] = counts.get(rec.status, 0) + 1
        return dict(sorted(counts.items()))

    def ranked(self) -> List[TrialRecord]:
        """The search's trials, best first (confirmation trials are judged by their seeds' mean,
        in orchestrator/confirm.py)."""
        key = self.metric
        have = [r for r in list(self.trials.values()) if key in r.best and r.phase == "search"]
        return sorted(have, key=self.rank_of)

    def top(self, k: int, among: Optional[Iterable[TrialRecord]] = None) -> List[TrialRecord]:
        """The search's k best, without sorting them all (a 10,000-trial sweep asks this at every
        trial's end and four times a second for its display)."""
        import heapq
        pool = list(self.trials.values()) if among is None else list(among)
        return heapq.nsmallest(k, (r for r in pool if self.metric in r.best and r.phase == "search"),
                               key=self.rank_of)

    def confirmations(self) -> List[TrialRecord]:
        return [r for r in list(self.trials.values()) if r.phase == "confirm"]

    def rank_of(self, rec: TrialRecord) -> Tuple[float, float]:
        return rank_key(rec.best[self.metric], rec.best.get("val_loss"), self.mode)

    # --- resume: the files on disk are the truth ---------------------------------------------
    def load(self, trial_rows: Iterable[Dict[str, Any]], epoch_rows: Iterable[Dict[str, Any]],
             config_of) -> None:
        """Rebuild every record from trials.parquet's rows and the epoch rows, so a resumed sweep
        keeps the rows its killed driver wrote and adds none twice. ``config_of(row)``: a
        trials.parquet row's config. trials.parquet is rewritten on status changes and every few
        seconds, the epoch rows before each checkpoint: where they disagree, the rows are newer (a
        trial whose last epoch was written just before the driver died must not read as stopped
        short, and one that started and checkpointed since the last trials.parquet must not be
        missing, or its epochs would be written again when Tune restores it)."""
        self.lost = set()
        for row in trial_rows:
            rec = TrialRecord(row["trial_id"], {}, {}, row["started_at"].timestamp() if row["started_at"] else time.time())
            self.fill_config(rec, config_of(row))
            if row.get("confirms"):
                rec.of, rec.phase = row["confirms"], "confirm"
            rec.seed = row["seed"] if row.get("seed") is not None else rec.seed
            rec.test = {m: row[m] for m in schema.TEST_METRICS if row.get(m) is not None}
            rec.status, rec.stop_reason, rec.epochs = row["status"], row["stop_reason"] or "", row["epochs"] or 0
            rec.ended_at = row["ended_at"].timestamp() if row["ended_at"] else None
            rec.node_ip, rec.device, rec.global_batch = row["node_ip"], row["device"], row["global_batch"]
            rec.retries, rec.checkpoint, rec.error = row.get("retries") or 0, row.get("checkpoint"), row["error"] or ""
            for m in schema.SUMMARY_METRICS:
                if row.get(f"best_{m}") is not None:
                    rec.best[m] = row[f"best_{m}"]
            for m in schema.CORE_METRICS:
                if row.get(f"last_{m}") is not None:
                    rec.last[m] = row[f"last_{m}"]
            self.trials[rec.trial_id] = rec
        for row in sorted(epoch_rows, key=lambda r: r["epoch"]):
            rec = self.trials.get(row["trial_id"]) or self._unlisted(row)
            if row["epoch"] not in rec.written:
                rec.take_row(row, self.metric)
            # a confirmation's test figure rides in its last epoch row's extra metrics too: the
            # driver may die after writing that row and before trials.parquet's next rewrite
            for k, v in row.get("extra") or ():
                if k in schema.TEST_METRICS and num(v) is not None:
                    rec.test.setdefault(k, v)

    def _unlisted(self, row: Dict[str, Any]) -> TrialRecord:
        """The record of a trial known from its epoch rows alone; its config comes from Tune."""
        started = row["timestamp"].timestamp() - (row["time_total_s"] or 0.0) if row["timestamp"] else time.time()
        rec = TrialRecord(row["trial_id"], {}, {}, started, node_ip=row["node_ip"], device=row["device"])
        self.trials[rec.trial_id] = rec
        return rec

    def reconcile(self, trials) -> List[Tuple[TrialRecord, str, Any]]:
        """After a resume, against Tune's restored trials: what to do with each record, as
        (record, "config" | "end" | "error" | "lost", Tune's trial or None). A trial that Tune's
        snapshot holds as ended while the files still say running (the driver died between the
        two writes) gets no second end from Tune: it ends from what its rows say. A trial known
        from its epoch rows alone takes its config from Tune; one that Tune's snapshot does not
        hold either will not run again."""
        actions = []
        known = {trial.trial_id for trial in trials}
        for trial in trials:
            rec = self.trials.get(trial.trial_id)
            if rec is not None and not rec.config and getattr(trial, "config", None):
                actions.append((rec, "config", trial))
            if rec is None or rec.status != "running":
                continue
            if trial.status == "TERMINATED":
                actions.append((rec, "end", trial))
            elif trial.status == "ERROR":
                actions.append((rec, "error", trial))
        for rec in self.trials.values():
            if rec.status == "running" and not rec.config and rec.trial_id not in known:
                actions.append((rec, "lost", None))
        return actions

    def mark_lost(self, rec: TrialRecord) -> None:
        self.finish(rec, status="stopped")
        self.lost.add(rec.trial_id)
        rec.stop_reason = (f"lost with the killed driver after {rec.epochs} of {self.epochs} epochs: "
                           "Tune's saved state did not hold it, so resume could not restart it")
