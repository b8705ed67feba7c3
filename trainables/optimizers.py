"""Optimizers by name, and the one knob the schedules move: momentum.

For Adam-family optimizers "momentum" is beta1, which is what cyclical momentum cycles.
Rprop adapts per-weight steps from gradient signs and has no momentum.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from tunesmith.trainables.config import ConfigError, TrainerConfig


def _decay_groups(model: torch.nn.Module, weight_decay: float, backbone_lr: float = 1.0):
    """No weight decay on biases and normalisation weights (1-D parameters). With
    ``backbone_lr`` < 1 the backbone's groups take that share of the LR (``lr_scale``), the
    head's the whole: discriminative LRs."""
    from tunesmith.trainables.models import head_parameters
    head, body = head_parameters(model) if backbone_lr != 1.0 else ([], list(model.parameters()))
    groups = []
    for params, scale in ((body, backbone_lr), (head, 1.0)):
        decay = [p for p in params if p.requires_grad and p.ndim > 1]
        rest = [p for p in params if p.requires_grad and p.ndim <= 1]
        groups += [{"params": decay, "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": rest, "weight_decay": 0.0, "lr_scale": scale}]
    return [g for g in groups if g["params"]]


class RpropWithDecay(torch.optim.Rprop):
    """Rprop with weight decay as an L2 term added to the gradient, as torch's SGD and Adam
    apply theirs; torch's own Rprop has none, and a spec's weight_decay would be ignored."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            decay = group.get("weight_decay", 0.0)
            if decay:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.add_(p, alpha=decay)
        return super().step(closure)


OPTIMIZERS: Dict[str, Callable[[list, TrainerConfig, float], torch.optim.Optimizer]] = {
    "sgd": lambda g, t, lr: torch.optim.SGD(g, lr=lr, momentum=t.momentum, nesterov=t.nesterov),
    "adam": lambda g, t, lr: torch.optim.Adam(g, lr=lr, betas=(t.momentum, 0.999)),
    "adamw": lambda g, t, lr: torch.optim.AdamW(g, lr=lr, betas=(t.momentum, 0.999)),
    "rmsprop": lambda g, t, lr: torch.optim.RMSprop(g, lr=lr, momentum=t.momentum),
    "rprop": lambda g, t, lr: RpropWithDecay(g, lr=lr),
}


def list_optimizers() -> list:
    return sorted(OPTIMIZERS)


def build_optimizer(model: torch.nn.Module, t: TrainerConfig, lr: float, backbone_lr: float = 1.0) -> torch.optim.Optimizer:
    try:
        make = OPTIMIZERS[t.optimizer]
    except KeyError:
        raise ConfigError("trainer.optimizer", t.optimizer,
                          f"unknown; choose from {', '.join(list_optimizers())}") from None
    return make(_decay_groups(model, t.weight_decay, backbone_lr), t, lr)


def has_momentum(name: str) -> bool:
    return name != "rprop"


def set_lr_momentum(opt: torch.optim.Optimizer, lr: float, momentum: Optional[float]) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = momentum


def current_momentum(opt: torch.optim.Optimizer) -> Optional[float]:
    group = opt.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    if "momentum" in group:
        return float(group["momentum"])
    return None
