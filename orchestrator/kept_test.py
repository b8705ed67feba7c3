"""The kept model's test figure where a confirmation was asked for but the time budget afforded
none: the search winner's kept checkpoint reads the test split once, in a Ray task with one
trial's resources (on a cluster, where trials run and the data are), after the search; on the
driver's own node on CPUs, in the driver itself: a task's worker starts and imports torch first,
3.8 s of a 30-s budget's digits sweep here, all of it past the budget. No selection follows it:
the winner was chosen by validation figures alone (#28)."""
from __future__ import annotations

from typing import Optional


def kept_on_test(spec, callback, here: bool = False) -> Optional[str]:
    """The search winner's kept checkpoint on the test split: its record's test figures set and
    written. The winner's trial id, or None where it has no kept checkpoint or the data no test
    split. ``here``: the driver's host is the only node and the data are read there."""
    import pyarrow.fs as pafs
    import ray
    from tunesmith.trainables.tune_trainable import STATE_FILE, state_on_test
    ranked = callback.ledger.ranked()
    rec = ranked[0] if ranked else None
    if rec is None or not rec.checkpoint:
        return None
    fs = callback.retention.filesystem or pafs.LocalFileSystem()
    try:
        with fs.open_input_file(f"{rec.checkpoint.removeprefix('file://')}/{STATE_FILE}") as fh:
            state = fh.read()
    except OSError:   # a checkpoint already gone (a resumed sweep's): no figure rather than a failure
        return None
    cpus, gpus = max(1, int(spec.resources.cpus)), float(spec.resources.gpus)   # one trial's (one rank's)
    if here and not gpus:   # no CUDA context in the driver: a GPU sweep's read stays a task
        import torch
        threads = torch.get_num_threads()   # the trainer sets the process's own; the driver's are kept
        try:
            found = state_on_test(spec.trial_config(), rec.config, state, gpus, cpus)
        finally:
            torch.set_num_threads(threads)
    else:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(state_on_test)
        found = ray.get(task.remote(spec.trial_config(), rec.config, state, gpus, cpus))
    if not found:
        return None
    rec.test.update(found)
    callback.mark_changed()
    return rec.trial_id
