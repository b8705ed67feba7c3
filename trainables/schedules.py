"""Learning-rate and momentum schedules as pure functions of training progress.

``t`` is progress in epochs (a float: step / steps_per_epoch), ``total`` the run's length
in epochs. Each schedule returns the LR at ``t``; ``momentum_at`` returns the momentum
for the cyclical schedules and None where the optimizer's fixed momentum applies.
They are stepped every batch by the trainer, and tested without torch or Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class ScheduleParams:
    lr: float                   # the base LR; the peak for cyclical schedules
    warmup_epochs: float = 1.0  # warmup_cosine: linear ramp from 0, as in Goyal et al.
    step_epochs: float = 10.0   # step: divide every this many epochs
    step_gamma: float = 0.1     # step: the factor (Smith's seed experiments divide by 10)
    min_lr_ratio: float = 0.0   # warmup_cosine: floor of the cosine as a share of lr
    div_factor: float = 10.0    # one_cycle/triangular: min LR = lr / div_factor (Smith: max/10)
    final_div: float = 100.0    # one_cycle: annihilation ends at min LR / final_div
    annihilation: float = 0.1   # one_cycle: share of the run spent annihilating
    cycle_epochs: float = 4.0   # triangular: one full cycle (Smith: 2-10 epochs per half)
    max_momentum: float = 0.95  # cyclical momentum bounds (Smith: 0.95 down to 0.85)
    min_momentum: float = 0.85
    cycle_momentum: bool = True
    milestones: Tuple[float, ...] = ()   # budget-aware: the schedule restarts and ends at each


def _lerp(a: float, b: float, frac: float) -> float:
    return a + (b - a) * min(max(frac, 0.0), 1.0)


def constant(t: float, total: float, p: ScheduleParams) -> float:
    return p.lr


def step(t: float, total: float, p: ScheduleParams) -> float:
    return p.lr * p.step_gamma ** math.floor(t / p.step_epochs + 1e-9)


def warmup_cosine(t: float, total: float, p: ScheduleParams) -> float:
    warm = min(p.warmup_epochs, total)
    if t < warm:
        return p.lr * t / warm if warm > 0 else p.lr
    floor = p.lr * p.min_lr_ratio
    span = max(total - warm, 1e-12)
    return floor + 0.5 * (p.lr - floor) * (1 + math.cos(math.pi * min((t - warm) / span, 1.0)))


def _triangle(t: float, cycle: float) -> float:
    """0 at the start of a cycle, 1 half-way, 0 again at its end."""
    pos = (t / cycle) % 1.0
    return 1 - abs(2 * pos - 1)


def triangular(t: float, total: float, p: ScheduleParams) -> float:
    low = p.lr / p.div_factor
    return _lerp(low, p.lr, _triangle(t, p.cycle_epochs))


def _one_cycle_phase(t: float, total: float, p: ScheduleParams):
    """(phase, fraction through it): 'up', 'down' or 'annihilate'."""
    cycle = total * (1 - p.annihilation)
    half = cycle / 2
    if t < half:
        return "up", t / half if half > 0 else 1.0
    if t < cycle:
        return "down", (t - half) / half
    rest = total - cycle
    return "annihilate", (t - cycle) / rest if rest > 0 else 1.0


def one_cycle(t: float, total: float, p: ScheduleParams) -> float:
    low = p.lr / p.div_factor
    phase, frac = _one_cycle_phase(t, total, p)
    if phase == "up":
        return _lerp(low, p.lr, frac)
    if phase == "down":
        return _lerp(p.lr, low, frac)
    return _lerp(low, low / p.final_div, frac)


SCHEDULES: Dict[str, Callable[[float, float, ScheduleParams], float]] = {
    "constant": constant,
    "step": step,
    "warmup_cosine": warmup_cosine,
    "triangular": triangular,
    "one_cycle": one_cycle,
}


def list_schedules() -> list:
    return sorted(SCHEDULES)


def lr_at(name: str, t: float, total: float, p: ScheduleParams) -> float:
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown schedule {name!r}; choose from {', '.join(list_schedules())}") from None
    if p.milestones and name in BUDGET_AWARE:
        whole = total
        t, total = segment(t, total, p.milestones)
        if name == "warmup_cosine":   # the warm-up keeps its share of each segment
            p = replace(p, warmup_epochs=p.warmup_epochs * total / whole)
    return fn(t, total, p)


# --- budget-aware schedules (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020) ----------
# Under ASHA, a trial is judged at each rung. A 1cycle planned for the whole run is at its peak
# LR there, so a rung would rank warm-up noise. Planned in segments that end at the rungs, the
# schedule has annealed whenever a verdict is read; a promoted trial starts the next segment
# from its weights, on a schedule re-planned for the next rung.
BUDGET_AWARE = ("one_cycle", "warmup_cosine")   # the schedules that anneal, and so can be re-planned


def rung_milestones(max_t: int, grace: int, reduction_factor: float) -> Tuple[int, ...]:
    """The epochs at which a trial's schedule ends a segment: the ASHA rungs grace * rf^k that
    leave a final segment at least as long as the one before it, and max_t itself."""
    rungs, r = [], float(grace)
    while r < max_t:
        rungs.append(int(round(r)))
        r *= reduction_factor
    kept: list = []
    for m in rungs:
        prev = kept[-1] if kept else 0
        if max_t - m >= m - prev and m > prev:
            kept.append(m)
    return tuple(kept) + (max_t,)


def segment(t: float, total: float, milestones: Sequence[float]) -> Tuple[float, float]:
    """(progress within the segment holding ``t``, the segment's length); the whole run when
    there are no milestones."""
    start = 0.0
    for end in milestones:
        end = min(float(end), total)
        if t < end or end >= total:
            return t - start, max(end - start, 1e-12)
        start = end
    return t - start, max(total - start, 1e-12)


def momentum_at(name: str, t: float, total: float, p: ScheduleParams) -> Optional[float]:
    """Momentum moves inversely to the LR in the cyclical schedules (Smith 2018, sec. 4.3)."""
    if not p.cycle_momentum:
        return None
    if name == "one_cycle":
        if p.milestones:
            t, total = segment(t, total, p.milestones)
        phase, frac = _one_cycle_phase(t, total, p)
        if phase == "up":
            return _lerp(p.max_momentum, p.min_momentum, frac)
        if phase == "down":
            return _lerp(p.min_momentum, p.max_momentum, frac)
        return p.max_momentum
    if name == "triangular":
        return _lerp(p.max_momentum, p.min_momentum, _triangle(t, p.cycle_epochs))
    return None
