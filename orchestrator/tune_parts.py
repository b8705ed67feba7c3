"""The pieces every Tune run of a sweep shares (the search's and the confirmation's): how many
trials at once, what each reserves, data-parallel options, trial folder names, what Tune keeps
of an ended trial, and what each Tuner needs before its fit."""
from __future__ import annotations

from typing import Optional

from tunesmith.cluster.connect import ClusterInfo
from tunesmith.cluster.resources import TRIAL_SLIVER_CPU, data_parallel_cpus, fits_one_node, max_concurrent
from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator.spec import SweepSpec


def concurrency_for(spec: SweepSpec, cluster: ClusterInfo) -> int:
    """Tune does not count the GPUs and CPUs of a trial's Train workers: the cap counts them
    (ray#18332)."""
    r = spec.resources
    fits_one_node(cluster.node_cpus, cluster.node_gpus, r.cpus, r.gpus, r.ranks)
    cpus = data_parallel_cpus(cluster.cpus, r.cpus, r.ranks) if r.ranks > 1 else r.cpus
    return max_concurrent(cluster.cpus, cluster.gpus, cpus, r.gpus, spec.plan.max_concurrent)


def ddp_options(spec: SweepSpec, storage: Storage) -> Optional[dict]:
    """For a data-parallel trial: its ranks, their resources, and where Ray Train keeps its runs
    (named per trial, so a retried trial resumes its own)."""
    r = spec.resources
    if r.ranks <= 1:
        return None
    return {"workers": r.ranks, "use_gpu": r.gpus > 1, "cpus_per_worker": r.cpus,
            "storage_path": storage.path(spec.name, "_train"), "sweep": spec.name,
            "filesystem": None if storage.is_local else storage.fs}


def trial_resources(spec: SweepSpec) -> dict:
    """What Tune reserves for a trial: all of it, or a sliver when Ray Train's workers hold the
    real resources ({"cpu": 0} is refused)."""
    if spec.resources.ranks > 1:
        return {"cpu": TRIAL_SLIVER_CPU}
    return {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}


def trial_dirname(trial) -> str:
    return trial.trial_id   # short, stable names: Ray's default embeds the whole config


def forget_metric_history(trial, metric: str) -> None:
    """Tune keeps, for every trial until the sweep ends, each number the trial reported with its
    max, min, mean and last-5 and last-10 means, two deques and a JSON copy of it all: about
    1.5 KB per number, and a trial of tunesmith's reports some forty (its metrics, Tune's own
    and the flattened config), so 10,000 trials held hundreds of MB in the driver. Once a trial
    has completed nothing reads them but Tune's best-trial lookup, which needs only the sweep's
    metric; the ledger holds every curve. An errored trial keeps them: it may be retried."""
    meta = getattr(trial, "run_metadata", None)   # smith's pilot (a DriverTrial) has none
    if meta is None:
        return
    meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if k == metric}
    meta.metric_n_steps = {k: v for k, v in meta.metric_n_steps.items() if k == metric}


def _tag_callbacks(callbacks) -> bool:
    """Ray Tune records which callbacks a run uses in Ray's usage statistics; to tell its own
    from a user's, Ray's version imports Ray's W&B, MLflow, Comet and Aim integrations, which
    import their libraries where installed: mlflow alone took 1.4 s on 2 cores, in the driver,
    before the first trial of every sweep. This records the same tag from each callback's class
    and module alone: Ray's own by name, the others counted by kind."""
    import json
    from ray._common.usage.usage_lib import TagKey, record_extra_usage_tag
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    counts: dict = {}
    for cb in callbacks or []:
        if isinstance(cb, Callback):
            kind = type(cb).__name__ if type(cb).__module__.startswith("ray.") else \
                "CustomLoggerCallback" if isinstance(cb, LoggerCallback) else "CustomCallback"
            counts[kind] = counts.get(kind, 0) + 1
    if counts:
        record_extra_usage_tag(TagKey.AIR_CALLBACKS, json.dumps(counts))
    return bool(counts)


def before_fit() -> None:
    """Before each of our Tuners' fit (the search's, the confirmation's, a restored one's): our
    stopper takes Ctrl-C and SIGTERM, not Tune's handler; Tune's result grid says nothing of the
    per-trial JSON and CSV files our writers replace (`analyze --confirm` printed a warning per
    trial), nor of the concurrency cap a search generator takes itself; and Ray's usage tagging
    is the light one."""
    import logging
    import os
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    light_usage_tagging()


def light_usage_tagging() -> None:
    """Before a Tuner's fit: Tune looks the function up in its module at each run."""
    from ray.air._internal import usage as air_usage
    air_usage.tag_callbacks = _tag_callbacks
