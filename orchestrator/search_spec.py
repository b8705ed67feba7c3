"""The spec's search section, resolved against the trainer: dimensions whose values the trainer
accepts, whole points to evaluate, presets expanded, and repeats given distinct seeds."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from tunesmith.search_spaces.space import Dimension
from tunesmith.trainables.config import ConfigError, TrainConfig, resolve_key

MAX_TRIALS = 1_000_000   # past this a spec is a typo, and validating it would build the whole walk


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    algorithm: str = "random"
    num_samples: int = 16
    max_concurrent: Optional[int] = None   # default: as many as the cluster's resources fit
    n_initial_points: int = 8              # tpe: random trials before the model takes over
    space: Tuple[Dimension, ...] = ()
    points_to_evaluate: Tuple[Dict[str, Any], ...] = ()
    presets: Tuple[str, ...] = ()
    lr_band: Optional[Tuple[float, float]] = None
    lr_momentum_ref: Optional[float] = None   # quasi: lr scaled by (1 - m) / (1 - ref) per trial

    @property
    def coupling(self) -> Optional[Tuple[str, str, float]]:
        """(lr key, momentum key, ref) for the quasi search, or None."""
        if self.lr_momentum_ref is None:
            return None
        keys = {d.key for d in self.space}
        return ("lr", "max_momentum" if "max_momentum" in keys else "momentum", self.lr_momentum_ref)

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "num_samples": self.num_samples, "presets": list(self.presets),
                "lr_band": list(self.lr_band) if self.lr_band else None, "lr_momentum_ref": self.lr_momentum_ref,
                "max_concurrent": self.max_concurrent, "n_initial_points": self.n_initial_points,
                "space": {d.key: d.to_spec() for d in self.space},
                "points_to_evaluate": [dict(p) for p in self.points_to_evaluate]}


def resolve_search(f, base: TrainConfig, presets: Tuple[str, ...] = ()) -> SearchSpec:
    """The validated search section (spec.SearchFile) against the trainer: each dimension's values must be ones
    the trainer accepts, and each point a whole configuration inside the space."""
    algorithm = f.algorithm
    num_samples = f.num_samples or (1 if algorithm == "grid" else 16)
    dims, seen = [], {}
    for key, spec in (f.space or {}).items():
        where = f"search.space.{key}"
        setting = resolve_key(str(key), "search.space")
        if setting in seen:   # `lr` and `trainer.lr`: the last applied would win, the other recorded unused
            raise ConfigError(where, spec, f"the same setting as search.space.{seen[setting]}; search it once")
        seen[setting] = key
        dim = Dimension.parse(str(key), spec, where)
        if dim.kind in ("grid", "choice"):
            repeated = [v for i, v in enumerate(dim.values) if v in dim.values[:i]]
            if repeated:
                raise ConfigError(where, spec, f"{repeated[0]!r} is listed more than once: each value runs once")
        if algorithm in ("tpe", "quasi") and dim.kind == "grid":
            raise ConfigError(where, spec, f"{algorithm} cannot search a grid; use choice, or algorithm: grid")
        if algorithm == "grid" and dim.kind == "choice":
            dim = dataclasses.replace(dim, kind="grid")   # a grid search walks every choice
        for value in dim.examples():
            check_value(base, dim.key, value, where)
        dims.append(dim)

    by_key = {d.key: d for d in dims}
    points = []
    for i, point in enumerate(f.points_to_evaluate or []):
        where = f"search.points_to_evaluate[{i}]"
        full = {}
        for key, value in point.items():
            if key not in by_key:
                raise ConfigError(f"{where}.{key}", value, f"not a searched setting; searched: {', '.join(by_key) or 'none'}")
            check_value(base, key, value, f"{where}.{key}")
            if not by_key[key].contains(value):
                raise ConfigError(f"{where}.{key}", value, f"outside the space {by_key[key].to_spec()}")
            full[key] = value
        for dim in dims:   # a point is a whole configuration: fill the rest from the spec
            if dim.key not in full:
                section, field = resolve_key(dim.key)
                default = getattr(getattr(base, section), field) if section != "seed" else base.seed
                if not dim.contains(default):
                    raise ConfigError(f"{where}.{dim.key}", None,
                                      f"missing, and the spec's value {default!r} lies outside the space")
                full[dim.key] = default
        points.append(full)
    walks = max(num_samples, len(points))
    size = math.prod(len(d.values) for d in dims if d.kind == "grid")
    if size * walks > MAX_TRIALS:
        raise ConfigError("search.num_samples", num_samples, f"{size * walks:,} trials ({walks:,} x a grid of "
                          f"{size:,}); a sweep runs at most {MAX_TRIALS:,}")
    dims, num_samples = distinct_trials(dims, algorithm, num_samples, f.num_samples is not None, base.seed)
    band = f.lr_band
    if band is not None and not 0 < band[0] < band[1]:
        raise ConfigError("search.lr_band", list(band), "must be 0 < min < max")
    ref = f.lr_momentum_ref
    if ref is not None:
        if algorithm != "quasi":
            raise ConfigError("search.lr_momentum_ref", ref, f"only the quasi search couples the LR to the "
                              f"momentum (search.algorithm is {algorithm})")
        if by_key.get("lr") is None or by_key["lr"].kind not in ("uniform", "loguniform"):
            raise ConfigError("search.lr_momentum_ref", ref, "needs a continuous lr in search.space")
        if "max_momentum" not in by_key and "momentum" not in by_key:
            raise ConfigError("search.lr_momentum_ref", ref, "needs max_momentum or momentum in search.space")
    return SearchSpec(algorithm, num_samples, f.max_concurrent, f.n_initial_points, tuple(dims), tuple(points),
                      presets, band, ref)


def distinct_trials(dims, algorithm: str, num_samples: int, asked: bool, seed: int):
    """No two trials share both configuration and seed unless repeats are asked for, and
    repeats get distinct seeds. A space of grids and choices only (or no space at all) is
    walked once by default; ``num_samples`` N > 1, given explicitly, walks it N times, each walk
    with its own seed (a seed grid): for an empty space, a seed-variance study."""
    if algorithm == "tpe" or any(d.kind not in ("grid", "choice") for d in dims):
        return dims, num_samples   # continuous draws differ; TPE proposes its own points
    dims = [dataclasses.replace(d, kind="grid") if d.kind == "choice" else d for d in dims]
    walks = num_samples if asked else 1
    if walks > 1 and not any(d.key == "seed" for d in dims):
        dims.append(Dimension("seed", "grid", values=tuple(seed + i for i in range(walks))))
        walks = 1
    return dims, walks


def apply_presets(raw: Mapping[str, Any]):
    """Expand search.presets into dimensions and trainer settings before validation."""
    from tunesmith.search_spaces import presets as presets_mod
    search = raw.get("search")
    if not isinstance(search, Mapping) or not search.get("presets"):
        return raw, ()
    trainer = raw.get("trainer") or {}
    if not isinstance(trainer, Mapping):
        raise ConfigError("trainer", trainer, "must be a mapping")
    space, trainer, names = presets_mod.expand(dict(search), dict(trainer))
    out = dict(raw)
    out["trainer"] = trainer
    out["search"] = {**search, "space": space}
    return out, tuple(names)


def check_value(base: TrainConfig, key: str, value: Any, where: str) -> None:
    try:
        base.with_overrides({key: value})
    except ConfigError as exc:
        raise ConfigError(where, value, exc.problem) from None
