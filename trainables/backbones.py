"""Classifiers from the libraries users already use: ``timm:<name>`` and ``torchvision:<name>``,
with the head sized to the dataset, grey images fed to 3-channel stems, a small-image stem where
it is asked for, and pretrained weights read from the library's own cache, never fetched unless
``model.download`` says so.

Every model (built-in or from a library) carries three plain attributes the trainer reads:
``head_names`` (the modules of the classifier head: the LR groups of fine-tuning), ``norm`` (the
weights' own mean and std, or None for the data's) and ``eval_crop`` (the share of the image a
centre crop keeps at evaluation, 1.0 for a plain resize).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from tunesmith.trainables.config import ConfigError, ModelConfig

SMALL_FROM = 32   # images this size and below get the small-image stem when model.small_input is null:
                  # a 224-px stem (stride 2, then a stride-2 pool) leaves a 32-px image 8x8 after two
                  # layers and 1x1 at the end of a ResNet; the built-in resnets always had it (CIFAR's)


STEM_CONVS = 3

# --- names ---------------------------------------------------------------------------------------

def split(name: str) -> Tuple[str, str]:
    lib, _, arch = name.partition(":")
    return lib, arch.strip()


def known(lib: str, arch: str) -> bool:
    if lib == "timm":
        import timm
        return timm.is_model(arch)
    import torchvision.models as tvm
    return arch in tvm.list_models(module=tvm)


def check_name(cfg: ModelConfig) -> None:
    lib, arch = split(cfg.name)
    if not known(lib, arch):
        import difflib
        close = difflib.get_close_matches(arch, registry(lib), n=3, cutoff=0.6)
        hint = f"; close: {', '.join(f'{lib}:{c}' for c in close)}" if close else ""
        raise ConfigError("model.name", cfg.name, f"{lib} has no model {arch!r} (tunesmith models {arch} lists "
                          f"what it has){hint}")


def registry(lib: str, pattern: Optional[str] = None) -> List[str]:
    """The names a library can build, read from its own registry: timm's list_models (with its
    pretrained tags, 'arch.tag') and torchvision's classification builders."""
    import fnmatch
    if lib == "timm":
        import timm
        names = sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))
    else:
        import torchvision.models as tvm
        names = sorted(tvm.list_models(module=tvm))
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return names


def parameter_count(lib: str, arch: str, num_classes: int = 1000) -> int:
    """Parameters of the library's model, built on the meta device: no memory, no weights."""
    with torch.device("meta"):
        net = _create(lib, arch, num_classes, 3, pretrained_file=None, meta=True)
    return sum(p.numel() for p in net.parameters())


# --- pretrained weights in the libraries' caches -------------------------------------------------

@dataclass(frozen=True)
class Published:
    """Where a library keeps the weights of a name: the file in its cache (None when absent), the
    places looked, and the weights' own input statistics."""
    file: Optional[str]
    looked: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_pct: float
    tag: str   # the weights' name (timm's pretrained tag, torchvision's enum)


def published(lib: str, arch: str) -> Published:
    """The cached weights of ``lib:arch``, found as the library itself finds them, without a
    download: timm's Hugging Face Hub file (HF_HOME) or its URL's file in torch.hub's cache
    (TORCH_HOME), torchvision's DEFAULT weights' file in TORCH_HOME."""
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    if lib == "timm":
        import timm.models
        pcfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
        if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
            raise ConfigError("model.pretrained", True, f"timm publishes no weights for {arch!r} "
                              f"(tunesmith models 'timm:{arch.split('.')[0]}*' lists the tagged ones)")
        tag = f"{arch.split('.')[0]}.{pcfg.tag}" if pcfg.tag else arch
        looked: List[str] = []
        found = None
        if pcfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.constants import HF_HUB_CACHE
            repo, _, _ = pcfg.hf_hub_id.partition("@")
            for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(repo, filename)
                if isinstance(hit, str):
                    found = hit
                    break
            looked.append(f"{HF_HUB_CACHE} (Hugging Face repo {repo})")
        if found is None and pcfg.url:
            path = os.path.join(hub, os.path.basename(pcfg.url.split("?")[0]))
            found = path if os.path.exists(path) else None
            looked.append(path)
        return Published(found, tuple(looked), tuple(pcfg.mean), tuple(pcfg.std), float(pcfg.crop_pct or 1.0), tag)
    import torchvision.models as tvm
    try:
        weights = tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ConfigError("model.pretrained", True, f"torchvision publishes no weights for {arch!r}") from None
    path = os.path.join(hub, os.path.basename(weights.url))
    tf = weights.transforms()
    crop = float(tf.crop_size[0]) / float(tf.resize_size[0]) if getattr(tf, "resize_size", None) else 1.0
    return Published(path if os.path.exists(path) else None, (path,), tuple(tf.mean), tuple(tf.std),
                     crop, str(weights))


def weights_state(lib: str, name: str) -> str:
    """For `tunesmith models`: whether the library publishes weights for ``name``, and whether
    they are in this machine's cache."""
    try:
        found = published(lib, name)
    except ConfigError:
        return "-"
    return f"{found.tag}, cached" if found.file else f"{found.tag}, not cached (model.download)"


# --- building ------------------------------------------------------------------------------------

