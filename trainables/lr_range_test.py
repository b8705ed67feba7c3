"""Leslie Smith's LR range test (arXiv 1506.01186 sec. 3.3; 1803.09820 sec. 4.1).

Trains on mini-batches while the LR rises from ``start`` to ``end`` (exponentially by default),
records the loss, and stops once the smoothed loss exceeds ``stop_factor`` times its best or
turns NaN/inf. The model and optimizer are restored afterwards. In validation mode the loss is
measured on a held-out batch at every step, as Smith recommends.

Its default length is set by the data: one epoch or MIN_STEPS steps, whichever is larger,
within a time cap. The curve is smoothed without lag (a centred mean) and trimmed at both ends
before anything is read off it, and the test checks itself: a loss that never falls clearly
(not below chance) makes it run again, EXTEND times as many steps per decade of LR and from
RERUN_BELOW decades under the first run's lowest loss (the decades below stayed flat), when its
time cap leaves room for at least twice the density; a curve still flat after that is reported
as uninformative, never read as if it said something. Both runs are sized in steps from the
data and from paces that other work on the cores (Ray starting beside it) does not inflate.

Suggestions, each a pure function tested on synthetic curves:
  steepest - the steepest descent of the smoothed loss against log LR, below its minimum;
  valley   - the middle of the longest falling stretch of the smoothed loss, below its minimum
             (fastai's default);
  min10    - the LR of the minimum smoothed loss, divided by 10;
  minimum  - the LR of the minimum smoothed loss (Smith's upper bound for 1cycle).
The chosen one is the band's maximum; the band's minimum is max / 10, as for 1cycle.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

SKIP_START = 0.10    # share of the curve skipped at the start: noise around the initial loss
SKIP_END = 0.05      # and at the end, where the test has stopped on a climb or on NaN
MIN_STEPS = 300      # a test shorter than this reads ~12 points per decade, too few (issue #7)
TIME_CAP_S = 60.0    # the longest a default-length test may take, extension included
EXTEND = 3           # an uninformative curve is run again this many times as densely
RERUN_BELOW = 3      # decades below the first run's lowest loss where the rerun starts
FALL = 0.85          # an informative curve falls below 85% of min(start loss, chance loss)
VAL_SUBSET = 512     # --val-loss: a fixed held-out subset, not one noisy batch
SUGGESTERS = ("valley", "steepest", "min10", "minimum")
# The rule that sets lr-find's band by default: the one whose LR trained best in one 1cycle run
# across the quality benchmark's datasets (bench/lr_rules.py; the README quotes the table).
DEFAULT_PICK = "steepest"
# smith's: the anchor of stage 2's two-decade search, chosen on the quality benchmark
# (bench/quality.py --contenders smith smith-steepest could not tell the two apart, and the
# stage-2 range was fitted around where the best trials lay against min10's pick).
SMITH_PICK = "min10"


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
    num_classes: int = 0
    val_samples: int = 0                 # the validation part's size and its largest class's share:
    majority: float = 0.0                # the accuracy of always guessing that class (chance)
    problem: Optional[str] = None        # why the curve cannot be read, after any extension
    notes: List[str] = field(default_factory=list)   # what the test did about it, one line each
    steps: int = 0                       # training steps run (in val mode, points are fewer)
    step_s: float = 0.0                  # seconds per step over the run's second half
    epoch_steps: int = 0                 # the trainer's steps per epoch at its data and batch

    def suggest(self) -> Dict[str, float]:
        self.suggestions = suggest_all(self.lrs, self.smoothed)
        return self.suggestions


def default_steps(train_samples: int, batch: int) -> int:
    """At least one epoch, or MIN_STEPS, whichever is larger (Smith's tests ran for epochs)."""
    return max(math.ceil(train_samples / max(1, batch)), MIN_STEPS)


def smooth(losses: Sequence[float], window: Optional[int] = None) -> List[float]:
    """A centred running mean: unlike an EMA (beta 0.98 lags ~50 steps, decades of LR in a
    short test) it does not shift the curve. Non-finite points end the usable curve."""
    n = len(losses)
    w = window or max(5, n // 25)
    half = w // 2
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        part = losses[lo:hi]
        out.append(sum(part) / len(part) if all(math.isfinite(x) for x in part) else math.nan)
    return out


def _usable(lrs: Sequence[float], smoothed: Sequence[float]):
    """Cut the curve at its first non-finite point, trim the noisy start and end, and refuse
    curves with nothing to read."""
    n = 0
    for lr, loss in zip(lrs, smoothed):
        if not (math.isfinite(lr) and math.isfinite(loss)) or lr <= 0:
            break
        n += 1
    lrs, sm = list(lrs[:n]), list(smoothed[:n])
    if n >= 20:
        a, b = int(n * SKIP_START), n - int(n * SKIP_END)
        lrs, sm = lrs[a:b], sm[a:b]
    if len(lrs) < 5:
        raise LRFinderError(f"only {len(lrs)} usable points on the curve (need 5): widen the LR range or add steps")
    lo, hi = min(sm), max(sm)
    if hi - lo <= 1e-3 * max(abs(hi), 1e-12):
        raise LRFinderError(f"the loss is flat over the range ({lo:.4g} to {hi:.4g}): nothing to choose from; "
                            "raise the end LR or check that the model trains")
    return lrs, sm


def check_curve(losses: Sequence[float], smoothed: Sequence[float], num_classes: int,
                prior_loss: Optional[float] = None) -> Optional[str]:
    """Why the curve says nothing, or None. It must fall clearly: its smoothed minimum below
    FALL x the lower of the starting loss and the chance loss: that of guessing the class prior
    (``prior_loss``; ln C where the classes are balanced, less where they are not, so a net that
    learns only that 90% of the images are one class has not read the data). A BatchNorm net
    whose loss wanders from 2.46 to 2.37 with 10 classes (ln 10 = 2.30) has learned nothing."""
    finite = [x for x in losses if math.isfinite(x)]
    if len(finite) < 10:
        return f"only {len(finite)} finite losses"
    start = sorted(finite[:max(3, len(finite) // 10)])[max(3, len(finite) // 10) // 2]
    sm = [x for x in smoothed if math.isfinite(x)]
    low = min(sm) if sm else math.inf
    balanced = math.log(num_classes) if num_classes > 1 else start
    chance = balanced if prior_loss is None or num_classes < 2 else prior_loss
    if low > FALL * min(start, chance):
        said = (f"chance is ln {num_classes} = {chance:.3g}" if abs(chance - balanced) < 0.01 else
                f"chance, guessing the classes' shares, is {chance:.3g}")
        return f"the loss never falls clearly: from {start:.3g} to at best {low:.3g} ({said})"
    return None


def shares(labels):
    """Each class's share of ``labels``: empty where there are none."""
    import torch
    labels = torch.as_tensor(labels).long().flatten()
    return torch.bincount(labels).double() / len(labels) if len(labels) else torch.zeros(0)


def prior_loss(labels) -> Optional[float]:
    """The cross-entropy of always predicting the labels' class shares: their entropy."""
    p = shares(labels)
    return float(-(p[p > 0] * p[p > 0].log()).sum()) if len(p) else None


def _up_to_minimum(lrs: Sequence[float], smoothed: Sequence[float]):
    """The usable curve up to its lowest loss. A fall past it is a recovery from a blow-up (a
    BatchNorm net's loss spikes at a high LR, then drops back before it climbs for good), not
    an LR that trains: on digits the steepest fall of the whole curve lay at 0.43, above the
    minimum at 0.05."""
    lrs, sm = _usable(lrs, smoothed)
    i = min(range(len(sm)), key=sm.__getitem__)
    return lrs[:i + 1], sm[:i + 1]


def steepest(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The LR where the smoothed loss falls fastest against log LR, below its minimum."""
    lrs, sm = _up_to_minimum(lrs, smoothed)
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
    """The middle of the longest stretch over which the smoothed loss keeps falling, below its
    minimum."""
    lrs, sm = _up_to_minimum(lrs, smoothed)
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


def minimum(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """The LR of the minimum smoothed loss itself: Smith's upper bound for 1cycle, where the
    loss stops falling (1803.09820 sec. 4.1)."""
    return min10(lrs, smoothed) * 10


RULES = {"valley": valley, "steepest": steepest, "min10": min10, "minimum": minimum}


def suggest_all(lrs: Sequence[float], smoothed: Sequence[float]) -> Dict[str, float]:
    _usable(lrs, smoothed)   # the common errors once, with their own message
    return {name: rule(lrs, smoothed) for name, rule in RULES.items()}


def band(max_lr: float, div: float = 10.0):
    """Smith's 1cycle band: from max/10 up to max."""
    return max_lr / div, max_lr


def lr_at_step(i: int, steps: int, start: float, end: float, mode: str = "exp") -> float:
    frac = i / max(1, steps - 1)
    if mode == "linear":
        return start + (end - start) * frac
    return start * (end / start) ** frac


def range_test(cfg, start: float = 1e-7, end: float = 10.0, steps: Optional[int] = None, mode: str = "exp",
               val_loss: bool = False, stop_factor: float = 4.0, device=None, cpu_threads: Optional[int] = None,
               time_cap: float = TIME_CAP_S, say=None, num_gpus: Optional[float] = None) -> LRCurve:
    """Run the test with the trainer's own model, optimizer, data, batch size and step;
    ``num_gpus`` as a trial holds them (None: every GPU this process sees).

    ``steps=None`` sizes it to the data (``default_steps``) within ``time_cap`` seconds; a curve
    that does not fall clearly is then run again EXTEND times longer (``say`` hears one line
    about it). A given ``steps`` is taken as it is."""
    from tunesmith.trainables.trainer import Trainer

    began = time.perf_counter()
    trainer = Trainer(cfg, num_gpus=num_gpus, device=device, cpu_threads=cpu_threads)
    saved_model = copy.deepcopy(trainer.model.state_dict())
    saved_opt = copy.deepcopy(trainer.optimizer.state_dict())
    k = trainer.data.num_classes
    try:
        if steps is not None:
            curve = _one_test(trainer, start, end, steps, mode, val_loss, stop_factor)
            curve.problem = check_curve(curve.losses, curve.smoothed, k, prior_loss(trainer.data.train_y))
        else:
            curve = _sized_test(trainer, start, end, mode, val_loss, stop_factor, time_cap, began, say,
                                lambda: _restore(trainer, saved_model, saved_opt))
    finally:
        _restore(trainer, saved_model, saved_opt)   # the test leaves no trace on the model
    curve.num_classes = k
    p = shares(trainer.data.val_y)
    curve.val_samples, curve.majority = len(trainer.data.val_y), float(p.max()) if len(p) else 0.0
    curve.epoch_steps = trainer.steps_per_epoch
    curve.seconds = time.perf_counter() - began
    return curve


def _sized_test(trainer, start: float, end: float, mode: str, val_loss: bool, stop_factor: float,
                time_cap: float, began: float, say, restore) -> LRCurve:
    """The default-length test: sized to the data, in steps per decade of LR, within the cap.

    The step time is sampled while other work may share the cores (smith starts Ray beside it),
    so the sample only bounds the first run when even MIN_STEPS would not fit in half the cap.
    A rerun is planned from the first run's own pace over its second half, and skips the decades
    the first run showed flat: it starts RERUN_BELOW decades under the first run's lowest loss,
    at EXTEND times its density, so its length depends on the data, not on the load."""
    k, prior = trainer.data.num_classes, prior_loss(trainer.data.train_y)
    step_s = _time_steps(trainer, start)
    fits = MIN_STEPS * step_s <= time_cap / 2
    if not fits and not trainer.cfg.model.fine_tunes:
        return _not_run(step_s, time_cap)
    planned = default_steps(len(trainer.data.train_y), trainer.global_batch)
    floor = MIN_STEPS if fits else 100
    first = min(planned, max(floor, int(time_cap / (EXTEND + 1) / step_s)))
    curve = _one_test(trainer, start, end, first, mode, val_loss, stop_factor)
    curve.problem = check_curve(curve.losses, curve.smoothed, k, prior)
    if not curve.problem:
        return curve
    per_decade = first / _decades(start, end, mode)
    again = _rerun_start(curve, start, end, mode)
    span = _decades(again, end, mode)
    left = time_cap - (time.perf_counter() - began)
    longer = min(math.ceil(EXTEND * per_decade * span), int(left / curve.step_s))
    rerun = longer >= 2 * per_decade * span   # barely denser would tell nothing new
    where = f" from LR {again:.3g}, below which it was flat" if again > start else ""
    note = f"LR range test: {curve.problem} in {curve.steps} steps; " + (
        f"running it again over {longer} steps{where}" if rerun else
        f"no room in its {time_cap:g}s time cap to run it twice as densely ({max(0.0, left):.1f}s left)")
    if say:
        say(note)
    if not rerun:
        curve.notes.append(note)
        return curve
    restore()
    first_problem = curve.problem
    curve = _one_test(trainer, again, end, longer, mode, val_loss, stop_factor)
    curve.notes.append(note)
    curve.problem = check_curve(curve.losses, curve.smoothed, k, prior)
    if curve.problem:
        curve.notes.append(f"still uninformative after {curve.steps} steps ({first_problem})")
    return curve


def _not_run(step_s: float, time_cap: float) -> LRCurve:
    """No test where even MIN_STEPS would take more than half the cap (at the fastest pace, which
    smith's Ray start beside it doubles) on a network from random weights: a shorter one reads
    too few points, and its loss barely leaves chance (on the benchmark's 64-px colour sets at
    90 s, 96 to 121 steps took 11 to 16 s and gave no band every time). Learnt weights fall
    within a few dozen steps, so a fine-tuning test still runs its 100. The pace stays: smith
    sizes stage 2 from it. Its reason is the curve's problem, which every summary prints."""
    problem = (f"not run: {MIN_STEPS} steps, the fewest that read a curve from random weights, would take about "
               f"{MIN_STEPS * step_s:.0f}s at {step_s * 1000:.0f} ms a step, more than half its {time_cap:g}s time "
               "cap (a larger --max-seconds or time budget runs it)")
    return LRCurve([], [], [], "not run", problem=problem, step_s=step_s)


def _decades(start: float, end: float, mode: str) -> float:
    """How much LR range a test covers, in the unit its density is counted in."""
    return math.log10(end / start) if mode == "exp" else 1.0


def _rerun_start(curve: LRCurve, start: float, end: float, mode: str) -> float:
    """Where a rerun may begin: RERUN_BELOW decades under the LR of the first run's lowest
    smoothed loss (exp mode only), never below the asked start."""
    if mode != "exp":
        return start
    try:
        lrs, sm = _usable(curve.lrs, curve.smoothed)
    except LRFinderError:
        return start
    at = lrs[sm.index(min(sm))]
    return min(max(start, at / 10 ** RERUN_BELOW), end / 10 ** RERUN_BELOW)


def _restore(trainer, model_state, opt_state) -> None:
    trainer.model.load_state_dict(model_state)
    trainer.optimizer.load_state_dict(opt_state)
    trainer.monitor = type(trainer.monitor)(trainer.monitor.factor)


def _time_steps(trainer, lr: float, n: int = 6) -> float:
    """Seconds per training step: the fastest of ``n`` steps at the start LR (which barely move
    the weights; they are restored anyway), so a burst of other work on the cores does not
    count. The first step warms up and is not counted."""
    import torch
    x, y = next(trainer.data.epoch(torch.arange(len(trainer.data.train_y)), trainer.global_batch, 1))
    trainer.train_step(x, y, lr, None)[0].item()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trainer.train_step(x, y, lr, None)[0].item()
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-4)


def _one_test(trainer, start: float, end: float, steps: int, mode: str, val_loss: bool,
              stop_factor: float) -> LRCurve:
    import torch
    from tunesmith.trainables.trainer import DivergenceMonitor

    model, bs = trainer.model, trainer.global_batch
    val_x, val_y = trainer.data.val_sample(VAL_SUBSET) if val_loss else (None, None)
    # Evaluating the subset costs about a third of a training step per sample: every k steps
    # keeps the evaluation at most as costly as the training it measures.
    every = max(1, round(len(val_y) / (3 * bs))) if val_loss else 1
    if val_loss:
        val_x = trainer._inputs(val_x)
    # the trainer's own divergence rule: smoothed loss above stop_factor x its best, or NaN/inf
    monitor = DivergenceMonitor(stop_factor, warmup=max(10, int(steps * SKIP_START)))
    lrs, losses = [], []
    reason = f"reached the end LR {end:g}"
    batches = trainer.batches()
    half = steps // 2
    t_half = time.perf_counter()   # reset at the half: a run that stops before it counts whole
    for i in range(steps):
        if i == half:
            t_half = time.perf_counter()
        x, y = next(batches)
        lr = lr_at_step(i, steps, start, end, mode)
        loss, _, _ = trainer.train_step(x, y, lr, None)
        value = loss.item()
        if val_loss:
            if i % every and i != steps - 1 and math.isfinite(value):
                continue
            model.eval()
            with torch.inference_mode(), trainer._autocast():
                value = torch.nn.functional.cross_entropy(model(val_x).float(), val_y).item()
        lrs.append(lr)
        losses.append(value)
        if monitor.update(value):
            reason = (f"loss became {value} at LR {lr:.3g}" if not math.isfinite(value) else
                      f"smoothed loss passed {stop_factor:g}x its best at LR {lr:.3g}")
            break
    # the pace once anything sharing the cores at the start (Ray starting) has settled
    step_s = (time.perf_counter() - t_half) / (i + 1 - (half if i >= half else 0))
    return LRCurve(lrs, losses, smooth(losses), reason, "val" if val_loss else "train", steps=i + 1,
                   step_s=step_s)
