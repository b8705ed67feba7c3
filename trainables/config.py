"""Typed, validated configuration of one training run, on pydantic models.

Everything that enters from outside (a YAML spec, a command-line override, a value
sampled by a search algorithm) passes through ``parse`` once, and a bad value becomes
a ``ConfigError`` that names the field and the value on one line. Nothing downstream
re-checks. The models are frozen; their field descriptions and constraints are also the
spec's JSON Schema (``tunesmith schema``).
"""
from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Dict, Literal, Mapping, Optional, Tuple, Type, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError


_URI_SECRET = re.compile(r"([A-Za-z][\w+.-]*://)[^/@\s:'\"]*:[^/@\s'\"]*@")
_SECRET_QUERY = re.compile(r"((?:secret|password|passwd|token|session|access_key|credential)[\w-]*=)[^&\s'\"]*", re.I)


def redact(text: str) -> str:
    """Any URI in ``text`` with its credentials shown as ***: a password or secret key before
    the @, and query values named like secrets. For everything written or printed."""
    return _SECRET_QUERY.sub(r"\1***", _URI_SECRET.sub(r"\1***@", text))


SHOWN_CHARS = 120   # an error shows this much of a value: one line, even for a YAML alias bomb


def shown(value: Any) -> str:
    """``repr(value)`` cut to SHOWN_CHARS, drawn to a bounded depth and length (reprlib): the
    whole repr of a large or deeply nested value is never built."""
    import reprlib
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 6, 6, 6, 6
    short.maxstring, short.maxother, short.maxlong = SHOWN_CHARS, SHOWN_CHARS, 40
    text = redact(short.repr(value))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


class ConfigError(ValueError):
    """A bad value in a spec: ``field = value: problem`` on one line."""

    def __init__(self, field: str, value: Any, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field} = {shown(value)}: {problem}")

    def __reduce__(self):   # crosses process boundaries (Ray) and copy.copy intact
        return (type(self), (self.field, self.value, self.problem))


# --- field types: YAML reads ``1e-3`` as a string (YAML 1.1 wants a dot), so numbers accept
# numeric strings (pydantic's lax mode); a bool is never a number. ---------------------------

def _no_bool(kind: str):
    def check(v):
        if isinstance(v, bool):
            raise PydanticCustomError(f"{kind}_type", "bool")
        return v
    return BeforeValidator(check)


NO_BOOL_FLOAT, NO_BOOL_INT = _no_bool("float"), _no_bool("int")
Num = Annotated[float, NO_BOOL_FLOAT]
Int = Annotated[int, NO_BOOL_INT]
# An optional constrained number puts its constraint before NO_BOOL_*, or the JSON Schema gets
# pydantic's "gt" in place of "exclusiveMinimum".
OptPosInt = Optional[Annotated[int, Field(gt=0), NO_BOOL_INT]]       # null, or a whole number > 0
OptPosNum = Optional[Annotated[float, Field(gt=0), NO_BOOL_FLOAT]]   # null, or a number > 0


class Section(BaseModel):
    """A frozen spec section: unknown keys refused, NaN and infinity refused."""
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


M = TypeVar("M", bound=BaseModel)

_PROBLEMS = {
    "float_type": "must be a number", "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "list_type": "must be a list", "tuple_type": "must be a list",
    "missing": "is required", "string_too_short": "must not be empty",
    "too_short": "too few items", "too_long": "too many items",
}

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _problem(err: dict, parent: Optional[Type[BaseModel]]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden" and parent is not None:
        return f"unknown key; known: {', '.join(parent.model_fields)}"
    if kind == "literal_error":
        return f"unknown; choose from {ctx.get('expected', '').replace(chr(39), '')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        # an int bound whole (2**32 - 1 read "4.29497e+09"), a float one short
        return f"must be {_BOUNDS[kind]} {bound:g}" if isinstance(bound, float) else f"must be {_BOUNDS[kind]} {bound}"
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "string_pattern_mismatch":
        return "use letters, digits, '.', '_' and '-' only"
    return err["msg"][:1].lower() + err["msg"][1:]


def _model_at(root: Type[BaseModel], loc: tuple) -> Optional[Type[BaseModel]]:
    """The model class that holds the field at ``loc`` (to list its known keys)."""
    model: Any = root
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        model = args[0] if typing.get_origin(ann) is typing.Union and len(args) == 1 else ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def config_error(exc: ValidationError, root: Type[BaseModel], prefix: str = "") -> ConfigError:
    """pydantic's first error as ``field = value: problem``; a ConfigError raised inside a
    validator (a cross-field check) comes back as it was."""
    err = exc.errors(include_url=False)[0]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):
        return inner
    raw_loc = tuple(err["loc"])
    if err["type"] == "missing" and raw_loc and isinstance(raw_loc[-1], int):
        raw_loc, err = raw_loc[:-1], {**err, "type": "too_short"}   # [min] where [min, max] is wanted
    loc = tuple(str(p) if not isinstance(p, int) else f"[{p}]" for p in raw_loc)
    field = ".".join(p for p in (prefix, *loc) if p).replace(".[", "[")
    parent = _model_at(root, raw_loc[:-1])
    value = err.get("input")
    return ConfigError(field or "spec", value, _problem(err, parent))


