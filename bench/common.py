"""What the benchmarks share: a local Ray instance like the CLI's, and timing one sweep."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(num_cpus=2):
    """(cluster, results root): a local instance of ``num_cpus`` CPUs (None: all) bound to
    127.0.0.1, and a scratch folder."""
    from tunesmith.cluster.connect import connect
    cluster = connect(num_cpus=num_cpus)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    root = tempfile.mkdtemp(prefix="tunesmith-bench-")
    atexit.register(shutil.rmtree, root, True)   # a benchmark leaves nothing behind
    return cluster, root


def timed_sweep(raw_spec: dict, cluster, root: str, on_writer=None, **build_kwargs) -> float:
    """Wall seconds of one sweep through tunesmith's own Tuner assembly, writers closed;
    ``on_writer(writer)`` afterwards, to read what the writer measured of itself."""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator.sweep import build_tuner
    spec = spec_mod.from_dict({"results_dir": root, **raw_spec})
    tuner, writer, _ = build_tuner(spec, Storage(root), cluster, **build_kwargs)
    begin = time.perf_counter()
    tuner.fit()
    writer.close()
    elapsed = time.perf_counter() - begin
    if on_writer:
        on_writer(writer)
    return elapsed
