"""ASHA that records why it pruned each trial, and rebuilds its rungs on resume."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it pruned, at which epoch and with what value, so
    that trials.parquet can say 'pruned' instead of guessing from the epoch count."""

    def __init__(self, *args, rungs: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruned: Dict[str, str] = {}
        if rungs:
            # Judge exactly where the budget-aware schedules have annealed (SweepSpec.milestones),
            # not at Ray's own grace * rf^k, which can fall mid-segment.
            for bracket in self._brackets:
                bracket._rungs = [(m, {}) for m in sorted(rungs, reverse=True)]

    def restore_ended(self, ended: Dict[str, str]) -> None:
        """The trials the sweep's files record as ended (pruned, completed, diverged), with why,
        on resume: Tune's snapshot may predate their end (ray#30838 restores no scheduler
        decision), and a restored trial would train on. They are stopped before they run again;
        a pruned one keeps its reason."""
        self._ended = dict(ended)
        for tid, reason in ended.items():
            if reason.startswith("pruned"):
                self.pruned[tid] = reason

    def choose_trial_to_run(self, tune_controller):
        for trial in list(tune_controller.get_trials()):
            if trial.status in ("PENDING", "PAUSED") and trial.trial_id in getattr(self, "_ended", {}):
                trial.init_local_path()             # a trial the searcher made again has no folder yet
                tune_controller.stop_trial(trial)   # Tune's own way to end a trial that should not run
        return super().choose_trial_to_run(tune_controller)

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
        if action == TrialScheduler.STOP and not reached_end and not result.get("done") \
                and not result.get("diverged"):
            value = result.get(self._metric)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else value
            self.pruned[trial.trial_id] = (f"pruned by ASHA at epoch {result.get(self._time_attr)} "
                                           f"({self._metric}={shown} below the rung's cutoff)")
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        if self._no_value(result):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)
