"""Typed, validated configuration of one training run.

Everything that enters from outside (a YAML spec, a command-line override, a value
sampled by a search algorithm) passes through ``parse`` once, and a bad value becomes
a ``ConfigError`` that names the field and the value. Nothing downstream re-checks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional


class ConfigError(ValueError):
    """A bad value in a spec: ``field = value: problem`` on one line."""

    def __init__(self, field: str, value: Any, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field} = {value!r}: {problem}")

    def __reduce__(self):   # crosses process boundaries (Ray) and copy.copy intact
        return (type(self), (self.field, self.value, self.problem))


_MISSING = object()


def spec_field(default: Any = _MISSING, *, check: Optional[Callable[[Any], Optional[str]]] = None,
               kind: Any = None, default_factory: Any = _MISSING):
    """A dataclass field with a validator. ``check(value)`` returns a problem or None."""
    meta = {"check": check, "kind": kind}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- checks: each returns a problem sentence or None -------------------------------------

def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def in_range(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        return None
    return check


def one_of(choices: Callable[[], list] | list):
    def check(v):
        options = choices() if callable(choices) else choices
        return None if v in options else f"unknown; choose from {', '.join(map(str, options))}"
    return check


def optional(check):
    return lambda v: None if v is None else check(v)


# --- coercion -------------------------------------------------------------------------------

def _coerce(value: Any, kind: Any, field: str) -> Any:
    """Turn a YAML/CLI value into the declared kind. PyYAML reads ``1e-3`` as a string
    (YAML 1.1 wants a dot), so floats accept numeric strings."""
    if value is None:
        return None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(field, value, "must be a number")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(field, value, "must be a number") from None
        else:
            raise ConfigError(field, value, "must be a number")
        if math.isnan(out):
            raise ConfigError(field, value, "must be a number, not NaN")
        return out
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(field, value, "must be an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(field, value, "must be an integer") from None
        if not isinstance(value, int):
            raise ConfigError(field, value, "must be an integer")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ConfigError(field, value, "must be true or false")
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(field, value, "must be a string")
        return value
    if kind == "int_list":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ConfigError(field, value, "must be a list of integers")
        return tuple(value)
    return value


def parse(cls, data: Optional[Mapping[str, Any]], prefix: str):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, data, "must be a mapping")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}.{key}", data[key], f"unknown key; known: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        name = f"{prefix}.{f.name}"
        value = _coerce(data[f.name], f.metadata.get("kind"), name)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(name, data[f.name], problem)
        kwargs[f.name] = value
    return cls(**kwargs)


def to_dict(obj) -> dict:
    out = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# --- the configuration of one training run ---------------------------------------------------
# Names are listed here, not imported from the registries, so that validating a spec does not
# import torch (2.4 s); tests/test_models.py checks that the registries match these lists.
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic", "glyphs", "shapes",
            "letters")
MODELS = ("small_cnn", "lenet", "resnet18", "resnet34")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "rprop")
SCHEDULE_NAMES = ("constant", "step", "warmup_cosine", "triangular", "one_cycle")
AUGMENTS = ("none", "flip_crop", "crop")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    name: str = spec_field("digits", kind=str, check=one_of(list(DATASETS)))
    data_dir: Optional[str] = spec_field(None, kind=str)          # torchvision sets and imagefolder
    download: bool = spec_field(False, kind=bool)                  # only when the spec asks
    val_fraction: float = spec_field(0.25, kind=float, check=in_range(0, 1, True, True))
    split_seed: int = spec_field(0, kind=int)                      # the split never moves with the trial seed
    image_size: Optional[int] = spec_field(None, kind=int, check=optional(positive))  # imagefolder/synthetic
    channels: Optional[int] = spec_field(None, kind=int, check=optional(in_range(1, 3)))
    num_classes: int = spec_field(10, kind=int, check=in_range(2, 100000))   # synthetic only
    num_samples: int = spec_field(4096, kind=int, check=positive)            # synthetic only
    augment: str = spec_field("none", kind=str, check=one_of(list(AUGMENTS)))
    # imagefolder: stream from disk (true), keep in memory (false), or decide by the budget (null)
    stream: Optional[bool] = spec_field(None, kind=bool)
    memory_budget: float = spec_field(0.25, kind=float, check=in_range(0, 1, True, False))  # share of free memory
    workers: Optional[int] = spec_field(None, kind=int, check=optional(positive))   # streaming decoders


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = spec_field("small_cnn", kind=str, check=one_of(list(MODELS)))
    width: int = spec_field(16, kind=int, check=positive)      # small_cnn: channels of the first block
    # small_cnn: blocks, each halving the size; null: down to 4x4 (2 for 8 px, 3 for 32 px)
    depth: Optional[int] = spec_field(None, kind=int, check=optional(in_range(1, 8)))
    batch_norm: bool = spec_field(True, kind=bool)
    dropout: float = spec_field(0.0, kind=float, check=in_range(0, 1, False, True))


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    epochs: int = spec_field(10, kind=int, check=positive)
    per_gpu_batch_size: int = spec_field(32, kind=int, check=positive)   # more steps per CPU-second than 64
    optimizer: str = spec_field("sgd", kind=str, check=one_of(list(OPTIMIZERS)))
    lr: float = spec_field(0.05, kind=float, check=positive)
    momentum: float = spec_field(0.9, kind=float, check=in_range(0, 1, False, True))
    nesterov: bool = spec_field(False, kind=bool)
    weight_decay: float = spec_field(5e-4, kind=float, check=non_negative)
    label_smoothing: float = spec_field(0.0, kind=float, check=in_range(0, 1, False, True))
    schedule: str = spec_field("one_cycle", kind=str, check=one_of(list(SCHEDULE_NAMES)))
    warmup_epochs: float = spec_field(1.0, kind=float, check=non_negative)
    step_epochs: float = spec_field(10.0, kind=float, check=positive)
    step_gamma: float = spec_field(0.1, kind=float, check=in_range(0, 1, True, False))
    min_lr_ratio: float = spec_field(0.0, kind=float, check=in_range(0, 1))
    div_factor: float = spec_field(10.0, kind=float, check=in_range(1, 1e9))
    final_div: float = spec_field(100.0, kind=float, check=in_range(1, 1e9))
    annihilation: float = spec_field(0.1, kind=float, check=in_range(0, 1, False, True))
    cycle_epochs: float = spec_field(4.0, kind=float, check=positive)
    cycle_momentum: bool = spec_field(True, kind=bool)
    max_momentum: float = spec_field(0.95, kind=float, check=in_range(0, 1, False, True))
    min_momentum: float = spec_field(0.85, kind=float, check=in_range(0, 1, False, True))
    scale_lr: bool = spec_field(False, kind=bool)    # lr x devices: linear scaling with the global batch
    divergence_factor: float = spec_field(4.0, kind=float, check=in_range(1, 1e9, True))
    precision: str = spec_field("auto", kind=str, check=one_of(list(PRECISIONS)))  # auto: bf16 on GPU
    eval_batch_size: int = spec_field(1024, kind=int, check=positive)
    preview_every: int = spec_field(0, kind=int, check=non_negative)  # epochs between prediction grids
    # Epochs where one_cycle / warmup_cosine end a segment and start again from the current
    # weights (budget-aware schedules). Set by the sweep from ASHA's rungs; () is one schedule.
    milestones: tuple = spec_field((), kind="int_list")

    def __post_init__(self):
        if self.min_momentum > self.max_momentum:
            raise ConfigError("trainer.min_momentum", self.min_momentum,
                              f"must not exceed trainer.max_momentum ({self.max_momentum})")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("trainer.nesterov", True, "needs trainer.momentum > 0")


SECTIONS = {"dataset": DatasetConfig, "model": ModelConfig, "trainer": TrainerConfig}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> "TrainConfig":
        dot = f"{prefix}." if prefix else ""
        sections = {name: parse(sec, data.get(name), f"{dot}{name}") for name, sec in SECTIONS.items()}
        seed = _coerce(data.get("seed", 0), int, f"{dot}seed")
        return cls(seed=seed, **sections)

    def to_dict(self) -> dict:
        return {"dataset": to_dict(self.dataset), "model": to_dict(self.model),
                "trainer": to_dict(self.trainer), "seed": self.seed}

    def with_overrides(self, flat: Mapping[str, Any], prefix: str = "") -> "TrainConfig":
        """Apply ``{"lr": 0.1, "model.width": 64}``-style values, then validate again."""
        data = self.to_dict()
        for key, value in flat.items():
            section, name = resolve_key(key, prefix)
            if section == "seed":
                data["seed"] = value
            else:
                data[section][name] = _plain(value)
        return TrainConfig.from_dict(data, prefix)


def resolve_key(key: str, prefix: str = "") -> tuple:
    """``lr`` -> ("trainer", "lr"); ``model.width`` -> ("model", "width"). Bare names are
    trainer fields, the knobs searched most; other sections are written with their name."""
    where = f"{prefix}.{key}" if prefix else key
    if key == "seed":
        return "seed", "seed"
    section, _, name = key.rpartition(".")
    section = section or "trainer"
    if section not in SECTIONS:
        raise ConfigError(where, key, f"unknown section {section!r}; use dataset., model. or a trainer field")
    known = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in known:
        raise ConfigError(where, key, f"no such {section} field; known: {', '.join(known)}")
    return section, name


def _plain(value):
    """numpy scalars (from search algorithms) to Python values."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, tuple, dict)) else value


def schedule_params(t: TrainerConfig, lr: float):
    from trainables.schedules import ScheduleParams
    return ScheduleParams(lr=lr, warmup_epochs=t.warmup_epochs, step_epochs=t.step_epochs,
                          step_gamma=t.step_gamma, min_lr_ratio=t.min_lr_ratio,
                          div_factor=t.div_factor, final_div=t.final_div,
                          annihilation=t.annihilation, cycle_epochs=t.cycle_epochs,
                          max_momentum=t.max_momentum, min_momentum=t.min_momentum,
                          cycle_momentum=t.cycle_momentum, milestones=tuple(t.milestones))
