"""The models a spec can name: `tunesmith models`, and the check of a spec's models before Ray
starts (a name its library knows, weights in the cache, a weights file that is a checkpoint)."""
from __future__ import annotations

import sys
from typing import Dict, Optional

from tunesmith.trainables.config import ConfigError


def model_line(train) -> Optional[str]:
    """The sweep's "model:" line for a library model or one started from weights (None for a
    built-in one trained from scratch): where the weights come from, the stem, and how a weights
    file fits the data's classes, by name. The model is built on the meta device (no memory)."""
    m, ds = train.model, train.dataset
    if not (m.library or m.weights):
        return None
    try:
        return _model_line(m, ds)
    except (ConfigError, OSError) as exc:   # the files live on the cluster's nodes, not here
        return f"{m.name} (not read on this machine: {exc}; the trials read it where they run)"


def _model_line(m, ds) -> str:
    import torch
    from tunesmith.trainables import backbones, data as data_mod
    from tunesmith.trainables.finetune import model_notes
    from tunesmith.trainables.models import build_model
    if ds.name == "imagefolder":
        from tunesmith.trainables import folder
        plan = folder.scan(ds)
        shape, classes = (plan.channels, plan.size, plan.size), len(plan.classes)
    else:
        data = data_mod.load(ds)
        shape, classes = data.shape, data.num_classes
    parts = [m.name]
    if m.pretrained:
        found = backbones.published(*backbones.split(m.name))
        parts.append(f"pretrained weights {found.tag} from {found.file or 'the library (model.download)'}, "
                     f"the data normalised with their mean and std")
    import warnings
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # weights copied into meta tensors: a no-op, as meant
        net = build_model(m.model_copy(update={"pretrained": False}), shape, classes)
    parts.append(f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, head of {classes} classes")
    notes = model_notes(net)
    if notes:
        parts.append(notes)
    elif m.library:
        parts.append(f"the library's own stem (images of {shape[1]} px; model.small_input: true changes it)")
    return "; ".join(parts)


def check_inputs(spec, local: bool = True) -> None:
    """The data's files (where the trials run here) and the models, before Ray starts."""
    from tunesmith.trainables.data_check import check_dataset_files
    if local:
        check_dataset_files(spec.train.dataset)
    check_models(spec, local)


def check_models(spec, local: bool = True) -> None:
    """Every model the sweep may build (the spec's, and each value a search gives model.name)
    is one its library knows; where the trials run here, its pretrained weights are in the cache
    and its weights file is a checkpoint. A sweep of built-in models from scratch imports
    nothing (torch imports while Ray starts, not before)."""
    base = spec.train.model
    names = [base.name] + [v for d in spec.plan.space if d.key == "model.name" for v in d.values]
    if base.weights is None and not any(":" in str(n) for n in names):
        return
    from tunesmith.trainables import backbones
    for name in dict.fromkeys(names):
        model = base if name == base.name else base.model_copy(update={"name": name})
        try:
            state = backbones.check(model) if local else (backbones.check_name(model) if model.library else None)
            if state is not None:   # the weights file's: some of its tensors fit the model
                from tunesmith.trainables.models import check_weights_fit
                side = spec.train.dataset.image_size or 32
                check_weights_fit(model, (spec.train.dataset.channels or 3, side, side), state)
        except ConfigError as exc:
            if name != base.name and exc.field == "model.name":
                raise ConfigError("search.model.name", name, exc.problem) from None
            raise


def cmd_models(args) -> int:
    """The models a spec can name, read from timm's and torchvision's own registries, a line
    each as it is counted (parameters come from a build on the meta device: no memory)."""
    from tunesmith.trainables import backbones
    from tunesmith.trainables.config import MODELS, ModelConfig
    from tunesmith.trainables.models import build_model
    import fnmatch
    pattern = args.pattern
    glob = (pattern if any(c in pattern for c in "*?[") else f"*{pattern}*") if pattern else "*"
    shown = 0

    def row(name: str, params: str, weights: str) -> None:
        nonlocal shown
        if not shown:
            print(f"{'name':<52} {'parameters':>10}  weights (library models at 1000 classes; built-ins at 10 classes, 32 px)")
        print(f"{name:<52} {params:>10}  {weights}", flush=True)
        shown += 1
    for name in MODELS:
        if fnmatch.fnmatch(name, glob):
            import torch
            with torch.device("meta"):
                net = build_model(ModelConfig(name=name), (3, 32, 32), 10)
            row(name, _millions(sum(p.numel() for p in net.parameters())), "-")
    for lib in ("torchvision", "timm"):
        lib_glob = glob[len(lib) + 1:] if glob.startswith(lib + ":") else glob
        counted: Dict[str, str] = {}
        for name in backbones.registry(lib):
            if not (fnmatch.fnmatch(name, lib_glob) or fnmatch.fnmatch(f"{lib}:{name}", glob)):
                continue
            arch = name.split(".")[0]
            if arch not in counted:
                try:
                    counted[arch] = _millions(backbones.parameter_count(lib, arch))
                except Exception:   # noqa: BLE001 - a model the meta device cannot build: counted as unknown
                    counted[arch] = "?"
            row(f"{lib}:{name}", counted[arch], backbones.weights_state(lib, name))
    if not shown:
        print(f"no model matches {pattern!r}", file=sys.stderr)
        return 1
    return 0


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
