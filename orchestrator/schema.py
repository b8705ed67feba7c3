"""The results schema (version 1), shared by the writer and the readers.

Per sweep, under ``<results_dir>/<sweep>/``:
  spec.yaml          the resolved spec
  manifest.json      versions, git commit, seed, host, start and end time
  trials.parquet     one row per trial
  epochs/*.parquet   one dataset, one row per report
  tensorboard/<trial_id>/   event files: scalars, HParams, prediction grids
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# Metrics the trainer reports each epoch; all float64 and nullable (a diverged epoch has NaN).
CORE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum",
                "epoch_seconds", "samples_per_second", "step_ms", "gpu_mem_mb")
# Summaries kept per trial in trials.parquet: best and last of these.
SUMMARY_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
LOWER_IS_BETTER = {"train_loss", "val_loss"}
# Read once, by a confirmation trial's final model only (#28): in trials.parquet, and in that
# epoch row's extras.
TEST_METRICS = ("test_acc", "test_loss")
PHASES = ("search", "confirm")

STATUSES = ("running", "completed", "pruned", "diverged", "errored", "stopped")

EPOCH_SCHEMA = pa.schema(
    [("schema_version", pa.int16()), ("sweep", pa.string()), ("trial_id", pa.string()),
     ("epoch", pa.int32()), ("timestamp", pa.timestamp("ms", tz="UTC")), ("time_total_s", pa.float64())]
    + [(m, pa.float64()) for m in CORE_METRICS]
    + [("diverged", pa.bool_()), ("node_ip", pa.string()), ("device", pa.string()),
       ("extra", pa.map_(pa.string(), pa.float64()))]
)

TRIAL_FIXED = [
    ("schema_version", pa.int16()), ("sweep", pa.string()), ("trial_id", pa.string()),
    ("status", pa.string()), ("stop_reason", pa.string()), ("epochs", pa.int32()),
    ("wall_seconds", pa.float64()), ("started_at", pa.timestamp("ms", tz="UTC")),
    ("ended_at", pa.timestamp("ms", tz="UTC")), ("node_ip", pa.string()), ("device", pa.string()),
    ("global_batch", pa.int64()), ("config", pa.string()), ("retries", pa.int32()),
    ("checkpoint", pa.string()), ("phase", pa.string()), ("confirms", pa.string()), ("seed", pa.int64()),
    ("test_acc", pa.float64()), ("test_loss", pa.float64()),
]
TRIAL_METRIC_COLUMNS = ([(f"best_{m}", pa.float64()) for m in SUMMARY_METRICS]
                        + [(f"last_{m}", pa.float64()) for m in CORE_METRICS])


def hp_column(key: str) -> str:
    """``lr`` -> ``hp_lr``, ``model.width`` -> ``hp_model_width``: a plain SQL identifier."""
    return "hp_" + key.replace(".", "_")
