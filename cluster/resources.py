"""Resource arithmetic, pure and testable without Ray."""
from __future__ import annotations

import math
from typing import Optional

from tunesmith.trainables.config import ConfigError


TRIAL_SLIVER_CPU = 0.01   # what a data-parallel trial holds itself, beside its ranks ({"cpu": 0} is refused)


def data_parallel_cpus(cluster_cpus: float, cpus_per_rank: float, ranks: int) -> float:
    """The CPUs one data-parallel trial takes: its ranks' and its own sliver. Ray Train waits for
    all of its ranks, so a trial that can never fit would wait out its timeout and end without
    an epoch: it is refused, naming what would fit."""
    total = cpus_per_rank * ranks + TRIAL_SLIVER_CPU
    if total > cluster_cpus + 1e-9:
        fits = math.floor(100 * (cluster_cpus - TRIAL_SLIVER_CPU) / ranks) / 100
        raise ConfigError("resources.cpus", cpus_per_rank,
                          f"{ranks} data-parallel ranks at {cpus_per_rank:g} CPU each, plus {TRIAL_SLIVER_CPU:g} for "
                          f"the trial itself, need {total:g} CPUs and the cluster has {cluster_cpus:g}; "
                          + (f"at most {fits:g} per rank fits" if fits > 0 else "use fewer workers"))
    return total


def max_concurrent(cluster_cpus: float, cluster_gpus: float, trial_cpus: float, trial_gpus: float,
                   requested: Optional[int] = None) -> int:
    """How many trials fit at once. Capping Tune's concurrency at this keeps trials from
    sitting PENDING when a trial asks for several GPUs (ray#18332)."""
    if trial_cpus > cluster_cpus:
        raise ConfigError("resources.cpus", trial_cpus, f"a trial asks for more CPUs than the cluster has ({cluster_cpus:g})")
    if trial_gpus > cluster_gpus:
        raise ConfigError("resources.gpus", trial_gpus, f"a trial asks for more GPUs than the cluster has ({cluster_gpus:g})")
    fit = math.floor(cluster_cpus / trial_cpus + 1e-9)
    if trial_gpus > 0:
        fit = min(fit, math.floor(cluster_gpus / trial_gpus + 1e-9))
    fit = max(1, fit)
    return min(fit, requested) if requested else fit


def fits_one_node(node_cpus: Optional[float], node_gpus: Optional[float], cpus: float, gpus: float,
                  ranks: int = 1) -> None:
    """A trial (or each rank of a data-parallel one) runs on a single node: one larger than every
    node would wait pending forever while the cluster's sum looked big enough."""
    if node_cpus is not None and cpus > node_cpus + 1e-9:
        raise ConfigError("resources.cpus", cpus, f"{'each rank' if ranks > 1 else 'a trial'} runs on one node, and "
                          f"the largest node has {node_cpus:g} CPUs")
    per_rank_gpus = 1.0 if ranks > 1 and gpus > 1 else gpus
    if node_gpus is not None and per_rank_gpus > node_gpus + 1e-9:
        raise ConfigError("resources.gpus", gpus, f"a trial runs on one node, and the largest node has "
                          f"{node_gpus:g} GPUs")

