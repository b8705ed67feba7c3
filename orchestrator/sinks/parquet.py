"""The Parquet sink: epoch rows as part files under ``epochs/``, flushed at most a second after
they arrive and before each checkpoint, and ``trials.parquet``, one row per trial, rewritten
whole and atomically (``Storage.write_table``). A crash loses at most the last second's rows."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List

import pyarrow as pa

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import schema
from tunesmith.orchestrator.ledger import plain, utc
from tunesmith.orchestrator.sinks import Sink


def hp_array(values: List[Any]) -> pa.Array:
    """One typed column per hyperparameter: int, float, bool, else string."""
    vals = [plain(v) for v in values]
    present = [v for v in vals if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(vals, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(vals, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    return pa.array([None if v is None else str(v) for v in vals], pa.string())


def trials_table(ledger) -> pa.Table:
    recs = list(ledger.trials.values())
    cols: Dict[str, pa.Array] = {
        "schema_version": pa.array([schema.SCHEMA_VERSION] * len(recs), pa.int16()),
        "sweep": pa.array([ledger.sweep] * len(recs), pa.string()),
        "trial_id": pa.array([r.trial_id for r in recs], pa.string()),
        "status": pa.array([r.status for r in recs], pa.string()),
        "stop_reason": pa.array([r.stop_reason for r in recs], pa.string()),
        "epochs": pa.array([r.epochs for r in recs], pa.int32()),
        "wall_seconds": pa.array([(r.ended_at or time.time()) - r.started_at for r in recs], pa.float64()),
        "started_at": pa.array([utc(r.started_at) for r in recs], pa.timestamp("ms", tz="UTC")),
        "ended_at": pa.array([utc(r.ended_at) for r in recs], pa.timestamp("ms", tz="UTC")),
        "node_ip": pa.array([r.node_ip for r in recs], pa.string()),
        "device": pa.array([r.device for r in recs], pa.string()),
        "global_batch": pa.array([r.global_batch for r in recs], pa.int64()),
        "config": pa.array([json.dumps(r.config, sort_keys=True, default=str) for r in recs], pa.string()),
    }
    for m in schema.SUMMARY_METRICS:
        cols[f"best_{m}"] = pa.array([r.best.get(m) for r in recs], pa.float64())
    for m in schema.CORE_METRICS:
        cols[f"last_{m}"] = pa.array([r.last.get(m) for r in recs], pa.float64())
    for key in ledger.hp_keys:
        cols[schema.hp_column(key)] = hp_array([r.hparams.get(key) for r in recs])
    cols["retries"] = pa.array([r.retries for r in recs], pa.int32())
    cols["checkpoint"] = pa.array([r.checkpoint for r in recs], pa.string())
    cols["phase"] = pa.array([r.phase for r in recs], pa.string())
    cols["confirms"] = pa.array([r.of for r in recs], pa.string())
    cols["seed"] = pa.array([r.seed for r in recs], pa.int64())
    for m in schema.TEST_METRICS:
        cols[m] = pa.array([r.test.get(m) for r in recs], pa.float64())
    cols["error"] = pa.array([r.error or None for r in recs], pa.string())
    return pa.table(cols)


class ParquetSink(Sink):
    def __init__(self, storage: Storage, sweep: str):
        self.storage, self.sweep = storage, sweep
        self._rows: List[dict] = []
        self._part = 0
        self._token = uuid.uuid4().hex[:6]   # part names stay unique across resumed runs
        self.trials_seconds = 0.0            # how long the last trials.parquet rewrite took
        storage.makedirs(sweep, "epochs")

    def epoch(self, rec, row, extra, result) -> None:
        self._rows.append({**row, "extra": list(extra.items())})

    def rows_due(self) -> None:
        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=schema.EPOCH_SCHEMA)
            self.storage.write_table(f"{self.sweep}/epochs/part-{self._token}-{self._part:05d}.parquet", table)
            self._part += 1
            self._rows = []

    def flush(self, ledger, trials_due: bool) -> None:
        self.rows_due()
        if trials_due:
            began = time.perf_counter()
            self.storage.write_table(f"{self.sweep}/trials.parquet", trials_table(ledger))
            self.trials_seconds = time.perf_counter() - began

    def reopen(self) -> None:
        self._token = uuid.uuid4().hex[:6]

    def relocate(self, storage: Storage) -> None:
        self.storage = storage

    @property
    def pending(self) -> List[dict]:
        """The epoch rows not written yet."""
        return self._rows

    def load(self, ledger, unwritten=()) -> int:
        """The ledger as the files on disk hold it (a resume), with ``unwritten``: epoch rows a
        failed storage refused, those the files lack queued to be written. Returns how many."""
        import pyarrow.dataset as pds
        if not self.storage.exists(self.sweep, "trials.parquet"):
            return 0
        trials = self.storage.read_table(f"{self.sweep}/trials.parquet").to_pylist()
        rows: List[dict] = []
        if self.storage.exists(self.sweep, "epochs"):
            fs, path = self.storage.fs, self.storage.path(self.sweep, "epochs")
            files = list(pds.dataset(path, filesystem=fs, format="parquet").files)
            self._part = len(files)
            columns = list(dict.fromkeys(["trial_id", "epoch", "timestamp", "time_total_s", "node_ip", "device",
                                          ledger.metric, *schema.CORE_METRICS, "extra"]))
            rows = pds.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns).to_pylist()
        have = {(r["trial_id"], r["epoch"]) for r in rows}
        queued = [r for r in unwritten if (r["trial_id"], r["epoch"]) not in have]
        self._rows.extend(queued)
        ledger.load(trials, rows + queued, lambda row: json.loads(row["config"] or "{}"))
        return len(queued)
