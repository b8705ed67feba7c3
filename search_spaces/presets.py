"""Named search-space presets that encode Leslie Smith's recommended ranges.

Each preset brings search dimensions and the trainer settings its ranges assume. A dimension
of the same name under ``search.space`` overrides the preset's; a trainer setting the spec sets
explicitly to something else is refused, as is a preset that cannot apply (momentum for Adam).
Sources: L. N. Smith, "A disciplined approach to neural network hyper-parameters: Part 1"
(arXiv 1803.09820) and "Cyclical Learning Rates for Training Neural Networks" (arXiv 1506.01186).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from tunesmith.trainables.config import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    source: str
    space: Dict[str, dict] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)    # trainer fields the ranges assume
    refuse: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None   # trainer dict -> problem
    needs_band: bool = False


def _momentum_optimizer(trainer: Dict[str, Any]) -> Optional[str]:
    opt = trainer.get("optimizer", "sgd")
    if opt not in ("sgd", "rmsprop"):
        return (f"is for SGD-style momentum; trainer.optimizer is {opt} "
                f"({'its beta1 is not that momentum' if opt in ('adam', 'adamw') else 'it has no momentum'})")
    return None


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("lr_band",
           "LR within the band the range test found (search.lr_band: [min, max]), trained with 1cycle "
           "and cyclical momentum from 0.95 down to 0.85",
           "1803.09820 sec. 4.1 and 4.3; 1506.01186 sec. 3.3",
           space={"lr": {"loguniform": "band"}},
           settings={"schedule": "one_cycle", "cycle_momentum": True, "max_momentum": 0.95, "min_momentum": 0.85},
           needs_band=True),
    Preset("momentum",
           "momentum in {0.99, 0.97, 0.95, 0.9} for short runs at a constant LR",
           "1803.09820 sec. 4.3",
           space={"momentum": {"choice": [0.99, 0.97, 0.95, 0.9]}},
           settings={"schedule": "constant", "cycle_momentum": False},
           refuse=_momentum_optimizer),
    Preset("weight_decay_deep",
           "weight decay in {1e-3, 1e-4, 1e-5, 0}, held constant, for larger data and deeper networks",
           "1803.09820 sec. 4.4",
           space={"weight_decay": {"grid": [1e-3, 1e-4, 1e-5, 0.0]}}),
    Preset("weight_decay_shallow",
           "weight decay in {1e-2, 1e-3, 1e-4}, held constant, for small data and shallow networks",
           "1803.09820 sec. 4.4",
           space={"weight_decay": {"grid": [1e-2, 1e-3, 1e-4]}}),
    Preset("fine_tune",
           "fine-tuning learnt weights: the backbone's LR a share of the head's in {1, 0.3, 0.1} "
           "(discriminative LRs), and the head trained alone for 0 or 1 epochs first",
           "Howard and Ruder, ULMFiT (arXiv 1801.06146) sec. 3.2; fastai's fine_tune; bench/quality.py's "
           "transfer task",
           space={"model.backbone_lr": {"choice": [1.0, 0.3, 0.1]}, "model.freeze_epochs": {"choice": [0, 1]}}),
    Preset("largest_batch",
           "per_gpu_batch_size set to the largest that fits the trial's device (found before the sweep, "
           "with a 10% margin); the global batch is that times the GPUs a trial holds",
           "1803.09820 sec. 4.2"),
    Preset("lr_decades",
           "the decade LR sweep 0.1, 0.01, ..., 1e-7 with step decay (divide by 10 every step_epochs), "
           "as in the seed experiment",
           "1506.01186 sec. 3; the project's seed experiment",
           space={"lr": {"grid": [0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]}},
           settings={"schedule": "step"}),
)}


def list_presets() -> list:
    return sorted(PRESETS)


def get(name: str, where: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(where, name, f"unknown preset; choose from {', '.join(list_presets())}") from None


def expand(raw_search: Dict[str, Any], raw_trainer: Dict[str, Any]) -> Tuple[Dict[str, dict], Dict[str, Any], list]:
    """The presets' dimensions (under the spec's own ``space``) and trainer settings.
    Returns (space, trainer, preset names)."""
    names = raw_search.get("presets") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list):
        raise ConfigError("search.presets", names, "must be a list of preset names")
    band = raw_search.get("lr_band")
    space: Dict[str, dict] = {}
    trainer = dict(raw_trainer or {})
    for i, name in enumerate(names):
        where = f"search.presets[{i}]"
        p = get(name, where)
        if p.refuse:
            problem = p.refuse(trainer)
            if problem:
                raise ConfigError(where, name, problem)
        if p.needs_band:
            if not (isinstance(band, (list, tuple)) and len(band) == 2):
                raise ConfigError("search.lr_band", band, f"preset {name} needs [min, max] (tunesmith lr-find prints it)")
            try:
                lo, hi = float(band[0]), float(band[1])
            except (TypeError, ValueError):
                raise ConfigError("search.lr_band", band, "must be two numbers") from None
            if not 0 < lo < hi:
                raise ConfigError("search.lr_band", band, "must be 0 < min < max")
        for key, value in p.settings.items():
            if key in raw_trainer and raw_trainer[key] != value:
                raise ConfigError(f"trainer.{key}", raw_trainer[key], f"preset {name} needs {value!r}")
            trainer[key] = value
        for key, dim in p.space.items():
            (kind, args), = dim.items()
            space[key] = {kind: list(band) if args == "band" else args}
    space.update(raw_search.get("space") or {})   # the spec's own dimensions win
    return space, trainer, list(names)
