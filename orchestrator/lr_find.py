"""`tunesmith lr-find`: the LR range test with its outputs: the curve as Parquet, a PNG of loss
against LR (log axis) with the suggestions and the band marked, the same curve in TensorBoard,
and the decision as JSON."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pyarrow as pa

from tunesmith.cluster.storage import Storage
from tunesmith.trainables.config import ConfigError, TrainConfig
from tunesmith.trainables.lr_range_test import (DEFAULT_PICK, SMITH_PICK, SUGGESTERS, TIME_CAP_S, LRCurve,
                                            LRFinderError, band, range_test)

SOURCES = {DEFAULT_PICK: "lr-find's default rule, the best single run on the benchmark's datasets",
           SMITH_PICK: "smith's default rule, chosen on the quality benchmark"}


@dataclass
class LRDecision:
    curve: LRCurve
    pick: str
    max_lr: Optional[float]        # None: the curve was uninformative, and nothing was read off it
    min_lr: Optional[float]
    why: str = ""

    @property
    def informative(self) -> bool:
        return self.max_lr is not None

    def to_dict(self) -> Dict:
        c = self.curve
        return {"pick": self.pick, "rule": self.pick if self.informative else None, "why": self.why,
                "informative": self.informative, "problem": c.problem, "notes": c.notes,
                "max_lr": self.max_lr, "min_lr": self.min_lr,
                "band": [self.min_lr, self.max_lr] if self.informative else None,
                "suggestions": c.suggestions, "mode": c.mode, "points": len(c.lrs), "steps": c.steps, "stop_reason": c.stop_reason,
                "start_lr": c.lrs[0] if c.lrs else None, "last_lr": c.lrs[-1] if c.lrs else None,
                "num_classes": c.num_classes, "seconds": round(c.seconds, 3)}


def as_one_trial(spec) -> Tuple[TrainConfig, float]:
    """The range test's config and GPUs, as one trial of the sweep trains: on its GPUs (none: the
    CPU, even where this host has GPUs), at its global batch. A data-parallel trial on CPU ranks
    trains W x per_gpu_batch_size per step, so the test takes that batch in one process; one on
    G GPUs gets G devices, and the Trainer splits the batch over them."""
    res = spec.resources
    cfg = spec.train
    if res.ranks > 1 and res.gpus <= 1:
        cfg = cfg.with_overrides({"per_gpu_batch_size": cfg.trainer.per_gpu_batch_size * res.ranks})
    return cfg, res.gpus


def check_options(pick: str, start: float, end: float, steps: Optional[int], time_cap: float = TIME_CAP_S) -> None:
    """The range test's options, as `lr-find` and `smith` take them: bad ones are bad input."""
    if pick not in SUGGESTERS:
        raise ConfigError("--pick", pick, f"unknown; choose from {', '.join(SUGGESTERS)}")
    if not 0 < start < end:
        raise ConfigError("--start", start, f"must be > 0 and below --end ({end:g})")
    if steps is not None and steps < 10:
        raise ConfigError("--steps", steps, "must be >= 10")
    if not time_cap > 0:
        raise ConfigError("--max-seconds", time_cap, "must be > 0")


def decide(cfg: TrainConfig, start: float, end: float, steps: Optional[int], mode: str, val_loss: bool,
           pick: Optional[str] = None, cpu_threads: Optional[int] = None, time_cap: float = TIME_CAP_S,
           say=None, default: str = DEFAULT_PICK, num_gpus: Optional[float] = None) -> LRDecision:
    """The range test and what it decides. An uninformative curve gives a decision with no
    band (``informative`` false) and the reason in ``why``: callers fall back, never guess.
    ``pick`` is the user's rule (--pick); without one, ``default`` (lr-find's or smith's)."""
    pick = pick or default
    check_options(pick, start, end, steps, time_cap)
    curve = range_test(cfg, start, end, steps, mode, val_loss, cpu_threads=cpu_threads, time_cap=time_cap, say=say,
                       num_gpus=num_gpus)
    if curve.problem is None:
        try:
            curve.suggest()
        except LRFinderError as exc:
            curve.problem = str(exc)
    if curve.problem is not None:
        return LRDecision(curve, pick, None, None, why=f"no suggestion: {curve.problem}")
    max_lr = curve.suggestions[pick]
    lo, hi = band(max_lr, cfg.trainer.div_factor)
    source = SOURCES.get(pick, "the default rule") if pick == default else "asked for with --pick"
    return LRDecision(curve, pick, hi, lo, why=f"{pick} ({RULE_TEXT[pick]}): {source}")


RULE_TEXT = {"min10": "the minimum-loss LR / 10", "minimum": "the minimum-loss LR",
             "valley": "the middle of the longest fall", "steepest": "the steepest fall"}


def curve_table(d: LRDecision) -> pa.Table:
    c = d.curve
    return pa.table({"step": pa.array(range(len(c.lrs)), pa.int32()), "lr": pa.array(c.lrs, pa.float64()),
                     "loss": pa.array([x if math.isfinite(x) else None for x in c.losses], pa.float64()),
                     "smoothed": pa.array([x if math.isfinite(x) else None for x in c.smoothed], pa.float64()),
                     "mode": pa.array([c.mode] * len(c.lrs), pa.string())})


