"""Does every node of the cluster reach the sweep's storage? Checked with a small task pinned to
each node, not guessed from the path's form: a shared filesystem mount is a plain path too.

Multi-node runs need storage that every node reaches (Ray stopped syncing to the head in 2.7).
Without this check, Ray fails on the first checkpoint upload from another node, long after the
sweep started.
"""
from __future__ import annotations

import uuid
from typing import List

from tunesmith.trainables.config import ConfigError


def _sees(location: str, marker: str) -> bool:
    from tunesmith.cluster.storage import Storage
    try:
        st = Storage(location)
        return st.exists(marker) and st.read_bytes(marker) == marker.encode()
    except Exception:   # noqa: BLE001 - any failure to read means this node cannot use it
        return False


def check_every_node(location: str, field: str = "results_dir") -> List[str]:
    """The IPs of the alive nodes, once each has read a marker the driver wrote; else a
    ConfigError naming the nodes that cannot see ``location``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tunesmith.cluster.storage import Storage
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return [n["NodeManagerAddress"] for n in nodes]
    storage = Storage(location)
    storage.makedirs()
    marker = f".tunesmith-reach-{uuid.uuid4().hex[:12]}"
    storage.write_bytes(marker, marker.encode())
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(location, marker) for n in nodes]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=60)
        seen = [ray.get(r) if r in done else False for r in refs]   # a node that never answers cannot help
    finally:
        try:
            storage.fs.delete_file(storage.path(marker))
        except OSError:
            pass
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError(field, location, f"not reachable from node{'s' if len(blind) > 1 else ''} "
                          f"{', '.join(blind)}: a multi-node sweep needs storage every node reaches "
                          "(a shared filesystem, or a URI such as s3://bucket/sweeps)")
    return [n["NodeManagerAddress"] for n in nodes]
