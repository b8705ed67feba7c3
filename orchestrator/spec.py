"""The sweep spec: a YAML file plus command-line overrides, validated once into frozen,
typed objects. Any bad value is a ConfigError naming the field and the value; nothing is
started or written before the whole spec has passed.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from search_spaces.space import Dimension
from trainables.config import (ConfigError, TrainConfig, _coerce, in_range, one_of, optional,
                               parse, positive, resolve_key, spec_field, to_dict)

ALGORITHMS = ("grid", "random", "tpe")
METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min"}
TOP_LEVEL = ("name", "description", "seed", "dataset", "model", "trainer", "search", "asha",
             "resources", "metric", "mode", "results_dir", "time_budget_s", "checkpoints", "tracking")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class AshaSpec:
    enabled: bool = spec_field(True, kind=bool)
    max_t: Optional[int] = spec_field(None, kind=int, check=optional(positive))  # default: trainer.epochs
    grace_period: int = spec_field(1, kind=int, check=positive)   # epochs every trial is granted
    reduction_factor: float = spec_field(3.0, kind=float, check=in_range(1, 1e9, True))
    # one_cycle and warmup_cosine are planned to end at each rung, so that every verdict reads an
    # annealed model (trainables/schedules.py); false: one schedule over max_t, judged mid-way
    budget_aware: bool = spec_field(True, kind=bool)


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    cpus: float = spec_field(1.0, kind=float, check=positive)
    gpus: float = spec_field(0.0, kind=float,
                             check=lambda v: "must be >= 0" if v < 0 else
                             ("above 1 must be a whole number" if v > 1 and not float(v).is_integer() else None))
    # data-parallel ranks on CPUs (gloo); with gpus above 1, one rank per GPU (nccl) instead
    workers: int = spec_field(1, kind=int, check=positive)

    def __post_init__(self):
        if self.gpus > 1 and self.workers not in (1, int(self.gpus)):
            raise ConfigError("resources.workers", self.workers,
                              f"with resources.gpus {self.gpus:g}, a trial runs one rank per GPU; leave workers at 1")

    @property
    def ranks(self) -> int:
        """Processes a trial trains with: DDP through Ray Train when above 1."""
        return int(self.gpus) if self.gpus > 1 else self.workers


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every: int = spec_field(1, kind=int, check=lambda v: None if v >= 0 else "must be >= 0")   # epochs; 0: never
    keep: str = spec_field("best", kind=str, check=one_of(["best", "all", "none"]))   # after a trial ends
    max_failures: int = spec_field(2, kind=int, check=lambda v: None if v >= -1 else "must be >= -1")  # retries


@dataclasses.dataclass(frozen=True)
class MlflowSpec:
    uri: Optional[str] = spec_field(None, kind=str)           # e.g. http://127.0.0.1:5000; null: off
    experiment: str = spec_field("tunesmith", kind=str)


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

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "num_samples": self.num_samples, "presets": list(self.presets),
                "lr_band": list(self.lr_band) if self.lr_band else None,
                "max_concurrent": self.max_concurrent, "n_initial_points": self.n_initial_points,
                "space": {d.key: d.to_spec() for d in self.space},
                "points_to_evaluate": [dict(p) for p in self.points_to_evaluate]}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    train: TrainConfig
    search: SearchSpec
    asha: AshaSpec
    resources: ResourceSpec
    metric: str = "val_acc"
    mode: str = "max"
    results_dir: str = "results"
    time_budget_s: Optional[float] = None
    description: str = ""
    checkpoints: CheckpointSpec = dataclasses.field(default_factory=CheckpointSpec)
    mlflow: MlflowSpec = dataclasses.field(default_factory=MlflowSpec)

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def max_t(self) -> int:
        return self.asha.max_t or self.train.trainer.epochs

    @property
    def milestones(self) -> Tuple[int, ...]:
        """Where the trials' schedules end a segment, matching ASHA's rungs; () when the
        schedule runs whole (ASHA off, not budget-aware, or a schedule that does not anneal)."""
        from trainables.schedules import BUDGET_AWARE, rung_milestones
        if not (self.asha.enabled and self.asha.budget_aware) or self.train.trainer.schedule not in BUDGET_AWARE:
            return ()
        if self.max_t != self.train.trainer.epochs:
            return ()   # rungs beyond the schedule's length cannot be planned for
        return rung_milestones(self.max_t, self.asha.grace_period, self.asha.reduction_factor)

    def trial_config(self) -> dict:
        """The TrainConfig every trial starts from, with the budget-aware milestones."""
        return self.train.with_overrides({"milestones": list(self.milestones)}).to_dict()

    def to_dict(self) -> dict:
        out = {"name": self.name, "description": self.description, "seed": self.seed,
               **{k: v for k, v in self.train.to_dict().items() if k != "seed"},
               "search": self.search.to_dict(), "asha": to_dict(self.asha),
               "resources": to_dict(self.resources), "metric": self.metric, "mode": self.mode,
               "results_dir": self.results_dir, "time_budget_s": self.time_budget_s,
               "checkpoints": to_dict(self.checkpoints), "tracking": {"mlflow": to_dict(self.mlflow)}}
        return out


def _parse_search(raw: Any, base: TrainConfig, presets: Tuple[str, ...] = ()) -> SearchSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("search", raw, "must be a mapping")
    known = ("algorithm", "num_samples", "max_concurrent", "n_initial_points", "space", "points_to_evaluate",
             "presets", "lr_band")
    for key in raw:
        if key not in known:
            raise ConfigError(f"search.{key}", raw[key], f"unknown key; known: {', '.join(known)}")
    algorithm = _coerce(raw.get("algorithm", "random"), str, "search.algorithm")
    problem = one_of(list(ALGORITHMS))(algorithm)
    if problem:
        raise ConfigError("search.algorithm", algorithm, problem)
    asked = raw.get("num_samples")
    num_samples = _coerce(1 if asked is None and algorithm == "grid" else (16 if asked is None else asked),
                          int, "search.num_samples")
    if num_samples < 1:
        raise ConfigError("search.num_samples", num_samples, "must be >= 1")
    max_conc = _coerce(raw.get("max_concurrent"), int, "search.max_concurrent")
    if max_conc is not None and max_conc < 1:
        raise ConfigError("search.max_concurrent", max_conc, "must be >= 1")
    n_init = _coerce(raw.get("n_initial_points", 8), int, "search.n_initial_points")
    if n_init < 1:
        raise ConfigError("search.n_initial_points", n_init, "must be >= 1")

    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, Mapping):
        raise ConfigError("search.space", space_raw, "must be a mapping of setting: {kind: [...]}")
    dims = []
    for key, spec in space_raw.items():
        where = f"search.space.{key}"
        resolve_key(str(key), "search.space")
        dim = Dimension.parse(str(key), spec, where)
        if algorithm == "tpe" and dim.kind == "grid":
            raise ConfigError(where, spec, "tpe cannot search a grid; use choice, or algorithm: grid")
        if algorithm == "grid" and dim.kind == "choice":
            dim = dataclasses.replace(dim, kind="grid")   # a grid search walks every choice
        for value in dim.examples():
            _check_value(base, dim.key, value, where)
        dims.append(dim)

    points_raw = raw.get("points_to_evaluate") or []
    if not isinstance(points_raw, (list, tuple)):
        raise ConfigError("search.points_to_evaluate", points_raw, "must be a list of {setting: value}")
    by_key = {d.key: d for d in dims}
    points = []
    for i, point in enumerate(points_raw):
        where = f"search.points_to_evaluate[{i}]"
        if not isinstance(point, Mapping):
            raise ConfigError(where, point, "must be a mapping of setting: value")
        full = {}
        for key, value in point.items():
            if key not in by_key:
                raise ConfigError(f"{where}.{key}", value, f"not a searched setting; searched: {', '.join(by_key) or 'none'}")
            _check_value(base, key, value, f"{where}.{key}")
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
    dims, num_samples = _distinct_trials(dims, algorithm, num_samples, asked is not None, base.seed)
    band = raw.get("lr_band")
    if band is not None:
        if not isinstance(band, (list, tuple)) or len(band) != 2:
            raise ConfigError("search.lr_band", band, "must be [min, max]")
        band = tuple(_coerce(b, float, "search.lr_band") for b in band)
        if not 0 < band[0] < band[1]:
            raise ConfigError("search.lr_band", list(band), "must be 0 < min < max")
    return SearchSpec(algorithm, num_samples, max_conc, n_init, tuple(dims), tuple(points), presets, band)


def _distinct_trials(dims, algorithm: str, num_samples: int, asked: bool, seed: int):
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


def _apply_presets(raw: Mapping[str, Any]):
    """Expand search.presets into dimensions and trainer settings before validation."""
    from search_spaces import presets as presets_mod
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


def _check_value(base: TrainConfig, key: str, value: Any, where: str) -> None:
    try:
        base.with_overrides({key: value})
    except ConfigError as exc:
        raise ConfigError(where, value, exc.problem) from None


def from_dict(raw: Mapping[str, Any], default_name: str = "sweep") -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("spec", raw, "must be a mapping at the top level")
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(str(key), raw[key], f"unknown key; known: {', '.join(TOP_LEVEL)}")
    name = _coerce(raw.get("name", default_name), str, "name")
    if not NAME_RE.match(name):
        raise ConfigError("name", name, "use letters, digits, '.', '_' and '-' only")
    raw, presets = _apply_presets(raw)
    train = TrainConfig.from_dict(raw)
    search = _parse_search(raw.get("search"), train, presets)
    asha = parse(AshaSpec, raw.get("asha"), "asha")
    resources = parse(ResourceSpec, raw.get("resources"), "resources")
    metric = _coerce(raw.get("metric", "val_acc"), str, "metric")
    if metric not in METRICS:
        raise ConfigError("metric", metric, f"unknown; choose from {', '.join(METRICS)}")
    mode = _coerce(raw.get("mode", METRICS[metric]), str, "mode")
    if mode not in ("min", "max"):
        raise ConfigError("mode", mode, "must be min or max")
    max_t = asha.max_t or train.trainer.epochs
    if asha.grace_period > max_t:
        raise ConfigError("asha.grace_period", asha.grace_period, f"must not exceed asha.max_t ({max_t})")
    results_dir = _coerce(raw.get("results_dir", "results"), str, "results_dir")
    if not results_dir:
        raise ConfigError("results_dir", results_dir, "must not be empty")
    budget = _coerce(raw.get("time_budget_s"), float, "time_budget_s")
    if budget is not None and budget <= 0:
        raise ConfigError("time_budget_s", budget, "must be > 0")
    description = _coerce(raw.get("description", ""), str, "description")
    checkpoints = parse(CheckpointSpec, raw.get("checkpoints"), "checkpoints")
    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, Mapping):
        raise ConfigError("tracking", tracking, "must be a mapping such as {mlflow: {uri: ..., experiment: ...}}")
    for key in tracking:
        if key != "mlflow":
            raise ConfigError(f"tracking.{key}", tracking[key], "unknown tracking sink; known: mlflow")
    mlflow = parse(MlflowSpec, tracking.get("mlflow"), "tracking.mlflow")
    return SweepSpec(name, train, search, asha, resources, metric, mode, results_dir, budget, description,
                     checkpoints, mlflow)


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``--set trainer.lr=0.1`` and ``--set search.space.lr='{loguniform: [1e-3, 1]}'``: the
    value is read as YAML, the key is a dotted path into the spec."""
    import yaml
    out = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "must be KEY=VALUE, such as trainer.lr=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}", text, f"not YAML: {str(exc).splitlines()[0]}") from None
        node = out
        parts = key.split(".")
        if parts[0] == "search" and len(parts) > 3 and parts[1] == "space":
            parts = parts[:2] + [".".join(parts[2:])]   # space keys may hold dots: model.width
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def load(path: str, overrides: Sequence[str] = ()) -> SweepSpec:
    """A spec file, or ``env:NAME``: the YAML in that environment variable (how a submitted
    job receives its resolved spec)."""
    import yaml
    from_env = path.startswith("env:")
    if from_env and path[4:] not in os.environ:
        raise ConfigError("spec", path, f"the environment has no {path[4:]}")
    if not from_env and not os.path.isfile(path):
        raise ConfigError("spec", path, "no such file")
    try:
        if from_env:
            raw = yaml.safe_load(os.environ[path[4:]])
        else:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("spec", path, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise ConfigError("spec", path, "is empty; start from examples/digits.yaml (a spec needs at least a dataset)")
    if not isinstance(raw, Mapping):
        raise ConfigError("spec", path, "must hold a mapping at the top level")
    raw = apply_overrides(dict(raw), overrides)
    stem = os.path.splitext(os.path.basename(path))[0]
    return from_dict(raw, default_name=stem)


def grid_size(spec: SweepSpec) -> int:
    size = 1
    for dim in spec.search.space:
        if dim.kind == "grid":
            size *= len(dim.values)
    return size


def trial_count(spec: SweepSpec) -> int:
    """Trials the sweep will start: Ray repeats the whole grid num_samples times, and the
    points_to_evaluate are the first of those samples, not extra ones."""
    return grid_size(spec) * max(spec.search.num_samples, len(spec.search.points_to_evaluate))
