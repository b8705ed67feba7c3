"""One copy of a sweep's dataset per node: decoded once, put in Ray's object store, and read
zero-copy by every trial on every node (numpy arrays in the store are mapped, not copied).

The driver puts the copy it already holds (``smith``'s range test loaded one), or one it reads
itself where every node is its own; else a Ray task decodes the data where it runs, so that
nothing assumes that the data is on the driver's disk. An image folder is always decoded by the
task, beside the trials' start (it can take minutes, and the driver would hold a second copy).
An image folder that streams is not shared: each trial reads its batches from disk.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from tunesmith.trainables.config import DatasetConfig

_REFS: Dict[tuple, object] = {}   # per Ray connection: smith's stages share one copy
_SKIPPED: Dict[tuple, object] = {}   # and what the load left out, unreadable: [(file, why)]


def _load_arrays(cfg: DatasetConfig):
    """(the arrays, the files skipped as unreadable): two objects, so that the driver reads the
    short list without fetching the data. No arrays where the node found the folder over its
    memory budget: it streams, and each trial reads its own batches from disk."""
    from tunesmith.trainables import data as data_mod
    loaded = data_mod.load(cfg)
    if not isinstance(loaded, data_mod.ImageData):
        return None, []
    return loaded.arrays(), list(getattr(loaded, "skipped", ()))


def skipped(cfg: DatasetConfig, timeout: Optional[float] = None) -> Optional[list]:
    """The unreadable files the shared load left out, once it has ended (None while it runs,
    or where nothing was shared)."""
    import ray
    from tunesmith.trainables import data as data_mod
    ref = _SKIPPED.get((ray.get_runtime_context().get_job_id(), data_mod.source_key(cfg)))
    if ref is None:
        return None
    if isinstance(ref, list):
        return ref
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        return None
    except ray.exceptions.RayError:
        return None   # the load failed: the trials say why


def plan(cfg: DatasetConfig, local: bool) -> Tuple[bool, str]:
    """(shared in memory?, one line saying how and why) for the sweep's header. An image folder
    on this machine is listed now, so a set that cannot fit is refused before any trial."""
    if cfg.name != "imagefolder":
        return True, "in memory, shared: one copy per node through Ray's object store"
    if cfg.stream is True and not local:
        return False, "streaming from disk on each node (dataset.stream is true)"
    import os
    from tunesmith.orchestrator.tb_events import ready
    ready()
    if not local or not cfg.data_dir or not os.path.isdir(os.path.expanduser(cfg.data_dir)):
        # read where the trials run: that node decides, and a missing folder errors the trial
        return True, "in memory, shared (or streaming, if the node that reads it finds it over the budget)"
    from tunesmith.trainables import folder
    p = folder.scan(cfg)
    return (not p.streams), p.describe()


def _every_node_is_this_one() -> bool:
    """The trials run on the driver's machine and read its disk: a Ray this command started, or
    a one-node cluster it runs on. Not through Ray Client (ray://): that driver is off the cluster."""
    import ray
    from ray.util.client import ray as client
    if client.is_connected():
        return False
    me = ray.get_runtime_context().get_node_id()
    return all(n["NodeID"] == me for n in ray.nodes() if n["Alive"])


def _read_here(src: DatasetConfig):
    """The arrays read in the driver, which has torch imported already: a task's worker would
    start a process and import torch for it (2 to 3 s of CPU, beside the trials' own start).
    None where the read fails: the task then fails the same way, and the trials say why."""
    from tunesmith.trainables import data as data_mod
    try:
        return data_mod.read(src)
    except Exception:
        return None


def share(cfg: DatasetConfig, streams: bool = False) -> Optional[list]:
    """``[ObjectRef]`` of the arrays, or None when the data streams. Memoised per dataset."""
    if streams:
        return None
    import ray
    from tunesmith.orchestrator.tb_events import ready
    ready()   # torch is being imported in the background: import it from one thread at a time
    from tunesmith.trainables import data as data_mod
    src = data_mod.source_key(cfg)
    key = (ray.get_runtime_context().get_job_id(), src)   # a reference lives as long as its connection
    if key not in _REFS:
        held = data_mod.cached(src)
        if held is None and src.name != "imagefolder" and _every_node_is_this_one():
            held = _read_here(src)
        if isinstance(held, data_mod.ImageData):
            _REFS[key], _SKIPPED[key] = ray.put(held.arrays()), list(held.skipped)
        else:
            _REFS[key], _SKIPPED[key] = ray.remote(num_cpus=0, num_returns=2)(_load_arrays).options(
                name="tunesmith:load-data").remote(src)
    return [_REFS[key]]
