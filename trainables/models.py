"""CNN classifiers, built by name from a registry."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from tunesmith.trainables.config import ConfigError, ModelConfig


class SmallCNN(nn.Module):
    """``depth`` blocks of 3x3 conv (+BN) + ReLU, each doubling the width and halving the size
    while the image is larger than 2x2, then a 4x4 (or smaller) average pool, flattened into a
    linear head: the head keeps the spatial layout, which global pooling would throw away.

    ``depth=None`` picks the blocks from the image size: halve until the map is 4x4 or smaller
    (2 blocks for 8x8 digits, 3 for 28-32 px, 4 for 64 px). On the quality benchmark a
    two-block, globally pooled net at 32x32 stayed near chance on shapes and 22% on glyphs
    after 5 epochs, where this one reached 0.90 on glyphs (bench/quality.py)."""

    def __init__(self, in_ch: int, num_classes: int, size: int, width: int = 16, depth: Optional[int] = None,
                 batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        depth = self.depth = depth or auto_depth(size)
        layers, ch = [], in_ch
        for i in range(depth):
            out = width * 2 ** i
            layers += [nn.Conv2d(ch, out, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            if size > 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            ch = out
        self.features = nn.Sequential(*layers)
        keep = min(size, 4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(keep), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(ch * keep * keep, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def auto_depth(size: int) -> int:
    """Blocks that bring a ``size`` image down to 4x4 or less; at least 2, at most 8."""
    depth = 0
    while size > 4 and depth < 8:
        size //= 2
        depth += 1
    return max(2, depth)


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; padded convolutions so that
    8x8 inputs fit as well as 28x28 and 32x32."""

    def __init__(self, in_ch: int, num_classes: int, size: int, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2 if size < 16 else 0), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_ch, size, size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(120, 84), nn.ReLU(inplace=True),
                                  nn.Linear(84, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def _resnet(builder_name: str):
    def build(in_ch: int, num_classes: int, size: int, cfg: ModelConfig) -> nn.Module:
        import torchvision.models as tvm
        net = getattr(tvm, builder_name)(weights=None, num_classes=num_classes)
        # Small inputs (8-64 px): a 3x3 stride-1 stem and no max-pool, as for CIFAR; model.small_input
        # false keeps torchvision's own stem.
        if cfg.small_input is not False:
            net.conv1 = nn.Conv2d(in_ch, 64, 3, stride=1, padding=1, bias=False)
        elif in_ch != 3:
            net.conv1 = nn.Conv2d(in_ch, 64, 7, stride=2, padding=3, bias=False)
        if size < 64 and cfg.small_input is not False or cfg.small_input:
            net.maxpool = nn.Identity()
        if cfg.dropout:
            net.fc = nn.Sequential(nn.Dropout(cfg.dropout), net.fc)
        return net
    return build


MODELS: Dict[str, Callable[[int, int, int, ModelConfig], nn.Module]] = {
    "small_cnn": lambda c, k, s, cfg: SmallCNN(c, k, s, cfg.width, cfg.depth, cfg.batch_norm, cfg.dropout),
    "lenet": lambda c, k, s, cfg: LeNet(c, k, s, cfg.dropout),
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
}


def list_models() -> list:
    return sorted(MODELS)


HEADS = {"small_cnn": ("head",), "lenet": ("head",), "resnet18": ("fc",), "resnet34": ("fc",)}


def build_model(cfg: ModelConfig, shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network ``cfg`` names, for images of ``shape`` and ``num_classes`` classes, with the
    weights it starts from (model.pretrained, model.weights). ``net.fit`` says how a weights file
    fitted it (None without one)."""
    from tunesmith.trainables import backbones, weights
    state = arch = None
    if cfg.weights is not None:
        state, arch = weights.read_checkpoint(weights.weights_file(cfg.weights))
    if cfg.library:
        net = backbones.build(cfg, shape[0], num_classes, shape[1])
    else:
        # fine-tuned from an earlier sweep's small_cnn: the depth that sweep resolved (it follows
        # the image size, which the new data may not share)
        if arch and arch.get("name") == cfg.name and cfg.depth is None and arch.get("depth"):
            cfg = cfg.model_copy(update={"depth": int(arch["depth"])})
        try:
            builder = MODELS[cfg.name]
        except KeyError:
            raise ConfigError("model.name", cfg.name, f"unknown; choose from {', '.join(list_models())}") from None
        net = builder(shape[0], num_classes, shape[1], cfg)
        net.head_names = HEADS[cfg.name]
    net.fit = None if state is None else weights.load_into(net, weights.fitted(cfg, state, net.state_dict()))
    return net


def check_weights_fit(cfg: ModelConfig, shape: Tuple[int, int, int], state) -> None:
    """Before Ray starts: a weights file (its ``state``) none of whose tensors' names is the
    model's is refused (the model built on the meta device, for images of about ``shape``: no
    memory, no weights)."""
    from tunesmith.trainables import weights
    with torch.device("meta"):
        net = build_model(cfg.model_copy(update={"weights": None, "pretrained": False}), shape, 10)
    weights.fitted(cfg, state, net.state_dict())


def head_parameters(net: nn.Module):
    """(head parameters, backbone parameters) of a built model: the two LR groups of fine-tuning."""
    heads = tuple(getattr(net, "head_names", ()))
    head, body = [], []
    for name, p in net.named_parameters():
        (head if any(name == h or name.startswith(h + ".") for h in heads) else body).append(p)
    return head, body
