"""The thin Ray Tune wrapper: the only module of trainables/ that knows Ray, and only
through its report call and the trial's context."""
from __future__ import annotations

from typing import Any, Dict

from trainables.config import TrainConfig


def train_cnn(config: Dict[str, Any], base: Dict[str, Any]) -> None:
    """Function trainable: ``base`` is the spec's TrainConfig as a dict, ``config`` the values
    the search algorithm chose (``{"lr": 0.1, "model.width": 32}``)."""
    from ray import tune
    from trainables.trainer import Trainer

    cfg = TrainConfig.from_dict(base).with_overrides(config)   # the loaders check data files on this node
    held = tune.get_context().get_trial_resources().required_resources
    trainer = Trainer(cfg, num_gpus=held.get("GPU", 0.0), cpu_threads=held.get("CPU", 1))
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        import torch
        device = f"cuda:{torch.cuda.get_device_name()} x{trainer.devices}"
    for metrics in trainer.run():
        metrics.pop("done", None)   # Tune reserves 'done'
        metrics["device"] = device
        metrics["global_batch"] = trainer.global_batch
        tune.report(metrics)
