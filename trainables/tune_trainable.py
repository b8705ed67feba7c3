"""The thin Ray Tune wrapper: the only module of trainables/ that knows Ray, and only
through its report call and the trial's context."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from tunesmith.trainables.config import TrainConfig


def _private_mb() -> float:
    """This process's anonymous memory: what it allocated for itself. Pages of Ray's object
    store are shared memory and do not count, however many trials map them (USS would count
    them for the first trial on a node, while no other process maps them yet)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil
    return psutil.Process().memory_full_info().uss / 2 ** 20


STATE_FILE = "trainer.pt"
# Ray Train's controller polls its workers once per this interval, and a run moves one state
# (scheduling, running, finished) per poll: at Ray's 2 s a 3-epoch DDP trial on digits took
# 28.5 s from its start to its end here, at 0.5 s 22.3. A user's own setting is kept.
TRAIN_POLL_S = "0.5"


def _staging_dir() -> Optional[str]:
    """Where a checkpoint is written before Ray copies it to the results: the trial's working
    directory, inside Ray's session folder (Tune moves the trial there unless
    RAY_CHDIR_TO_TRIAL_DIR=0). A trial stopped while its report waits is never resumed, nor is
    its folder deleted; it is then left in Ray's folder, beside the trial's logs, not in /tmp."""
    return os.getcwd() if os.environ.get("RAY_CHDIR_TO_TRIAL_DIR", "1") != "0" else None


