"""Search-space dimensions: parsed and checked from a spec, turned into Ray Tune domains.

A spec writes a dimension as a one-key mapping:
    lr:            {loguniform: [1.0e-3, 1.0]}
    momentum:      {choice: [0.9, 0.95, 0.97, 0.99]}
    weight_decay:  {grid: [1.0e-3, 1.0e-4, 1.0e-5, 0]}
    dropout:       {uniform: [0.0, 0.5]}
    model.width:   {randint: [16, 65]}        # high is exclusive, as in Ray and numpy
Keys name trial settings as trainables.config.resolve_key reads them: bare names are trainer
fields, others carry their section (``model.width``, ``dataset.augment``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from tunesmith.trainables.config import ConfigError

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str
    values: Tuple[Any, ...] = ()   # choice and grid
    low: float = 0.0               # uniform, loguniform, randint
    high: float = 0.0

    @classmethod
    def parse(cls, key: str, raw: Any, where: str) -> "Dimension":
        if not isinstance(raw, Mapping) or len(raw) != 1:
            raise ConfigError(where, raw, f"must be one of {{{': [...]}, {'.join(KINDS)}: [...]}}")
        (kind, args), = raw.items()
        if kind not in KINDS:
            raise ConfigError(where, raw, f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        if not isinstance(args, (list, tuple)) or not args:
            raise ConfigError(f"{where}.{kind}", args, "must be a non-empty list")
        if kind in ("choice", "grid"):
            return cls(key, kind, values=tuple(args))
        if len(args) != 2:
            raise ConfigError(f"{where}.{kind}", args, "must be [low, high]")
        try:
            low, high = (float(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{kind}", args, "bounds must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{where}.{kind}", args, "bounds must be finite")
        if low >= high:
            raise ConfigError(f"{where}.{kind}", args, f"low {args[0]} must be below high {args[1]}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}.{kind}", args, "loguniform bounds must be > 0")
        if kind == "randint":
            if not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"{where}.{kind}", args, "randint bounds must be integers")
            if high - low < 1:
                raise ConfigError(f"{where}.{kind}", args, "randint needs high > low (high is exclusive)")
        return cls(key, kind, low=low, high=high)

    def examples(self) -> Tuple[Any, ...]:
        """Values that stand for the whole dimension when checking it against the trainer's
        validation: every listed value, or both bounds."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.kind == "randint":
            return int(self.low), int(self.high) - 1
        return self.low, self.high

    def contains(self, value: Any) -> bool:
        if self.kind in ("choice", "grid"):
            return value in self.values
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        if self.kind == "randint":
            return v.is_integer() and self.low <= v < self.high
        return self.low <= v <= self.high

    def to_tune(self):
        from ray import tune
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high))

    def at(self, u: float) -> Any:
        """The value at ``u`` in [0, 1): the dimension's own measure, so that evenly spread
        ``u`` give evenly spread values (in log space for loguniform)."""
        u = min(max(float(u), 0.0), math.nextafter(1.0, 0.0))
        if self.kind in ("choice", "grid"):
            return self.values[int(u * len(self.values))]
        if self.kind == "randint":
            return int(self.low) + int(u * (self.high - self.low))
        if self.kind == "loguniform":
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def to_spec(self) -> dict:
        if self.kind in ("choice", "grid"):
            return {self.kind: list(self.values)}
        if self.kind == "randint":
            return {self.kind: [int(self.low), int(self.high)]}
        return {self.kind: [self.low, self.high]}

    @property
    def size(self) -> float:
        """Number of distinct values (inf for continuous): used to size grids."""
        if self.kind in ("choice", "grid"):
            return len(self.values)
        if self.kind == "randint":
            return self.high - self.low
        return math.inf


def point(dims: Sequence, u: Sequence[float], couple: Optional[Tuple[str, str, float]] = None) -> Dict[str, Any]:
    """The configuration at ``u`` in the unit cube, with a coupled LR scaled for its momentum."""
    config = {d.key: d.at(x) for d, x in zip(dims, u)}
    if couple:
        lr_key, m_key, ref = couple
        config[lr_key] = config[lr_key] * (1 - config[m_key]) / (1 - ref)
    return config


def centre(dims: Sequence, couple: Optional[Tuple[str, str, float]] = None) -> Dict[str, Any]:
    """The middle of the space: a loguniform dimension's geometric middle, a choice's middle
    value (the upper one of the two middles)."""
    return point(dims, [0.5] * len(dims), couple)