def _create(lib: str, arch: str, num_classes: int, in_ch: int, pretrained_file: Optional[str],
            meta: bool = False) -> nn.Module:
    if lib == "timm":
        import timm
        kwargs = dict(num_classes=num_classes, in_chans=in_ch)
        if pretrained_file:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file})
        return timm.create_model(arch, **kwargs)
    import torchvision.models as tvm
    builder = tvm.get_model_builder(arch)
    if pretrained_file:
        net = builder(weights=None)   # the published head's 1000 classes, then its weights
        net.load_state_dict(torch.load(pretrained_file, map_location="cpu", weights_only=True))
        _replace_head(net, num_classes)
    else:
        net = builder(weights=None, num_classes=num_classes)
    if in_ch != 3:
        _grey_stem(net, in_ch)
    return net


def _last_linear(net: nn.Module) -> Tuple[str, nn.Linear]:
    found = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError("model.name", type(net).__name__, "has no linear classifier head to size")
    return found[-1]


def _replace_head(net: nn.Module, num_classes: int) -> None:
    name, old = _last_linear(net)
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _first_conv(net: nn.Module) -> Tuple[str, nn.Conv2d]:
    for n, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            return n, m
    raise ConfigError("model.name", type(net).__name__, "has no convolution to take the image")


def _grey_stem(net: nn.Module, in_ch: int) -> None:
    """torchvision's stem for ``in_ch`` channels: its first conv with the 3-channel weights
    summed (timm does this itself with in_chans)."""
    name, conv = _first_conv(net)
    new = nn.Conv2d(in_ch, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True).expand_as(new.weight) * (1.0 / in_ch if in_ch > 1 else 1.0))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], new)


def small_stem(net: nn.Module) -> str:
    """The small-image stem on a library CNN: its first conv at stride 1, and a max-pool within
    the stem (among its first STEM_CONVS convolutions: a ResNet's one, a ResNet-D's three)
    removed. The kernel and its weights stay, so pretrained
    weights still apply. A patch embedding (kernel = stride, as a ViT's) is left alone."""
    name, conv = _first_conv(net)
    if conv.kernel_size == conv.stride and conv.stride[0] > 1:
        return "none (a patch embedding)"
    conv.stride = (1, 1)
    convs = 0
    for n, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            convs += 1
            if convs > STEM_CONVS:
                break
        elif isinstance(m, nn.MaxPool2d):
            parent = net.get_submodule(n.rpartition(".")[0]) if "." in n else net
            setattr(parent, n.rpartition(".")[2], nn.Identity())
            return f"{name} at stride 1, {n} removed"
    return f"{name} at stride 1"


def wants_small_stem(cfg: ModelConfig, size: int) -> bool:
    return cfg.small_input if cfg.small_input is not None else size <= SMALL_FROM


def head_names(net: nn.Module) -> Tuple[str, ...]:
    """The classifier head's modules: timm's own record of it, else the last linear layer."""
    get = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None)
    if isinstance(get, dict) and get.get("classifier"):
        names = get["classifier"] if isinstance(get["classifier"], (list, tuple)) else [get["classifier"]]
        modules = dict(net.named_modules())
        names = [n for n in names if n in modules]
        if names:
            return tuple(names)
    return (_last_linear(net)[0],)


def build(cfg: ModelConfig, in_ch: int, num_classes: int, size: int) -> nn.Module:
    """``timm:<arch>`` or ``torchvision:<arch>``, with the head, stem and weights the spec asks."""
    lib, arch = split(cfg.name)
    check_name(cfg)
    found = published(lib, arch) if cfg.pretrained else None
    if found is not None and found.file is None:
        if not cfg.download:
            raise missing_weights(cfg, found)
        net = _download(lib, arch, num_classes, in_ch)
    else:
        net = _create(lib, arch, num_classes, in_ch, found.file if found else None)
    if wants_small_stem(cfg, size):
        net.stem_note = small_stem(net)
    if cfg.dropout:
        name, head = _last_linear(net)
        parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        setattr(parent, name.rpartition(".")[2], nn.Sequential(nn.Dropout(cfg.dropout), head))
    net.head_names = head_names(net)
    if found is not None:
        net.norm = (found.mean, found.std)
        net.eval_crop = found.crop_pct
    return net


def missing_weights(cfg: ModelConfig, found: Published) -> ConfigError:
    return ConfigError("model.pretrained", True, f"{cfg.name} ({found.tag}) weights are not in the cache: "
                       f"looked in {'; '.join(found.looked)}; set model.download: true to fetch them, or "
                       "model.weights to a file")


def _download(lib: str, arch: str, num_classes: int, in_ch: int) -> nn.Module:
    if lib == "timm":
        import timm
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_ch)
    import torchvision.models as tvm
    weights = tvm.get_model_weights(arch).DEFAULT
    weights.get_state_dict(progress=False)   # fetched into TORCH_HOME
    return _create(lib, arch, num_classes, in_ch, published(lib, arch).file)


def check(cfg: ModelConfig):
    """Before Ray starts: the name is one the library knows, the pretrained weights are in the
    cache (or may be fetched), the weights file is a checkpoint. One-line errors. Returns the
    weights file's state dict (models.check_weights_fit reads it, not the file again), or None."""
    if cfg.library:
        check_name(cfg)
        if cfg.pretrained:
            found = published(*split(cfg.name))
            if found.file is None and not cfg.download:
                raise missing_weights(cfg, found)
    if cfg.weights is not None:
        from tunesmith.trainables.weights import read_checkpoint, weights_file
        return read_checkpoint(weights_file(cfg.weights))[0]   # a zip or safetensors file: mmapped
    return None
