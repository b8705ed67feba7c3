"""The sweep spec: a YAML file plus command-line overrides, validated once into frozen,
typed objects. Any bad value is a ConfigError naming the field and the value; nothing is
started or written before the whole spec has passed.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import ConfigDict, Field, PlainValidator, PrivateAttr, WithJsonSchema, model_validator

from tunesmith.orchestrator.search_spec import SearchSpec, apply_presets, resolve_search
from tunesmith.trainables.config import (NO_BOOL_INT, ConfigError, DatasetConfig, Int, ModelConfig, Num,
                                         OptPosInt, OptPosNum, Section, TrainConfig, TrainerConfig, parse,
                                         to_dict)

ALGORITHMS = ("grid", "random", "quasi", "tpe")
METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class AshaSpec(Section):
    """ASHA early stopping: every trial gets grace_period epochs, then the best 1/reduction_factor
    go on at each rung."""
    enabled: bool = True
    max_t: OptPosInt = Field(None, description="default: trainer.epochs")
    grace_period: OptPosInt = Field(
        None, description="epochs every trial is granted; null: a third of max_t (at least 1), where "
                          "the first rung ranks trials as they end (bench/rung_correlation.py)")
    reduction_factor: Num = Field(3.0, gt=1)
    budget_aware: bool = Field(False, description="true: one_cycle and warmup_cosine are planned to end at "
                               "each rung (warm restarts when promoted); false: one schedule over max_t, "
                               "which did better in bench/quality.py")
    floor: Optional[Num] = Field(None, description="a metric value no better than which a trial is pruned at "
                                 "any rung, even as the first to reach it (ASHA passes the first whatever it "
                                 "scored); smith sets it to chance, the validation part's largest class share")


class ResourceSpec(Section):
    """What one trial holds."""
    cpus: Num = Field(1.0, gt=0)
    gpus: Num = Field(0.0, ge=0, description="a fraction shares a GPU; above 1, a whole number: one "
                      "data-parallel rank per GPU")
    workers: Int = Field(1, gt=0, description="data-parallel ranks on CPUs (gloo); with gpus above 1, one "
                         "rank per GPU (nccl) instead")

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpus > 1 and not float(self.gpus).is_integer():
            raise ConfigError("resources.gpus", self.gpus, "above 1 must be a whole number")
        if self.gpus > 1 and self.workers not in (1, int(self.gpus)):
            raise ConfigError("resources.workers", self.workers,
                              f"with resources.gpus {self.gpus:g}, a trial runs one rank per GPU; leave workers at 1")
        return self

    @property
    def ranks(self) -> int:
        """Processes a trial trains with: DDP through Ray Train when above 1."""
        return int(self.gpus) if self.gpus > 1 else self.workers


class CheckpointSpec(Section):
    """Per-trial checkpoints, for retries on a lost node and for loading the winner."""
    every: Int = Field(1, ge=0, description="epochs between checkpoints; 0: never")
    keep: Literal["best", "all", "none"] = Field("best", description="what stays after a trial ends")
    max_failures: Int = Field(2, ge=-1, description="retries of a failed trial from its last checkpoint (a lost worker or node; Tune retries any error); -1: forever")


def _seeds(v):
    """confirm.seeds: auto, or a whole number of new seeds from 1 to 100."""
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100):
        return v
    raise ValueError("must be auto or a whole number from 1 to 100")


class ConfirmSpec(Section):
    """After the search, the best configurations trained again with new seeds, for their full
    schedule: the winner is the best mean (rank_by) over its seeds (the new ones and its own search run), and each
    new final model reads the test split once."""
    top: Int = Field(2, ge=0, description="finalists: the search's best configurations; 0: no confirmation")
    seeds: Annotated[Union[str, int], PlainValidator(_seeds), WithJsonSchema(
        {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 100}]})] = Field(
        "auto", description="new seeds for each finalist (the same seeds for all: a paired comparison), beside the "
                            "search's own run of each where it trained its whole schedule (every search trial shares "
                            "the sweep's seed); auto: two where they fit in the workers of one round or, without a "
                            "time budget, in 30% of the search's wall time, else one")
    rank_by: Literal["late_val_loss", "val_loss", "metric"] = Field(
        "late_val_loss", description="what ranks the finalists over their seeds, and what the verdict between the first "
                                     "two compares: late_val_loss, each run's validation loss over the second half of "
                                     "its epochs, which carries less of one epoch's luck (and chooses the finalists: of "
                                     "the search's 3 x top best, at most its top fifth, where all trained their whole "
                                     "schedule, the top with the lowest); val_loss, its final epoch's; or metric")

    @property
    def least_seeds(self) -> int:
        """The new seeds each finalist gets at least: one for "auto"."""
        return 1 if self.seeds == "auto" else self.seeds


class MlflowSpec(Section):
    """MLflow as a second tracking sink (pip install 'tunesmith[mlflow]')."""
    uri: Optional[str] = Field(None, description="tracking server, e.g. http://127.0.0.1:5000; null: off")
    experiment: str = "tunesmith"


class TrackingSpec(Section):
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)


_BOUNDS = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_VALUES = {"type": "array", "minItems": 1}
DIMENSION_SCHEMA = {
    "description": "one of {loguniform: [low, high]}, {uniform: [low, high]}, {randint: [low, high)}, "
                   "{choice: [...]}, {grid: [...]}",
    "oneOf": [{"type": "object", "properties": {kind: bounds}, "required": [kind], "additionalProperties": False}
              for kind, bounds in (("loguniform", _BOUNDS), ("uniform", _BOUNDS), ("randint", _BOUNDS),
                                   ("choice", _VALUES), ("grid", _VALUES))]}
# A dimension's own rules (bounds in order, loguniform above 0, values the trainer accepts) are
# checked by search_spaces.space.Dimension.parse with the trainer's validation, after the file.
DimensionText = Annotated[Any, WithJsonSchema(DIMENSION_SCHEMA)]


class SearchFile(Section):
    """How the space is searched."""
    algorithm: Literal[ALGORITHMS] = Field("random", description="grid, random, quasi (random, spread evenly: a scrambled "
                                                                     "Halton sequence) or tpe (Bayesian, hyperopt)")
    num_samples: Optional[Annotated[int, Field(ge=1), NO_BOOL_INT]] = Field(
        None, description="trials to draw (default 16); a space of grids and choices only is walked once, "
                          "or N times with N seeds when given")
    max_concurrent: Optional[Annotated[int, Field(ge=1), NO_BOOL_INT]] = Field(
        None, description="default: as many as the resources fit")
    n_initial_points: Int = Field(8, ge=1, description="tpe: random trials before the model takes over")
    space: Optional[Dict[str, DimensionText]] = Field(
        None, description="setting: dimension; bare names are trainer fields, others read model.width, "
                          "dataset.augment, seed")
    points_to_evaluate: Optional[List[Dict[str, Any]]] = Field(None, description="settings tried first")
    presets: Optional[List[str]] = Field(None, description="named ranges from Smith's papers "
                                         "(`tunesmith presets` lists them)")
    lr_band: Optional[Tuple[Num, Num]] = Field(None, description="[min, max]: what smith's range test found")
    lr_momentum_ref: Optional[Annotated[float, Field(ge=0, lt=1)]] = Field(
        None, description="quasi: the lr drawn is the LR at this momentum; each trial's lr is scaled by "
                          "(1 - m) / (1 - ref) for its own max_momentum (or momentum) m, so that the effective "
                          "step lr / (1 - m) is what is spread evenly (smith --coupling effective sets it to "
                          "trainer.momentum, the range test's)")


def default_grace(max_t: int) -> int:
    """ASHA's first rung at a third of the run: under 1cycle, accuracy after the first epoch or
    two ranks trials poorly (Spearman 0.50 to 0.81 against their final accuracy on the quality
    datasets), after a third of the run well (0.81 to 0.96)."""
    return max(1, max_t // 3)


def json_schema() -> dict:
    """The spec's JSON Schema, for editors (`tunesmith schema`)."""
    from tunesmith.search_spaces.presets import list_presets
    schema = SweepSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    search = schema["$defs"]["SearchFile"]["properties"]["presets"]
    search["anyOf"][0]["items"] = {"enum": list_presets()}
    return schema