def plot_png(d: LRDecision, title: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap
    c = d.curve
    # the decision as a caption under the axes, where neither the legend nor the curve hides it
    caption = textwrap.wrap(("decision: " + d.why) if d.informative else d.why, 120)
    below = 0.16 * len(caption) + 0.08   # inches of caption under the axes
    fig, ax = plt.subplots(figsize=(7.5, 4.42 + below))
    ax.plot(c.lrs, c.losses, color="0.75", lw=1, label=f"{c.mode} loss")
    ax.plot(c.lrs, c.smoothed, color="tab:blue", lw=2, label="smoothed")
    if d.informative:
        ax.axvspan(d.min_lr, d.max_lr, color="tab:green", alpha=0.15, label=f"band {d.min_lr:.2g} to {d.max_lr:.2g}")
    styles = {"valley": "tab:purple", "steepest": "tab:orange", "min10": "tab:red", "minimum": "tab:brown"}
    for name, lr in c.suggestions.items():
        ax.axvline(lr, color=styles.get(name, "k"), ls="--" if name != d.pick else "-",
                   label=f"{name}: {lr:.3g}{' (chosen)' if name == d.pick else ''}")
    finite = [x for x in c.smoothed if math.isfinite(x)]
    raw = [x for x in c.losses if math.isfinite(x)]
    if finite:
        lo, hi = min(finite + raw), max(finite[: max(1, len(finite) // 2)])
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.6 * (hi - lo + 1e-9))
    ax.set_xscale("log")
    if c.num_classes > 1:
        ax.axhline(math.log(c.num_classes), color="0.4", ls=":", lw=1, label=f"chance: ln {c.num_classes}")
    ax.set(xlabel="learning rate (log)", ylabel="loss", title=title)
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=8, va="bottom")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, below / fig.get_figheight(), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write(d: LRDecision, storage: Storage, sweep: str, title: str, plot: bool = True) -> Dict[str, str]:
    """Into <sweep>/lr_find/ and the sweep's TensorBoard folder, run 'lr_find'. ``plot=False``:
    the curve and the decision only; write_plot adds the rest."""
    storage.makedirs(sweep, "lr_find")
    storage.write_table(f"{sweep}/lr_find/curve.parquet", curve_table(d))
    storage.write_bytes(f"{sweep}/lr_find/decision.json", json.dumps(d.to_dict(), indent=2).encode())
    if plot:
        write_plot(d, storage, sweep, title)
    return {"curve": storage.uri(sweep, "lr_find", "curve.parquet"), "plot": storage.uri(sweep, "lr_find", "lr_find.png"),
            "decision": storage.uri(sweep, "lr_find", "decision.json")}


def write_plot(d: LRDecision, storage: Storage, sweep: str, title: str) -> None:
    """The PNG and TensorBoard's copy of the curve (matplotlib: a second of CPU and the GIL)."""
    png = plot_png(d, title)
    storage.write_bytes(f"{sweep}/lr_find/lr_find.png", png)
    _tensorboard(d, storage, sweep, png)


def _tensorboard(d: LRDecision, storage: Storage, sweep: str, png: bytes) -> None:
    import shutil
    import tempfile
    import numpy as np
    from PIL import Image
    from tensorboardX import SummaryWriter
    local = storage.local_path(sweep, "tensorboard", "lr_find")
    target = local or tempfile.mkdtemp(prefix="tunesmith-lr_find-")
    w = SummaryWriter(target)
    c = d.curve
    # TensorBoard's x axis is a step; the LR goes beside it, and the PNG carries the log-LR view.
    for i, (lr, loss, sm) in enumerate(zip(c.lrs, c.losses, c.smoothed)):
        w.add_scalar("lr_find/lr", lr, i)
        if math.isfinite(loss):
            w.add_scalar("lr_find/loss", loss, i)
        if math.isfinite(sm):
            w.add_scalar("lr_find/smoothed_loss", sm, i)
            w.add_scalar("lr_find/smoothed_loss_by_log10_lr", sm, int(round(math.log10(lr) * 100)))
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).transpose(2, 0, 1)
    w.add_image("lr_find/curve", img, 0)
    w.add_text("lr_find/decision", "  \n".join(f"{k}: {v}" for k, v in d.to_dict().items()), 0)
    w.close()
    if not local:
        storage.upload_dir(target, f"{sweep}/tensorboard/lr_find")
        shutil.rmtree(target, ignore_errors=True)


def summary_text(d: LRDecision) -> str:
    c = d.curve
    if not c.lrs:
        return f"LR range test ({c.mode} loss): {c.problem} ({c.seconds:.1f}s to measure the pace)"
    lines = [f"LR range test ({c.mode} loss): {len(c.lrs)} steps from {c.lrs[0]:.2g} to {c.lrs[-1]:.3g} "
             f"in {c.seconds:.1f}s; stopped: {c.stop_reason}"]
    if not d.informative:
        return "\n".join(lines + [d.why])
    for name, lr in c.suggestions.items():
        lines.append(f"  {name:<9} {lr:.4g}{'   <- chosen max LR' if name == d.pick else ''}")
    lines.append(f"band: {d.min_lr:.4g} to {d.max_lr:.4g} (min = max/{d.max_lr / d.min_lr:g}); rule: {d.why}")
    return "\n".join(lines)
