"""Resource arithmetic, pure and testable without Ray."""
from __future__ import annotations

import math
from typing import Optional

from tunesmith.trainables.config import ConfigError


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