class SweepSpec(Section):
    """A tunesmith sweep spec: what `tunesmith run`, `smith` and `submit` read."""
    # Validated once and frozen. Its sections are as written, with two defaults filled in (mode
    # from the metric, asha.grace_period from max_t); `train` is one trial's configuration and
    # `plan` the search resolved against it. A changed spec is model_copy(update=...) where nothing
    # derived moves, else derive(...), which validates the whole spec again.
    model_config = ConfigDict(title="tunesmith sweep spec")
    name: Optional[str] = Field(None, pattern=NAME_RE.pattern, description="default: the spec file's name")
    description: str = ""
    # numpy's and hyperopt's generators take 0 to 2**32 - 1: the search of a seed outside that failed
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="the trials' seed, and the search's")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    search: SearchFile = Field(default_factory=SearchFile)
    asha: AshaSpec = Field(default_factory=AshaSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    metric: Literal[tuple(METRICS)] = "val_acc"
    mode: Optional[Literal["min", "max"]] = Field(None, description="default: the metric's own direction")
    results_dir: str = Field("results", min_length=1, description="a path, or a URI such as s3://bucket/prefix")
    time_budget_s: OptPosNum = Field(None, description="the command's wall-clock budget in seconds, from its start (Ray's start-up and smith's stages included)")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    _plan: Optional[SearchSpec] = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self):
        # defaults that depend on other fields, set once here (the model is frozen afterwards)
        from tunesmith.trainables.data_check import check_data_dir_given
        check_data_dir_given(self.dataset)
        if self.mode is None:
            object.__setattr__(self, "mode", METRICS[self.metric])
        max_t = self.asha.max_t or self.trainer.epochs
        if max_t > self.trainer.epochs:   # ASHA would never prune, and every full trial read "stopped after 10 of 100"
            raise ConfigError("asha.max_t", self.asha.max_t, f"must not exceed trainer.epochs ({self.trainer.epochs})")
        if self.asha.grace_period is None:
            object.__setattr__(self, "asha", self.asha.model_copy(update={"grace_period": default_grace(max_t)}))
        if self.asha.enabled and self.asha.grace_period > max_t:   # off, it is never read
            raise ConfigError("asha.grace_period", self.asha.grace_period, f"must not exceed asha.max_t ({max_t})")
        self._plan = resolve_search(self.search, self.train, tuple(self.search.presets or ()))
        return self

    @property
    def train(self) -> TrainConfig:
        """One trial's configuration: the dataset, model and trainer sections, and the seed."""
        return TrainConfig(dataset=self.dataset, model=self.model, trainer=self.trainer, seed=self.seed)

    @property
    def plan(self) -> SearchSpec:
        """The search resolved against the trainer: dimensions, trials, whole points."""
        return self._plan

    @property
    def mlflow(self) -> MlflowSpec:
        return self.tracking.mlflow

    @property
    def max_t(self) -> int:
        return self.asha.max_t or self.trainer.epochs

    @property
    def milestones(self) -> Tuple[int, ...]:
        """Where the trials' schedules end a segment, matching ASHA's rungs; () when the
        schedule runs whole (ASHA off, not budget-aware, or a schedule that does not anneal)."""
        from tunesmith.trainables.schedules import BUDGET_AWARE, rung_milestones
        if not (self.asha.enabled and self.asha.budget_aware) or self.trainer.schedule not in BUDGET_AWARE:
            return ()
        if self.max_t != self.trainer.epochs:
            return ()   # rungs beyond the schedule's length cannot be planned for
        return rung_milestones(self.max_t, self.asha.grace_period, self.asha.reduction_factor)

    @property
    def rungs(self) -> Tuple[int, ...]:
        """The epochs where ASHA judges: the budget-aware milestones but the last, or Tune's own
        rungs (grace x reduction^k below max_t); () without ASHA."""
        if not self.asha.enabled:
            return ()
        if self.milestones:
            return tuple(self.milestones[:-1])
        g, rf = self.asha.grace_period, self.asha.reduction_factor
        return tuple(int(round(g * rf ** k)) for k in range(64) if g * rf ** k < self.max_t)

    def trial_config(self) -> dict:
        """The TrainConfig every trial starts from, with the budget-aware milestones."""
        return self.train.with_overrides({"milestones": list(self.milestones)}).to_dict()

    def derive(self, *, drop_trainer: Sequence[str] = (), **changes) -> "SweepSpec":
        """A new spec from this one, validated again as a whole: ``trainer``, ``model`` and
        ``dataset`` mappings update those sections, ``search`` and ``asha`` mappings replace
        theirs, and any other key (``name``, ``time_budget_s``, ``seed``) is set. ``drop_trainer``:
        trainer fields to reset to their defaults, or to what a search preset sets."""
        raw = self.to_dict(secrets=True)
        for key, value in changes.items():
            if key in ("trainer", "model", "dataset"):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        raw["trainer"] = {k: v for k, v in raw["trainer"].items() if k not in drop_trainer}
        return from_dict(raw)

    def to_dict(self, secrets: bool = False) -> dict:
        """The resolved spec as plain data (spec.yaml): presets expanded, defaults filled in, and
        credentials in URIs shown as *** unless ``secrets`` (a derived spec, a submitted job)."""
        from tunesmith.trainables.config import redact
        out = {"name": self.name, "description": self.description, "seed": self.seed,
                "dataset": to_dict(self.dataset), "model": to_dict(self.model), "trainer": to_dict(self.trainer),
                "search": self.plan.to_dict(), "asha": to_dict(self.asha),
                "resources": to_dict(self.resources), "metric": self.metric, "mode": self.mode,
                "results_dir": self.results_dir, "time_budget_s": self.time_budget_s,
                "checkpoints": to_dict(self.checkpoints), "confirm": to_dict(self.confirm), "tracking": {"mlflow": to_dict(self.mlflow)}}
        if not secrets:
            out["results_dir"] = redact(out["results_dir"])
            if out["tracking"]["mlflow"]["uri"]:
                out["tracking"]["mlflow"]["uri"] = redact(out["tracking"]["mlflow"]["uri"])
        return out


