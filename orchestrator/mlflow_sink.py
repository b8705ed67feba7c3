"""MLflow as a second tracking sink, beside Parquet and TensorBoard, with the same hooks.

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

from tunesmith.trainables.config import ConfigError

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover
    Callback = object

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


def connect(uri: str, experiment: str):
    """(client, experiment id), or a one-line error naming the server when it does not answer."""
    MlflowClient = _import()
    import os
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # a dead server fails at once, not after minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as exc:   # noqa: BLE001 - MLflow raises many kinds for a dead server
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError("tracking.mlflow.uri", uri, f"the tracking server does not answer ({first})") from None
    return client, exp_id


class MLflowSink(Callback):
    def __init__(self, uri: str, experiment: str, writer, spec_dict: Dict[str, Any], manifest: Dict[str, Any]):
        self.uri, self.experiment, self.writer = uri, experiment, writer
        self.spec_dict, self.manifest = spec_dict, manifest
        self.client, self.exp_id = connect(uri, experiment)
        self.parent = self.client.create_run(self.exp_id, run_name=writer.sweep,
                                             tags={"tunesmith.sweep": writer.sweep}).info.run_id
        self.runs: Dict[str, str] = {}
        self.pending: Dict[str, List[Any]] = {}
        self.sent_at: Dict[str, float] = {}
        self.failed: Optional[str] = None
        self._guard(self._log_sweep)

    def __getstate__(self):   # tuner.pkl: the client's session does not pickle; a resume reconnects
        state = dict(self.__dict__)
        state["client"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.failed is None:
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

    # --- Tune hooks -------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard(self._start, trial)

    def _start(self, trial) -> None:
        if trial.trial_id in self.runs:
            return
        from mlflow.entities import Param
        rec = self.writer.trials.get(trial.trial_id)
        hps = rec.hparams if rec else dict(trial.config)
        run = self.client.create_run(self.exp_id, run_name=trial.trial_id,
                                     tags={"mlflow.parentRunId": self.parent, "tunesmith.sweep": self.writer.sweep,
                                           "tunesmith.trial_id": trial.trial_id, "status": "running"})
        self.runs[trial.trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, json.dumps(v) if not isinstance(v, str) else v)
                                                       for k, v in hps.items()])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(self._result, trial, result)

    def _result(self, trial, result) -> None:
        from mlflow.entities import Metric
        from tunesmith.orchestrator.results import _TUNE_KEYS, _num, report_time
        if trial.trial_id not in self.runs:
            self._start(trial)
        epoch = int(result.get("training_iteration") or 0)
        ts = int(report_time(result) * 1000)
        batch = self.pending.setdefault(trial.trial_id, [])
        for k, v in result.items():
            if k in _TUNE_KEYS or k in ("epoch", "done"):
                continue
            num = _num(v)
            if num is not None:
                batch.append(Metric(k, num, ts, epoch))
        if time.monotonic() - self.sent_at.get(trial.trial_id, 0.0) >= FLUSH_S:
            self._send(trial.trial_id)

    def _send(self, trial_id: str) -> None:
        batch = self.pending.pop(trial_id, [])
        self.sent_at[trial_id] = time.monotonic()
        for i in range(0, len(batch), 1000):   # MLflow's per-request limit
            self.client.log_batch(self.runs[trial_id], metrics=batch[i:i + 1000])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guard(self._end, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(self._end, trial.trial_id)

    def _end(self, trial_id: str) -> None:
        if trial_id not in self.runs:
            return
        self._send(trial_id)
        rec = self.writer.trials.get(trial_id)
        status = rec.status if rec else "completed"
        run_id = self.runs.pop(trial_id)
        self.client.set_tag(run_id, "status", status)
        self.client.set_tag(run_id, "stop_reason", (rec.stop_reason if rec else "")[:5000])
        self.client.set_terminated(run_id, STATUS.get(status, "FINISHED"))

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self, interrupted: bool = False) -> None:
        for trial_id in list(self.runs):   # trials still running when the sweep ended
            self._guard(self._end, trial_id)
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
