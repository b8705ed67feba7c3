"""TensorBoard output written by the driver from reported results: scalars, HParams and
prediction grids. Ray's own TBX logger writes HParams only at a trial's end and drops NaN
scalars and numpy-typed hyperparameters (ray#4528); this writes HParams when a trial starts,
with a status when it ends, and converts values."""
from __future__ import annotations

import math
import os
import socket
import struct
import time
from typing import Any, Dict, Iterable, Optional

import numpy as np

from tunesmith.orchestrator.ledger import plain   # numpy scalars as Python values

HPARAMS_PLUGIN = "hparams"
_STATUS = {"running": "STATUS_RUNNING", "completed": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS",
           "stopped": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE", "errored": "STATUS_FAILURE"}


def _summary(tag: str, content):
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=HPARAMS_PLUGIN, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def experiment_summary(hparams: Dict[str, Iterable[Any]], metrics: Iterable[str]):
    """The HParams experiment: each hyperparameter with its type (and discrete values)."""
    from google.protobuf import struct_pb2
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    infos = []
    for name, values in hparams.items():
        values = [plain(v) for v in values]
        if values and all(isinstance(v, bool) for v in values):
            kind = "DATA_TYPE_BOOL"
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            kind = "DATA_TYPE_FLOAT64"
        else:
            kind = "DATA_TYPE_STRING"
        info = HParamInfo(name=name, type=DataType.Value(kind))
        if values and kind != "DATA_TYPE_FLOAT64":
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[
                struct_pb2.Value(bool_value=v) if kind == "DATA_TYPE_BOOL" else struct_pb2.Value(string_value=str(v))
                for v in values]))
        infos.append(info)
    exp = Experiment(hparam_infos=infos, metric_infos=[MetricInfo(name=MetricName(tag=m)) for m in metrics])
    return _summary("_hparams_/experiment", HParamsPluginData(experiment=exp, version=0))


def session_start(hparams: Dict[str, Any], group: Optional[str] = None):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionStartInfo
    ssi = SessionStartInfo(group_name=group or "")
    for k, v in hparams.items():
        v = plain(v)
        if v is None:
            continue
        if isinstance(v, bool):
            ssi.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            ssi.hparams[k].number_value = float(v)
        else:
            ssi.hparams[k].string_value = str(v)
    return _summary("_hparams_/session_start_info", HParamsPluginData(session_start_info=ssi, version=0))


def session_end(status: str):
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    sei = SessionEndInfo(status=Status.Value(_STATUS.get(status, "STATUS_UNKNOWN")))
    return _summary("_hparams_/session_end_info", HParamsPluginData(session_end_info=sei, version=0))


def prediction_grid(preview: dict, columns: int = 8) -> np.ndarray:
    """A CHW uint8 grid of validation images, each framed green when predicted right and red
    when wrong; the labels go into the image's text summary beside it."""
    images = np.asarray(preview["images"])
    n, c, h, w = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=1)
    scale = max(1, 32 // max(h, w))   # 8x8 digits are too small to see: scale them up
    images = images.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = h * scale, w * scale
    pad = 2
    rows = math.ceil(n / columns)
    grid = np.zeros((3, rows * (h + 2 * pad), columns * (w + 2 * pad)), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y0, x0 = r * (h + 2 * pad), col * (w + 2 * pad)
        right = preview["pred"][i] == preview["true"][i]
        grid[:, y0:y0 + h + 2 * pad, x0:x0 + w + 2 * pad] = np.array(
            [40, 200, 40] if right else [220, 40, 40], dtype=np.uint8).reshape(3, 1, 1)
        grid[:, y0 + pad:y0 + pad + h, x0 + pad:x0 + pad + w] = images[i]
    return grid


def prediction_caption(preview: dict, columns: int = 8) -> str:
    classes = preview["classes"]
    cells = [f"{classes[p]}{'' if p == t else ' (true ' + classes[t] + ')'}"
             for p, t in zip(preview["pred"], preview["true"])]
    rows = [" | ".join(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return "predicted (true when wrong), row by row:  \n" + "  \n".join(rows)


def preload() -> None:
    """Import tensorboardX (which imports torch: about 2 s) in a background thread, so that
    the import overlaps Ray's start-up instead of delaying the first result. This module
    imports no Ray: Ray reads its environment (loopback binding, token auth) once, at import,
    and cluster.connect sets it first."""
    import importlib
    import threading
    global _PRELOAD
    _PRELOAD = threading.Thread(target=importlib.import_module, args=("tensorboardX",), daemon=True)
    _PRELOAD.start()


_PRELOAD = None


def ready() -> None:
    """Wait for the background import: torch imported from two threads at once can fail with
    'partially initialized module' (seen in a job's driver)."""
    if _PRELOAD is not None:
        _PRELOAD.join()


class EventLog:
    """One trial's TensorBoard event file, written by the caller's thread.

    tensorboardX's SummaryWriter starts a writer thread per trial and fsyncs at every flush;
    for short trials that was most of the results writer's per-trial cost (bench/overhead.py).
    Here events wait in memory and are appended, in tensorboardX's record format, when the
    results writer flushes (about every second) and when the trial ends. The file is made at the
    first flush, so a trial that never reports leaves no empty file behind. A flush hands the
    bytes to the OS, where TensorBoard reads them at once, without an fsync: tensorboardX's
    EventsWriter made two per trial, 10% of the driver's time in a sweep of trivial trials
    (bench/scale.py), and the Parquet files, not the event files, are the sweep's record."""

    def __init__(self, logdir: str):
        from tensorboardX import summary
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import masked_crc32c
        self._summary, self._event = summary, event_pb2.Event   # imported once, not per scalar
        self._crc = masked_crc32c
        self.logdir = logdir
        self._events: list = []
        self._file = None

    def add_summary(self, summary, step: Optional[int] = None, walltime: Optional[float] = None) -> None:
        event = self._event(wall_time=time.time() if walltime is None else walltime, summary=summary)
        if step is not None:
            event.step = int(step)
        self._events.append(event)

    def add_scalar(self, tag: str, value: float, step: int, walltime: Optional[float] = None) -> None:
        self.add_summary(self._summary.scalar(tag, float(value)), step, walltime)

    def add_image(self, tag: str, chw: np.ndarray, step: int, walltime: Optional[float] = None) -> None:
        self.add_summary(self._summary.image(tag, chw, dataformats="CHW"), step, walltime)

    def add_text(self, tag: str, text: str, step: int, walltime: Optional[float] = None) -> None:
        self.add_summary(self._summary.text(tag, text), step, walltime)

    def flush(self) -> None:
        if not self._events:
            return
        if self._file is None:   # named as tensorboardX's EventsWriter names it, its version first
            os.makedirs(self.logdir, exist_ok=True)
            now = time.time()
            self._file = open(os.path.join(self.logdir, f"events.out.tfevents.{str(now)[:10]}."
                                                        f"{socket.gethostname()}"), "ab")
            self._events.insert(0, self._event(wall_time=now, file_version="brain.Event:2"))
        self._file.write(b"".join(map(self._record, self._events)))
        self._events = []
        self._file.flush()

    def _record(self, event) -> bytes:
        """One event in TensorFlow's record format: its length, the length's masked CRC-32C, the
        serialized event and its masked CRC-32C (tensorboardX's RecordWriter.write)."""
        data = event.SerializeToString()
        header = struct.pack("Q", len(data))
        return header + struct.pack("I", self._crc(header)) + data + struct.pack("I", self._crc(data))

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
