"""Leslie Smith's LR range test (arXiv 1506.01186 sec. 3.3; 1803.09820 sec. 4.1).

Trains on mini-batches while the LR rises from ``start`` to ``end`` (exponentially by default),
records the loss, and stops once the smoothed loss exceeds ``stop_factor`` times its best or
turns NaN/inf. The model and optimizer are restored afterwards. In validation mode the loss is
measured on a held-out batch at every step, as Smith recommends.

Three suggestions are read off the curve, each a pure function tested on synthetic curves:
  steepest - the steepest descent of the smoothed loss against log LR;
  valley   - the middle of the longest falling stretch of the smoothed loss (fastai's default);
  min10    - the LR of the minimum smoothed loss, divided by 10.
The chosen one is the band's maximum; the band's minimum is max / 10, as for 1cycle.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

SKIP_START = 10      # the first points are noise around the initial loss (fastai, Lightning skip 10)
SMOOTHING = 0.98     # as in trainables/trainer.py
SUGGESTERS = ("valley", "steepest", "min10")


class LRFinderError(ValueError):
    """The curve gives no usable suggestion (too short, flat, or never falling)."""


@dataclass
class LRCurve:
    lrs: List[float]
    losses: List[float]
    smoothed: List[float]
    stop_reason: str
    mode: str = "train"
    seconds: float = 0.0
    suggestions: Dict[str, float] = field(default_factory=dict)

    def suggest(self) -> Dict[str, float]:
        self.suggestions = suggest_all(self.lrs, self.smoothed)
        return self.suggestions


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> List[float]:
    avg, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def _usable(lrs: Sequence[float], smoothed: Sequence[float]):
    """Cut the curve at its first non-finite point; refuse curves with nothing to read."""
    n = 0
    for lr, loss in zip(lrs, smoothed):
        if not (math.isfinite(lr) and math.isfinite(loss)) or lr <= 0:
            break
        n += 1
    lrs, sm = list(lrs[:n]), list(smoothed[:n])
    skip = SKIP_START if n > 2 * SKIP_START else 0
    lrs, sm = lrs[skip:], sm[skip:]
    if len(lrs) < 5:
        raise LRFinderError(f"only {len(lrs)} usable points on the curve (need 5): widen the LR range or add steps")
    lo, hi = min(sm), max(sm)
    if hi - lo <= 1e-3 * max(abs(hi), 1e-12):
        raise LRFinderError(f"the loss is flat over the range ({lo:.4g} to {hi:.4g}): nothing to choose from; "
                            "raise the end LR or check that the model trains")
    return lrs, sm


def steepest(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The LR where the smoothed loss falls fastest against log LR."""
    lrs, sm = _usable(lrs, smoothed)
    logs = [math.log10(x) for x in lrs]
    best_i, best_g = None, 0.0
    for i in range(1, len(sm) - 1):
        g = (sm[i + 1] - sm[i - 1]) / max(logs[i + 1] - logs[i - 1], 1e-12)
        if g < best_g:
            best_i, best_g = i, g
    if best_i is None:
        raise LRFinderError("the loss never falls over the range: lower the start LR")
    return lrs[best_i]


def valley(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The middle of the longest stretch over which the smoothed loss keeps falling."""
    lrs, sm = _usable(lrs, smoothed)
    best_start, best_len, start = 0, 0, 0
    for i in range(1, len(sm)):
        if sm[i] >= sm[i - 1]:
            start = i
        elif i - start > best_len:
            best_start, best_len = start, i - start
    if best_len == 0:
        raise LRFinderError("the loss never falls over the range: lower the start LR")
    return lrs[best_start + best_len // 2]


def min10(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The LR of the minimum smoothed loss, divided by 10 (a step back from the edge)."""
    lrs, sm = _usable(lrs, smoothed)
    i = min(range(len(sm)), key=sm.__getitem__)
    if i == 0:
        raise LRFinderError("the loss is lowest at the start LR: lower the start LR")
    return lrs[i] / 10


def suggest_all(lrs: Sequence[float], smoothed: Sequence[float]) -> Dict[str, float]:
    _usable(lrs, smoothed)   # the common errors once, with their own message
    return {"valley": valley(lrs, smoothed), "steepest": steepest(lrs, smoothed), "min10": min10(lrs, smoothed)}


def band(max_lr: float, div: float = 10.0):
    """Smith's 1cycle band: from max/10 up to max."""
    return max_lr / div, max_lr


def lr_at_step(i: int, steps: int, start: float, end: float, mode: str = "exp") -> float:
    frac = i / max(1, steps - 1)
    if mode == "linear":
        return start + (end - start) * frac
    return start * (end / start) ** frac


def range_test(cfg, start: float = 1e-7, end: float = 10.0, steps: int = 100, mode: str = "exp",
               val_loss: bool = False, stop_factor: float = 4.0, device=None, cpu_threads: Optional[int] = None) -> LRCurve:
    """Run the test with the trainer's own model, optimizer, data, batch size and step."""
    import torch
    from trainables.trainer import DivergenceMonitor, Trainer

    began = time.perf_counter()
    trainer = Trainer(cfg, device=device, cpu_threads=cpu_threads)
    model, opt = trainer.model, trainer.optimizer
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    d, bs = trainer.data, trainer.global_batch
    val_x, val_y = d.val_x[:max(bs, 256)], d.val_y[:max(bs, 256)]
    # the trainer's own divergence rule: smoothed loss above stop_factor x its best, or NaN/inf
    monitor = DivergenceMonitor(stop_factor, SMOOTHING, warmup=SKIP_START + 1)
    lrs, losses = [], []
    reason = f"reached the end LR {end:g}"
    perm, pos = torch.randperm(len(d.train_y), generator=trainer.generator).to(trainer.device), 0
    try:
        for i in range(steps):
            if pos + bs > len(perm):
                perm, pos = torch.randperm(len(d.train_y), generator=trainer.generator).to(trainer.device), 0
            idx = perm[pos:pos + bs]
            pos += bs
            lr = lr_at_step(i, steps, start, end, mode)
            loss, _, _ = trainer.train_step(idx, lr, None)
            value = loss.item()
            if val_loss:
                model.eval()
                with torch.inference_mode(), trainer._autocast():
                    value = torch.nn.functional.cross_entropy(
                        model(trainer._inputs(val_x)).float(), val_y).item()
            lrs.append(lr)
            losses.append(value)
            if monitor.update(value):
                reason = (f"loss became {value} at LR {lr:.3g}" if not math.isfinite(value) else
                          f"smoothed loss passed {stop_factor:g}x its best at LR {lr:.3g}")
                break
    finally:
        model.load_state_dict(saved_model)   # the test leaves no trace on the model
        opt.load_state_dict(saved_opt)
    curve = LRCurve(lrs, losses, smooth(losses), reason, "val" if val_loss else "train",
                    time.perf_counter() - began)
    return curve
