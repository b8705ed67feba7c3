"""tunesmith's Tune schedulers: first in, first out over the live trials only, and ASHA that
records why it pruned each trial and rebuilds its rungs on resume."""
from __future__ import annotations

import bisect
import functools
import math
from typing import Dict, Optional, Sequence

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler


class LiveQueue(FIFOScheduler):
    """Tune's first in, first out, over the live trials only. Tune asks the scheduler which trial
    to start at every step of its controller, and FIFOScheduler walks every trial of the sweep
    to answer (twice when none waits): 0.25 ms a call at 1,000 trials, 1.7 ms at 5,000, which
    made the cost per trial grow with the sweep. The live ones (pending, running, paused) are
    as many as the trials running at once and those Tune queues; they are taken in the order
    Tune added them, as FIFOScheduler takes them.

    On resume, a trial the sweep's files record as ended is stopped before it runs again
    (``restore_ended``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._order: Dict[str, int] = {}
        self._added = 0
        self._ended: Dict[str, str] = {}

    def __setstate__(self, state):   # a scheduler pickled by an earlier tunesmith had no queue
        self.__dict__.update({"_order": {}, "_added": 0, "_ended": {}, **state})

    def restore_ended(self, ended: Dict[str, str]) -> None:
        """The trials the sweep's files record as ended (pruned, completed, diverged), with why,
        on resume: Tune's snapshot may predate their end (ray#30838 restores no scheduler
        decision), and a restored trial would train on."""
        self._ended = dict(ended)

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        self._added += 1
        self._order[trial.trial_id] = self._added   # a requeued trial goes last, as in Tune's list

    def on_trial_complete(self, tune_controller, trial, result):
        self._order.pop(trial.trial_id, None)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._order.pop(trial.trial_id, None)
        super().on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        live = list(tune_controller.get_live_trials())
        for trial in live:
            if trial.status in ("PENDING", "PAUSED") and trial.trial_id in self._ended:
                trial.init_local_path()             # a trial the searcher made again has no folder yet
                tune_controller.stop_trial(trial)   # Tune's own way to end a trial that should not run
        for status in ("PENDING", "PAUSED"):
            waiting = [t for t in live if t.status == status]
            if waiting:
                return min(waiting, key=lambda t: self._order.get(t.trial_id, 0))
        return None


class Rung(dict):
    """A rung's values (trial id to value), also kept in order as they arrive. Ray's bracket
    took np.nanpercentile of every value in the rung at each trial that reached it: a cost per
    trial that grows with the sweep (5% of the driver's time by 3,000 trivial trials,
    bench/scale.py). NaN joins the dict but not the order, as nanpercentile skips it."""

    def __init__(self, values=()):
        super().__init__()
        self.ordered: list = []
        for key, value in dict(values).items():
            self[key] = value

    def __setitem__(self, key, value) -> None:
        if key in self:
            old = self[key]
            if not math.isnan(old):
                del self.ordered[bisect.bisect_left(self.ordered, old)]
        super().__setitem__(key, value)
        if not math.isnan(value):
            bisect.insort(self.ordered, value)

    def __reduce__(self):
        return type(self), (dict(self),)


def rung_cutoff(share: float, recorded) -> Optional[float]:
    """np.nanpercentile(values, 100 * share) with its linear interpolation, from the rung's
    order (a rung pickled by an earlier tunesmith is a plain dict: numpy's, as Ray does)."""
    if not recorded:
        return None
    if not isinstance(recorded, Rung):
        return np.nanpercentile(list(recorded.values()), 100 * share)
    values = recorded.ordered
    if not values:
        return math.nan
    at = share * (len(values) - 1)
    low = math.floor(at)
    a, b, t = values[low], values[min(low + 1, len(values) - 1)], at - low
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t   # numpy's _lerp


class RecordingASHA(LiveQueue, AsyncHyperBandScheduler):
    """ASHA that remembers which trials it pruned, at which epoch and with what value, so
    that trials.parquet can say 'pruned' instead of guessing from the epoch count."""

    def __init__(self, *args, rungs: Optional[Sequence[int]] = None, floor: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruned: Dict[str, str] = {}
        self.floor = floor   # asha.floor: no better than this at a rung is pruned, first there or not
        for bracket in self._brackets:
            # Judge exactly where the budget-aware schedules have annealed (SweepSpec.milestones),
            # not at Ray's own grace * rf^k, which can fall mid-segment.
            milestones = sorted(rungs, reverse=True) if rungs else [m for m, _ in bracket._rungs]
            bracket._rungs = [(m, Rung()) for m in milestones]
            bracket.cutoff = functools.partial(rung_cutoff, 1 - 1 / bracket.rf)

    def restore_ended(self, ended: Dict[str, str]) -> None:
        """As LiveQueue's; a pruned one keeps its reason."""
        super().restore_ended(ended)
        for tid, reason in ended.items():
            if reason.startswith("pruned"):
                self.pruned[tid] = reason

    def restore_rungs(self, curves: Dict[str, Dict[int, float]]) -> None:
        """Tune restores the searcher on resume but not the scheduler (ray#30838): refill each
        rung with what every trial reported at its milestone, as read back from epochs/. Applied
        at the first result, once Tune has told the scheduler the metric's direction."""
        self._pending_rungs = curves

    def _apply_pending_rungs(self) -> None:
        curves, self._pending_rungs = self._pending_rungs, None
        sign = self._metric_op or 1.0
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                for tid, curve in curves.items():
                    if milestone in curve and tid not in recorded:
                        recorded[tid] = sign * curve[milestone]

    def _no_value(self, result) -> bool:
        """A result without a number to rank (a diverged trial's NaN): it joins no rung. Ray's
        cutoff skips NaN anyway, but a rung holding only NaN made numpy warn "All-NaN slice
        encountered" on the user's terminal."""
        value = result.get(self._metric)
        return isinstance(value, float) and math.isnan(value)

    def on_trial_result(self, tune_controller, trial, result):
        if getattr(self, "_pending_rungs", None):
            self._apply_pending_rungs()
        if self._no_value(result):
            return TrialScheduler.CONTINUE   # the trial stops itself (trainables/trainer.py)
        action = super().on_trial_result(tune_controller, trial, result)
        reached_end = result.get(self._time_attr, 0) >= self._max_t
        if action == TrialScheduler.CONTINUE and not reached_end and not result.get("done") \
                and self._at_floor(result):
            self.pruned[trial.trial_id] = (f"pruned by ASHA at epoch {result.get(self._time_attr)} "
                                           f"({self._metric}={result[self._metric]:.4g}, no better than "
                                           f"asha.floor {self.floor:.4g})")
            return TrialScheduler.STOP
        if action == TrialScheduler.STOP and not reached_end and not result.get("done") \
                and not result.get("diverged"):
            value = result.get(self._metric)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else value
            self.pruned[trial.trial_id] = (f"pruned by ASHA at epoch {result.get(self._time_attr)} "
                                           f"({self._metric}={shown} below the rung's cutoff)")
        return action

    def _at_floor(self, result) -> bool:
        """At a rung, and no better than asha.floor. ASHA passes the first trial to reach a rung
        whatever it scored: in smith's stage 2 a trial at chance (an LR at the range's top that
        left the network guessing one class) trained its whole schedule in one of two slots
        when it got there first."""
        floor, value = getattr(self, "floor", None), result.get(self._metric)
        if floor is None or not isinstance(value, (int, float)) or not self._brackets:
            return False
        if result.get(self._time_attr) not in {m for m, _ in self._brackets[0]._rungs}:
            return False
        sign = self._metric_op or 1.0
        return sign * value <= sign * floor + 1e-12

    def on_trial_complete(self, tune_controller, trial, result):
        if self._no_value(result):
            self._trial_info.pop(trial.trial_id, None)
            self._order.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)
