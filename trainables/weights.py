"""Weights to start from (``model.weights``): a state dict, a safetensors file, a tunesmith
checkpoint or a sweep's kept one; and how a state dict fits a model, reported by name."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from tunesmith.trainables.config import ConfigError


def weights_file(path: str) -> str:
    """The file ``model.weights`` names: a state-dict or safetensors file, a tunesmith checkpoint
    folder (its trainer.pt), or a sweep folder (its kept checkpoint, named in trials.parquet)."""
    where = os.path.expanduser(path)
    if os.path.isfile(where):
        return where
    if os.path.isdir(where):
        inside = os.path.join(where, "trainer.pt")
        if os.path.isfile(inside):
            return inside
        kept = _kept_checkpoint(where)
        if kept:
            return kept
        raise ConfigError("model.weights", path, "a folder without trainer.pt, and no sweep's kept "
                          "checkpoint (trials.parquet's checkpoint column) in it")
    raise ConfigError("model.weights", path, "no such file or folder")


def _kept_checkpoint(sweep: str) -> Optional[str]:
    table = os.path.join(sweep, "trials.parquet")
    if not os.path.isfile(table):
        return None
    import pyarrow.parquet as pq
    rows = pq.read_table(table, columns=["checkpoint"]).column("checkpoint").to_pylist()
    for ckpt in rows:
        if ckpt:
            local = ckpt[len("file://"):] if ckpt.startswith("file://") else ckpt
            for candidate in (os.path.join(local, "trainer.pt"), os.path.join(sweep, os.path.basename(local), "trainer.pt")):
                if os.path.isfile(candidate):
                    return candidate
    return None


def read_checkpoint(path: str, device: str = "cpu") -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """(state dict, architecture) from ``path``, read once. The architecture is what a tunesmith
    checkpoint records of the model it trained (its ``arch``; None for other files). The state
    dict: safetensors, a plain state dict, a dict holding one under
    "model", "state_dict" or "model_state_dict" (tunesmith's checkpoints, Lightning's and most
    training scripts'), or a whole pickled module's. Read with weights_only (timm's saved
    arguments allowed): a file that is not a checkpoint (or would run code when loaded) is
    refused in one line."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=device), None
        except Exception as exc:   # noqa: BLE001 - the library's own error, shortened
            raise ConfigError("model.weights", path, f"not a safetensors file ({str(exc).splitlines()[0][:120]})") from None
    import argparse
    try:
        # timm's train.py saves its argparse.Namespace beside the weights ("args"): a plain record
        # of attributes, whose unpickling runs no code of the file's choosing
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=device, weights_only=True, mmap=_mmappable(path))
    except Exception as exc:   # noqa: BLE001
        raise ConfigError("model.weights", path, _unreadable(exc)) from None
    arch = obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), dict) else None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError("model.weights", path, "holds no state dict (a mapping of names to tensors, "
                          "or one under 'model' or 'state_dict')")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}, arch


def _unreadable(exc: BaseException) -> str:
    """Why torch.load refused a file, in a line: torch's own message is a paragraph about its
    weights_only default whose reason ("Unsupported operand 110" for a text file) comes last."""
    import re
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\n\n|$)", text, re.S)
    why = " ".join((found.group(1) if found else text).split()).split(". ")[0]
    if why.startswith("Unsupported global"):
        return (f"pickles code, not only tensors ({why[:120]}); tunesmith runs no code from a file: save "
                "the model's state_dict() and name that")
    return f"not a PyTorch checkpoint, a .safetensors file or a sweep's folder ({why[:120] or type(exc).__name__})"


def _mmappable(path: str) -> bool:
    import zipfile
    return zipfile.is_zipfile(path)


@dataclass
class Fit:
    """How a state dict fitted a model: what loaded, what was adapted (a 3-channel stem summed
    for grey input), and what did not fit, by name."""
    loaded: int
    total: int
    adapted: List[str]
    mismatched: List[str]   # "name [file shape] -> [model shape]"
    missing: List[str]
    unexpected: List[str]

    def text(self) -> str:
        parts = [f"loaded {self.loaded} of {self.total} tensors"]
        if self.adapted:
            parts.append(f"stem adapted between grey and colour: {', '.join(self.adapted)}")
        if self.mismatched:
            parts.append(f"left as initialised (shape differs): {', '.join(self.mismatched)}")
        if self.missing:
            parts.append(f"not in the file: {_names(self.missing)}")
        if self.unexpected:
            parts.append(f"in the file, not in the model: {_names(self.unexpected)}")
        return "; ".join(parts)


def _names(keys: List[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def aligned(state: Dict[str, torch.Tensor], own) -> Dict[str, torch.Tensor]:
    """``state`` with the leading part of its names that most of them share beyond the model's
    names stripped, where more of them then are the model's: torch.compile's ``_orig_mod.``, a
    LightningModule's attribute (``model.``, ``net.``), both (``_orig_mod.net.``). Names without
    that part stay as they are, to be reported."""
    from collections import Counter
    counts: Counter = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):   # i = 0: the name is the model's as it is
            if ".".join(parts[i:]) in own:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
                break
    prefix = max(counts, key=lambda p: (counts[p], p == ""), default="")
    if not prefix:
        return state
    cut = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    return cut if len(cut) == len(state) else state


def fitted(cfg, state: Dict[str, torch.Tensor], own) -> Dict[str, torch.Tensor]:
    """``state`` ``aligned`` to the model's names (``own``). A file none of whose tensors' names
    is the model's would train from scratch under the name of fine-tuning: refused in one line,
    naming a few of each side's."""
    cut = aligned(state, own)
    if not any(k in own for k in cut):
        raise ConfigError("model.weights", cfg.weights, f"none of its {len(state)} tensors fits {cfg.name}: the "
                          f"file names {', '.join(sorted(state)[:2])}..., the model {', '.join(sorted(own)[:2])}...")
    return cut


def load_into(net: nn.Module, state: Dict[str, torch.Tensor]) -> Fit:
    """Copy every tensor of ``state`` (``fitted`` to the model's names) whose name and shape fit;
    a 3-channel conv's weight goes to a 1-channel conv summed over its input channels (as timm's
    adapt_input_conv does). The rest is reported by name, never dropped in silence."""
    own = net.state_dict()
    take, adapted, mismatched = {}, [], []
    for key, value in state.items():
        if key not in own:
            continue
        want = own[key]
        if value.shape == want.shape:
            take[key] = value
        elif value.ndim == 4 and want.ndim == 4 and {value.shape[1], want.shape[1]} == {1, 3} \
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            # a stem between grey and colour: summed to one channel (timm's in_chans), or one channel
            # spread over three
            take[key] = (value.float().sum(dim=1, keepdim=True) if want.shape[1] == 1 else
                         value.float().repeat(1, 3, 1, 1) / 3).to(value.dtype)
            adapted.append(key)
        else:
            mismatched.append(f"{key} {list(value.shape)} -> {list(want.shape)}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    net.load_state_dict(take, strict=False)
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    return Fit(sum(1 for k in take if not k.endswith("num_batches_tracked")), len(counted), adapted,
               mismatched, missing, unexpected)