def from_dict(raw: Mapping[str, Any], default_name: str = "sweep") -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("spec", raw, "must be a mapping at the top level")
    raw, _ = apply_presets(raw)
    return parse(SweepSpec, {**raw, "name": raw.get("name", default_name)}, "")


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
    if not from_env:
        raw = anchor_paths(raw)
    stem = os.path.splitext(os.path.basename(path))[0]
    return from_dict(raw, default_name=stem)


LOCAL_PATHS = (("dataset", "data_dir"), ("model", "weights"))


def anchor_paths(raw: dict) -> dict:
    """``dataset.data_dir`` and ``model.weights`` given relative are read from where the command
    runs, made absolute here: a trial runs in its own folder (Tune's working directory), where
    ``data/photos`` would name nothing. ``~`` is left for each node to expand."""
    out = dict(raw)
    for section, key in LOCAL_PATHS:
        part = out.get(section)
        value = part.get(key) if isinstance(part, Mapping) else None
        if isinstance(value, str) and value and "://" not in value and not value.startswith("~") \
                and not os.path.isabs(value):
            out[section] = {**part, key: os.path.abspath(value)}
    return out


def grid_size(spec: SweepSpec) -> int:
    size = 1
    for dim in spec.plan.space:
        if dim.kind == "grid":
            size *= len(dim.values)
    return size


