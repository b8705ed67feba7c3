"""What fine-tuning changes in a run, beside the model's weights: the data normalised as the
weights were trained (their mean and std), evaluation through their centre crop, the backbone
frozen for the first ``model.freeze_epochs``, BatchNorm's loaded statistics kept
(``model.freeze_bn``). The discriminative LRs are the optimizer's groups (trainables/optimizers.py)."""
from __future__ import annotations

from torch import nn

from tunesmith.trainables import data as data_mod
from tunesmith.trainables.config import TrainConfig
from tunesmith.trainables.image_data import with_stats
from tunesmith.trainables.models import head_parameters


def fit_stats(norm, channels: int):
    """A pretrained model's (mean, std) for ``channels``: a grey image fed to a stem adapted from
    3 channels takes the means of the three."""
    mean, std = (tuple(v) for v in norm)
    if channels == 1 and len(mean) == 3:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return mean, std


def model_notes(model) -> str:
    """What was done to the model beyond building it: the stem, how a weights file fitted."""
    notes = []
    if getattr(model, "stem_note", None):
        notes.append(f"small-image stem: {model.stem_note}")
    if getattr(model, "fit", None) is not None:
        notes.append(f"weights: {model.fit.text()}")
    return "; ".join(notes)


class FineTuning:
    """The per-run side of fine-tuning for the model ``net`` built from ``cfg``."""

    def __init__(self, cfg: TrainConfig, net: nn.Module):
        self.norm = getattr(net, "norm", None)
        self.notes = model_notes(net)
        crops = "RandomResizedCrop" in data_mod.transforms(cfg.dataset.augment)
        self.eval_crop = getattr(net, "eval_crop", 1.0) if crops else 1.0
        self.frozen_bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
            if cfg.model.freeze_bn else []
        self.head_params, self.body_params = head_parameters(net)
        self.frozen = False

    def data_for(self, data):
        """Pretrained: the data as the weights were trained on them."""
        return data if self.norm is None else with_stats(data, *fit_stats(self.norm, data.shape[0]))

    def before_step(self) -> None:
        for bn in self.frozen_bn:   # model.freeze_bn: the loaded statistics stay
            bn.eval()

    def freeze(self, frozen: bool) -> None:
        """model.freeze_epochs: the backbone takes no gradient (so none is computed) while the
        head trains alone; the whole network after."""
        if frozen == self.frozen or not self.head_params:
            return
        for p in self.body_params:
            p.requires_grad_(not frozen)
        self.frozen = frozen
