"""TPE (hyperopt) as Tune runs it, with one difference: a trial that ended without reporting the
metric (the sweep's time budget ran out before its first epoch) is recorded as a trial without
a result, not as an error that ends the sweep (Ray's HyperOptSearch raises on it)."""
from __future__ import annotations

from typing import Dict, Optional

from ray.tune.search.hyperopt import HyperOptSearch


class TPESearch(HyperOptSearch):
    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        if result is not None and self.metric not in result:
            result, error = None, True   # TPE learns only from trials with a result
        super().on_trial_complete(trial_id, result=result, error=error)