def train_cnn(config: Dict[str, Any], base: Dict[str, Any], shared: Optional[list] = None,
              checkpoint_every: int = 1, ddp: Optional[dict] = None, deadline: Optional[float] = None,
              keeper=None, run_s: Optional[float] = None) -> None:
    """Function trainable: ``base`` is the spec's TrainConfig as a dict, ``config`` the values
    the search algorithm chose (``{"lr": 0.1, "model.width": 32}``), ``shared`` the dataset's
    arrays in Ray's object store (orchestrator/data_share.py), read zero-copy. ``deadline``
    (time.time(), by this node's clock): the sweep's time budget ends there; the trial stops at
    the next mini-batch instead of finishing its epoch, which Tune's stop would wait for.
    ``keeper``: a DeadlineKeeper actor that may move the deadline earlier during the sweep.
    ``run_s``: a confirmation run's share of the time left (its round's), counted from its start:
    the run fits its schedule to that where it ends before the deadline."""
    import tempfile
    import time
    import ray
    import torch
    from ray import tune
    from tunesmith.trainables import data as data_mod
    from tunesmith.trainables.config import unpack
    from tunesmith.trainables.trainer import Trainer

    if deadline is not None and time.time() >= deadline:
        return
    deadline, reader = own_deadline(deadline, _reader(keeper), run_s)
    config, confirms = unpack(config)
    cfg = TrainConfig.from_dict(base).with_overrides(config)   # the loaders check data files on this node
    if ddp:
        return _data_parallel(cfg, shared, checkpoint_every, ddp, deadline, keeper, bool(confirms), run_s)
    held = tune.get_context().get_trial_resources().required_resources
    before = _private_mb()
    arrays = None
    if shared and data_mod.source_key(cfg.dataset) == data_mod.source_key(TrainConfig.from_dict(base).dataset):
        arrays = ray.get(shared[0])   # a search over the data's own fields loads its own copy
    data = data_mod.load(cfg.dataset, shared=arrays)
    data_info = {"data_mb": data.nbytes / 2 ** 20, "data_added_mb": _private_mb() - before}
    trainer = Trainer(cfg, num_gpus=held.get("GPU", 0.0), cpu_threads=held.get("CPU", 1), shared=arrays)
    trainer.deadline = deadline
    trainer.deadline_source = reader
    resumed = tune.get_checkpoint()
    if resumed is not None:   # a retry after a lost worker or node, or `tunesmith resume`
        with resumed.as_directory() as folder:
            trainer.load_state_dict(torch.load(os.path.join(folder, STATE_FILE), weights_only=True))
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        device = f"cuda:{torch.cuda.get_device_name()} x{trainer.devices}"
    for metrics in trainer.run():
        done = metrics.pop("done", False)   # Tune reserves 'done'
        final_test(trainer, metrics, done and confirms)
        metrics["device"] = device
        metrics["global_batch"] = trainer.global_batch
        metrics.update(data_info)
        metrics["reported_at"] = time.time()   # Tune's timestamp is whole seconds: epochs would share one
        if checkpoint_every and not metrics.get("diverged") and (metrics["epoch"] % checkpoint_every == 0 or done):
            with tempfile.TemporaryDirectory(prefix="tunesmith-ckpt-", dir=_staging_dir()) as folder:
                torch.save(trainer.state_dict(), os.path.join(folder, STATE_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report(metrics)


def state_on_test(base: Dict[str, Any], config: Dict[str, Any], state: bytes, gpus: float = 0.0,
               cpus: int = 1) -> Dict[str, float]:
    """A kept checkpoint's model (``state``: its trainer.pt) on the test split, once: the sweep's
    winner where no confirmation could run (orchestrator/kept_test.py runs it as a Ray task)."""
    import io
    import torch
    from tunesmith.trainables.config import unpack
    from tunesmith.trainables.trainer import Trainer
    config, _ = unpack(config)
    trainer = Trainer(TrainConfig.from_dict(base).with_overrides(config), num_gpus=gpus, cpu_threads=cpus)
    weights = torch.load(io.BytesIO(state), map_location=trainer.device, weights_only=True)["model"]
    trainer.net.load_state_dict(weights)
    return trainer.evaluate("test") if trainer.data.test_size else {}


def final_test(trainer, metrics: dict, due) -> None:
    """A confirmation trial's final model, once at the end of its schedule (the whole of it, or
    as fitted to the time budget, annealed): the only read of the test split. A diverged run, or
    one the budget stopped mid-epoch (it never reports its end), is no final model."""
    if due and trainer.data.test_size and trainer.epoch >= trainer.end_epoch and not metrics.get("diverged"):
        metrics.update(trainer.evaluate("test"))


def own_deadline(deadline: Optional[float], reader, run_s: Optional[float]):
    """The deadline and its reader for a run allowed ``run_s`` from now (a confirmation run in
    one of several rounds): the earlier of that and the sweep's, as the sweep's moves."""
    import time
    if run_s is None:
        return deadline, reader
    own = time.time() + run_s
    capped = own if deadline is None else min(deadline, own)
    if reader is None:
        return capped, None

    def read():
        moved = reader()
        return None if moved is None else min(moved, own)
    return capped, read


def _reader(keeper):
    """The trainer's view of a DeadlineKeeper: its current deadline, or None (keep the last one)
    when the driver that holds it is gone or slow to answer."""
    if keeper is None:
        return None
    import ray

    def read():
        try:
            return ray.get(keeper.get.remote(), timeout=5)
        except Exception:
            return None
    return read


# --- data-parallel trials: Ray Train (V2) inside the Tune trial ---------------------------------

def _data_parallel(cfg: TrainConfig, shared: Optional[list], checkpoint_every: int, ddp: dict,
                   deadline: Optional[float] = None, keeper=None, confirms: bool = False,
                   run_s: Optional[float] = None) -> None:
    """The trial launches a TorchTrainer with one worker per rank and waits for it; rank 0's
    reports reach Tune through Train's TuneReportCallback. The Train run is named after the
    trial, so a retried trial resumes it from its last checkpoint. The ranks keep the sweep's
    deadline as one process does: they fit the schedule to it and stop at it, together."""
    from ray import train, tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    trial = tune.get_context().get_trial_id()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)   # fit() passes it on
    trainer = TorchTrainer(
        _rank_loop,
        train_loop_config={"cfg": cfg.to_dict(), "shared": shared, "checkpoint_every": checkpoint_every,
                           "deadline": deadline, "keeper": keeper, "confirms": confirms, "run_s": run_s},
        scaling_config=train.ScalingConfig(num_workers=ddp["workers"], use_gpu=ddp["use_gpu"],
                                           resources_per_worker={"CPU": ddp["cpus_per_worker"],
                                                                 **({"GPU": 1} if ddp["use_gpu"] else {})}),
        run_config=train.RunConfig(name=f"{ddp['sweep']}-{trial}", storage_path=ddp["storage_path"],
                                   storage_filesystem=ddp.get("filesystem"), callbacks=[TuneReportCallback()]))
    trainer.fit()


def _rank_loop(loop_config: dict) -> None:
    """One rank of a data-parallel trial (runs in a Ray Train worker)."""
    import tempfile
    import time
    import ray
    import torch
    from ray import train
    from tunesmith.trainables.trainer import Trainer
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig.from_dict(loop_config["cfg"])
    shared = loop_config["shared"]
    device = None
    if torch.cuda.is_available():
        from ray.train.torch import get_device
        device = get_device()
    arrays = ray.get(shared[0]) if shared else None
    trainer = Trainer(cfg, device=device, cpu_threads=1, shared=arrays, rank=rank, world=world)
    trainer.deadline, trainer.deadline_source = own_deadline(loop_config.get("deadline"),
                                                             _reader(loop_config.get("keeper")),
                                                             loop_config.get("run_s"))
    resumed = train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            trainer.load_state_dict(torch.load(os.path.join(folder, STATE_FILE), weights_only=True))
    device_name = (f"cuda:{torch.cuda.get_device_name()} x{world} (DDP)" if trainer.device.type == "cuda"
                   else f"cpu x{world} (DDP)")
    every = loop_config["checkpoint_every"]
    for metrics in trainer.run():
        done = metrics.pop("done", False)
        final_test(trainer, metrics, done and loop_config.get("confirms"))   # every rank: the whole test part
        metrics.pop("preview", None)
        metrics.update(device=device_name, global_batch=trainer.global_batch,
                       data_mb=trainer.data.nbytes / 2 ** 20, reported_at=time.time())
        save = every and not metrics.get("diverged") and (metrics["epoch"] % every == 0 or done)
        if save and rank == 0:
            with tempfile.TemporaryDirectory(prefix="tunesmith-ckpt-") as folder:
                torch.save(trainer.state_dict(), os.path.join(folder, STATE_FILE))
                train.report(metrics, checkpoint=train.Checkpoint.from_directory(folder))
        else:
            train.report(metrics)