def parse(cls: Type[M], data: Optional[Mapping[str, Any]], prefix: str) -> M:
    """Build model ``cls`` from a mapping, refusing unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, data, "must be a mapping")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise config_error(exc, cls, prefix) from None


def to_dict(obj: BaseModel) -> dict:
    return obj.model_dump(mode="json")


# --- the configuration of one training run ---------------------------------------------------
# Names are listed here, not imported from the registries, so that validating a spec does not
# import torch (2.4 s); tests/test_models.py checks that the registries match these lists.
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "imagefolder", "synthetic", "glyphs", "shapes",
            "letters", "objects", "materials", "novel_objects")
MODELS = ("small_cnn", "lenet", "resnet18", "resnet34")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "rprop")
SCHEDULE_NAMES = ("constant", "step", "warmup_cosine", "triangular", "one_cycle")
AUGMENTS = ("none", "flip_crop", "crop", "photo")
# torchvision's names for what ``dataset.augment`` may list; "photo" is the first three
TV_AUGMENTS = ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomCrop")
LIBRARIES = ("timm", "torchvision")   # model.name "timm:<name>" or "torchvision:<name>"


def _model_name(v):
    """A built-in name, or ``timm:<name>`` / ``torchvision:<name>`` (checked against the
    library's registry where the model is built: trainables/backbones.py)."""
    if isinstance(v, str):
        lib, sep, rest = v.partition(":")
        if sep and lib in LIBRARIES and rest.strip():
            return v
        if not sep and v in MODELS:
            return v
        if sep and lib in LIBRARIES:
            raise ValueError(f"name the {lib} model after '{lib}:'")
        raise ValueError(f"unknown; choose from {', '.join(MODELS)}, or timm:<name> or torchvision:<name> "
                         "(tunesmith models lists them)")
    return v


def _augment(v):
    """One preset name, or a list of torchvision's transform names."""
    if isinstance(v, (list, tuple)):
        bad = [a for a in v if a not in TV_AUGMENTS]
        if bad:
            raise ValueError(f"unknown transform {bad[0]!r}; choose from {', '.join(TV_AUGMENTS)}")
        if len(set(v)) != len(v):
            raise ValueError("a transform is listed twice")
        return tuple(v)
    return v
PRECISIONS = ("auto", "fp32", "bf16")


class DatasetConfig(Section):
    """The data: a bundled or generated set, a torchvision set, or an image folder."""
    name: Literal[DATASETS] = "digits"
    data_dir: Optional[str] = Field(None, description="torchvision sets and imagefolder: where the files are")
    download: bool = Field(False, description="torchvision sets: download when missing (only when asked)")
    val_fraction: Num = Field(0.25, gt=0, lt=1, description="share held out for validation")
    test_fraction: Num = Field(0.15, ge=0, lt=1, description="share held out as the test split, read only by the "
                               "finalists' final models (0: none; torchvision sets and an imagefolder's test/ "
                               "folder are their own)")
    split_seed: Int = Field(0, description="the split never moves with the trial seed")
    image_size: OptPosInt = Field(None, description="imagefolder and synthetic: side in pixels")
    channels: Optional[Annotated[int, Field(ge=1, le=3), NO_BOOL_INT]] = Field(
        None, description="1 (grey) or 3 (RGB); null: the data's own (an imagefolder is grey when every image of a sample of 64 is)")
    num_classes: Int = Field(10, ge=2, le=100000, description="synthetic only")
    num_samples: Int = Field(4096, gt=0, description="synthetic only")
    train_per_class: OptPosInt = Field(None, description="train on at most this many images of each class "
                                       "(small data, learning curves); the validation part is unchanged")
    augment: Annotated[Union[Literal[AUGMENTS], Tuple[str, ...]], BeforeValidator(_augment)] = Field(
        "none", description="per batch, on the trial's device: none, crop, flip_crop, photo "
        "(RandomResizedCrop, RandomHorizontalFlip, ColorJitter), or a list of those torchvision names")
    stream: Optional[bool] = Field(None, description="imagefolder: stream from disk (true), keep in memory "
                                   "(false), or decide by the memory budget (null)")
    memory_budget: Num = Field(0.25, gt=0, le=1, description="share of the node's free memory a decoded "
                               "dataset may take before it streams")
    workers: OptPosInt = Field(None, description="streaming: decoding worker processes")

    @model_validator(mode="after")
    def _shares(self):
        if self.val_fraction + self.test_fraction >= 0.95:
            raise ConfigError("dataset.test_fraction", self.test_fraction, f"with val_fraction {self.val_fraction:g} "
                              "leaves under 5% of the images to train on")
        return self


class ModelConfig(Section):
    """The network: a built-in one, or any timm or torchvision classifier by name."""
    name: Annotated[str, BeforeValidator(_model_name), WithJsonSchema(
        {"anyOf": [{"enum": list(MODELS)}, {"type": "string", "pattern": "^(timm|torchvision):.+"}]})] = Field(
        "small_cnn", description="small_cnn, lenet, resnet18, resnet34, timm:<name> or torchvision:<name>")
    pretrained: bool = Field(False, description="timm:/torchvision: the library's weights for the name, "
                             "from its cache (TORCH_HOME, HF_HOME)")
    download: bool = Field(False, description="pretrained: fetch the weights when the cache lacks them "
                           "(only when asked)")
    weights: Optional[str] = Field(None, description="weights to start from: a state dict, a safetensors "
                                   "file, or an earlier sweep's kept checkpoint (its trainer.pt, its "
                                   "folder, or the sweep's folder)")
    small_input: Optional[bool] = Field(None, description="a stride-1 stem without its max-pool for "
                                        "small images; null: for images of 32 px and below")
    backbone_lr: Num = Field(1.0, gt=0, le=1, description="the backbone's LR as a share of the head's "
                             "(discriminative LRs for fine-tuning)")
    freeze_epochs: Num = Field(0.0, ge=0, description="epochs that train the head alone, the backbone "
                               "frozen, before the whole network trains")
    freeze_bn: bool = Field(False, description="keep BatchNorm's statistics as they were loaded (eval mode)")

    @property
    def library(self) -> Optional[str]:
        """"timm" or "torchvision" for a model named from a library, else None."""
        lib, sep, _ = self.name.partition(":")
        return lib if sep else None

    @property
    def fine_tunes(self) -> bool:
        """Training starts from learnt weights: the library's or a file's."""
        return self.pretrained or self.weights is not None

    @model_validator(mode="after")
    def _cross_fields(self):
        if self.pretrained and self.library is None:
            raise ConfigError("model.pretrained", True, f"{self.name} has no published weights; name a "
                              "timm:<name> or torchvision:<name> model, or give model.weights")
        if self.pretrained and self.weights is not None:
            raise ConfigError("model.weights", self.weights, "set either model.pretrained or model.weights")
        if self.download and not self.pretrained:
            raise ConfigError("model.download", True, "only fetches the library's weights: set model.pretrained")
        return self
    width: Int = Field(16, gt=0, description="small_cnn: channels of the first block")
    depth: Optional[Annotated[int, Field(ge=1, le=8), NO_BOOL_INT]] = Field(
        None, description="small_cnn: blocks, each halving the size; null: down to 4x4 (2 for 8 px, 3 for 32 px)")
    batch_norm: bool = True
    dropout: Num = Field(0.0, ge=0, lt=1)


class TrainerConfig(Section):
    """Optimiser, schedule and loop of one trial."""
    epochs: Int = Field(10, gt=0)
    per_gpu_batch_size: Int = Field(32, gt=0, description="scaled by the GPU count (or ranks)")
    optimizer: Literal[OPTIMIZERS] = "sgd"
    lr: Num = Field(0.05, gt=0, description="the peak LR of one_cycle and triangular")
    momentum: Num = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: Num = Field(5e-4, ge=0)
    label_smoothing: Num = Field(0.0, ge=0, lt=1)
    schedule: Literal[SCHEDULE_NAMES] = "one_cycle"
    warmup_epochs: Num = Field(1.0, ge=0)
    step_epochs: Num = Field(10.0, gt=0)
    step_gamma: Num = Field(0.1, gt=0, le=1)
    min_lr_ratio: Num = Field(0.0, ge=0, le=1)
    div_factor: Num = Field(10.0, ge=1, description="one_cycle: start LR = lr / div_factor (Smith: 10)")
    final_div: Num = Field(100.0, ge=1)
    annihilation: Num = Field(0.1, ge=0, lt=1, description="one_cycle: share of steps that anneal below the start")
    cycle_epochs: Num = Field(4.0, gt=0)
    cycle_momentum: bool = True
    max_momentum: Num = Field(0.95, ge=0, lt=1)
    min_momentum: Num = Field(0.85, ge=0, lt=1)
    scale_lr: bool = Field(False, description="lr x devices: linear scaling with the global batch")
    divergence_factor: Num = Field(4.0, gt=1, description="stop when the loss exceeds this x its best")
    precision: Literal[PRECISIONS] = Field("auto", description="auto: bf16 on GPU")
    eval_batch_size: Int = Field(1024, gt=0)
    preview_every: Int = Field(0, ge=0, description="epochs between prediction grids in TensorBoard")
    milestones: Tuple[Int, ...] = Field((), description="set by the sweep from ASHA's rungs: epochs where "
                                        "one_cycle and warmup_cosine end a segment; () is one schedule")

    @model_validator(mode="after")
    def _cross_fields(self):
        if self.min_momentum > self.max_momentum:
            raise ConfigError("trainer.min_momentum", self.min_momentum,
                              f"must not exceed trainer.max_momentum ({self.max_momentum})")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("trainer.nesterov", True, "needs trainer.momentum > 0")
        return self


SECTIONS = {"dataset": DatasetConfig, "model": ModelConfig, "trainer": TrainerConfig}


class TrainConfig(BaseModel):
    """One trial's whole configuration: what the trainer receives."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    seed: Int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> "TrainConfig":
        """The sections (and seed) of ``data``, which may be a whole spec; a missing or null
        section takes its defaults."""
        return parse(cls, {k: data[k] for k in (*SECTIONS, "seed") if data.get(k) is not None}, prefix)

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


CONFIRM = "confirm"   # a confirmation trial's config: {"confirm": {settings..., "seed": s, "of": trial id}}


def unpack(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """(the settings a trial trains with, the search trial it confirms or None). A confirmation
    trial is a finalist's settings with a new seed, trained for its full schedule: the only kind
    whose final model reads the test split (#28)."""
    if CONFIRM not in config:
        return dict(config), None
    point = dict(config[CONFIRM])
    of = point.pop("of", None)
    return {**{k: v for k, v in config.items() if k != CONFIRM}, **point}, of


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
    known = list(SECTIONS[section].model_fields)
    if name not in known:
        raise ConfigError(where, key, f"no such {section} field; known: {', '.join(known)}")
    return section, name


def _plain(value):
    """numpy scalars (from search algorithms) to Python values."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, tuple, dict)) else value


def schedule_params(t: TrainerConfig, lr: float):
    from tunesmith.trainables.schedules import ScheduleParams
    return ScheduleParams(lr=lr, warmup_epochs=t.warmup_epochs, step_epochs=t.step_epochs,
                          step_gamma=t.step_gamma, min_lr_ratio=t.min_lr_ratio,
                          div_factor=t.div_factor, final_div=t.final_div,
                          annihilation=t.annihilation, cycle_epochs=t.cycle_epochs,
                          max_momentum=t.max_momentum, min_momentum=t.min_momentum,
                          cycle_momentum=t.cycle_momentum, milestones=tuple(t.milestones))