def trial_count(spec: SweepSpec) -> int:
    """Trials the sweep will start: Ray repeats the whole grid num_samples times, and the
    points_to_evaluate are the first of those samples, not extra ones."""
    return grid_size(spec) * max(spec.plan.num_samples, len(spec.plan.points_to_evaluate))


def plan_text(spec: SweepSpec, budgeted: Optional[bool] = None) -> str:
    """What the sweep will run, in words: '16 trials: random search over lr, weight_decay',
    '1 trial: the spec's own settings (no search space)', or a seed-variance study; 'up to 16
    trials' where a time budget (``budgeted``, default: the spec's time_budget_s) may end it
    sooner (smith's "1000 trials" ran 836)."""
    keys = [d.key for d in spec.plan.space]
    n = trial_count(spec)
    if not keys:
        what = "the spec's own settings (no search space)"
    elif keys == ["seed"]:
        what = "a seed-variance study (the spec's own settings, each trial with its own seed)"
    else:
        what = f"{spec.plan.algorithm} search over {', '.join(keys)}"
    # no more finalists than trials, or than settings (a seed-variance study has one)
    c, top = spec.confirm, min(spec.confirm.top, n, 1 if keys in ([], ["seed"]) else n)
    seeds = f"{c.least_seeds} new seed{'s' if c.least_seeds > 1 else ''}"
    auto = " (2 where they fit: confirm.seeds auto)" if c.seeds == "auto" else ""
    then = ""
    if top == 1:
        then = f", then the best confirmed with {seeds}{auto} beside its own whole run"
    elif top > 1:
        then = f", then the {top} best confirmed with {seeds} each{auto} beside their own whole runs"
    budgeted = bool(spec.time_budget_s) if budgeted is None else budgeted
    return f"{'up to ' if budgeted and n > 1 else ''}{n} trial{'' if n == 1 else 's'}: {what}{then}"
