"""The MLflow sink, beside Parquet and TensorBoard, with the same hooks.

One parent run per sweep (the resolved spec and the manifest as artifacts), one nested run per
trial (every hyperparameter a param, every epoch metric with step = epoch, ``status`` and
``stop_reason`` as tags, and the run's status from them: diverged and errored trials FAILED,
pruned ones KILLED). Trials report through the driver, so this works wherever they run.

A tracking server that is down at the start is bad input (checked before the sweep). One that
fails mid-sweep never ends the sweep: the failure is reported once, the sink stops, and Parquet
and TensorBoard keep everything. Metrics are sent in batches, at most once a second per trial.
MLflow is an optional extra, imported only when a spec asks for it.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, List, Optional

from tunesmith.orchestrator.ledger import TUNE_KEYS, num, report_time
from tunesmith.orchestrator.sinks import Sink
from tunesmith.trainables.config import ConfigError

STATUS = {"completed": "FINISHED", "stopped": "KILLED", "pruned": "KILLED", "diverged": "FAILED",
          "errored": "FAILED"}
FLUSH_S = 1.0


def _import():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
        return MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow", "mlflow", "MLflow is not installed: pip install 'tunesmith[mlflow]'") \
            from None


def take_credentials(uri: str) -> str:
    """``http://USER:PASSWORD@host:5000`` -> ``http://host:5000``, with the two moved to this
    process's environment (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD), where MLflow reads
    them and where no pickled state or written file holds them."""
    import os
    import re
    from urllib.parse import unquote
    m = re.match(r"^(https?://)([^/@\s:]*):([^/@\s]*)@", uri)
    if not m:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(m[2]), unquote(m[3])
    return m[1] + uri[m.end():]


def connect(uri: str, experiment: str):
    """(client, experiment id), or a one-line error naming the server when it does not answer."""
    MlflowClient = _import()
    import os
    uri = take_credentials(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # a dead server fails at once, not after minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:   # the client opens a store at once (a file or database store), a server at the first call
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as exc:   # noqa: BLE001 - MLflow raises many kinds for a dead server
        text = str(exc).strip()
        if "MLFLOW_ALLOW_FILE_STORE" in text:   # MLflow 3 refuses its file store unless told otherwise
            raise ConfigError("tracking.mlflow.uri", uri, "MLflow refuses a file store now (maintenance mode): use a "
                              "database, e.g. sqlite:///PATH/mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true") from None
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        what = "the tracking server does not answer" if uri.startswith(("http://", "https://")) else \
            "MLflow cannot open this tracking store"
        raise ConfigError("tracking.mlflow.uri", uri, f"{what} ({first})") from None
    return client, exp_id


class MLflowSink(Sink):
    def __init__(self, uri: str, experiment: str, sweep: str, spec_dict: Dict[str, Any], manifest: Dict[str, Any]):
        self.uri, self.experiment, self.sweep = take_credentials(uri), experiment, sweep
        self.spec_dict, self.manifest = spec_dict, manifest
        self.client, self.exp_id = connect(uri, experiment)
        self.parent = self.client.create_run(self.exp_id, run_name=sweep,
                                             tags={"tunesmith.sweep": sweep}).info.run_id
        self.runs: Dict[str, str] = {}
        self.pending: Dict[str, List[Any]] = {}
        self.sent_at: Dict[str, float] = {}
        self.failed: Optional[str] = None
        self._guard(self._log_sweep)

    TRANSIENT = {"client": lambda: None}   # the client's session does not pickle; a resume reconnects

    def reopen(self) -> None:
        if self.failed is None and self.client is None:
            try:
                self.client, _ = connect(self.uri, self.experiment)
            except ConfigError as exc:
                self.failed = str(exc)

    # --- failures: reported once, never fatal -----------------------------------------------
    def _guard(self, fn, *args) -> None:
        if self.failed is not None or self.client is None:
            return
        try:
            fn(*args)
        except Exception as exc:   # noqa: BLE001
            self.failed = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            print(f"tunesmith: MLflow at {self.uri} failed ({self.failed}); the sweep goes on, and Parquet and "
                  "TensorBoard keep every result", file=sys.stderr, flush=True)

    def _log_sweep(self) -> None:
        self.client.log_dict(self.parent, self.spec_dict, "spec.json")
        self.client.log_dict(self.parent, self.manifest, "manifest.json")
        self.client.log_param(self.parent, "search.algorithm", self.spec_dict.get("search", {}).get("algorithm"))

    # --- the sink's hooks -------------------------------------------------------------------
    def trial_started(self, rec, fresh: bool) -> None:
        self._guard(self._start, rec)

    def _start(self, rec) -> None:
        if rec.trial_id in self.runs:
            return
        from mlflow.entities import Param
        run = self.client.create_run(self.exp_id, run_name=rec.trial_id,
                                     tags={"mlflow.parentRunId": self.parent, "tunesmith.sweep": self.sweep,
                                           "tunesmith.trial_id": rec.trial_id, "status": "running",
                                           "tunesmith.phase": rec.phase,
                                           **({"tunesmith.confirms": rec.of, "tunesmith.seed": str(rec.seed)}
                                              if rec.of else {})})
        self.runs[rec.trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, json.dumps(v) if not isinstance(v, str) else v)
                                                       for k, v in rec.hparams.items()])

    def epoch(self, rec, row, extra, result) -> None:
        self._guard(self._result, rec, result)

    def _result(self, rec, result) -> None:
        from mlflow.entities import Metric
        if rec.trial_id not in self.runs:
            self._start(rec)
        epoch = int(result.get("training_iteration") or 0)
        ts = int(report_time(result) * 1000)
        batch = self.pending.setdefault(rec.trial_id, [])
        for k, v in result.items():
            if k in TUNE_KEYS:
                continue
            value = num(v)
            if value is not None:
                batch.append(Metric(k, value, ts, epoch))
        if time.monotonic() - self.sent_at.get(rec.trial_id, 0.0) >= FLUSH_S:
            self._send(rec.trial_id)

    def _send(self, trial_id: str) -> None:
        batch = self.pending.pop(trial_id, [])
        self.sent_at[trial_id] = time.monotonic()
        for i in range(0, len(batch), 1000):   # MLflow's per-request limit
            self.client.log_batch(self.runs[trial_id], metrics=batch[i:i + 1000])

    def trial_ended(self, rec) -> None:
        self._guard(self._end, rec)

    def _end(self, rec) -> None:
        if rec.trial_id not in self.runs:
            return
        self._send(rec.trial_id)
        run_id = self.runs.pop(rec.trial_id)
        self.client.set_tag(run_id, "status", rec.status)
        self.client.set_tag(run_id, "stop_reason", rec.stop_reason[:5000])
        self.client.set_terminated(run_id, STATUS.get(rec.status, "FINISHED"))

    def close(self, ledger, stopped, interrupted: bool) -> None:
        for trial_id in list(self.runs):   # trials still running when the sweep ended
            rec = ledger.trials.get(trial_id)
            if rec is not None:
                self._guard(self._end, rec)
        self._guard(lambda: self.client.set_terminated(self.parent, "KILLED" if interrupted else "FINISHED"))

    # --- artifacts of smith, lr-find and analyze --------------------------------------------
    def log_artifact_bytes(self, name: str, data: bytes) -> None:
        self._guard(self._artifact, name, data)

    def _artifact(self, name: str, data: bytes) -> None:
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(name))
            with open(path, "wb") as fh:
                fh.write(data)
            self.client.log_artifact(self.parent, path, os.path.dirname(name) or None)


def log_files(uri: str, experiment: str, sweep: str, files: Dict[str, bytes]) -> None:
    """Attach files (smith's report, the range test's curve, analyze's plots) to the sweep's
    parent run, made here if the sweep has none yet (lr-find alone). Never fatal."""
    try:
        client, exp_id = connect(uri, experiment)
        runs = client.search_runs([exp_id], filter_string=f"tags.`tunesmith.sweep` = '{sweep}' "
                                                          "and tags.`mlflow.parentRunId` IS NULL", max_results=1)
        run_id = runs[0].info.run_id if runs else client.create_run(
            exp_id, run_name=sweep, tags={"tunesmith.sweep": sweep}).info.run_id
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                path = os.path.join(tmp, os.path.basename(name))
                with open(path, "wb") as fh:
                    fh.write(data)
                client.log_artifact(run_id, path, os.path.dirname(name) or None)
        if not runs:
            client.set_terminated(run_id, "FINISHED")
    except Exception as exc:   # noqa: BLE001
        print(f"tunesmith: MLflow at {uri} failed ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc}); "
              "the files stay in the results folder", file=sys.stderr, flush=True)
