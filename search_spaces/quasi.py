"""Quasi-random search: a scrambled Halton sequence over the space, one point per trial.

With the few trials a short budget allows, independent random draws leave gaps and clumps: two
of the first four LRs in the same half-decade is common. A low-discrepancy sequence spreads
each prefix of the sequence evenly over every dimension (its first coordinate, the first
dimension of the space, halves, then quarters, ...), so the first trials already cover the
range, while the scrambling keeps it random across seeds (Bousquet et al., "Critical
hyper-parameters: no random, no cry", 2017; the Google Deep Learning Tuning Playbook
recommends it for exploration). smith's stage 2 draws with it.

With ``couple=(lr_key, momentum_key, ref)`` the LR drawn is the LR at momentum ``ref``, and each
trial's LR is scaled by (1 - m) / (1 - ref) for its own momentum m: what is spread evenly is the
effective step lr / (1 - m), which is what the range test measured (at its momentum ``ref``).
Drawn independently, a 0.99 momentum multiplies a high LR's step by ten, and on the quality
benchmark's harder datasets a third of smith's trials died that way.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ray.tune.search import Searcher

from tunesmith.search_spaces.space import point


class QuasiRandomSearch(Searcher):
    def __init__(self, dims: Sequence, seed: int = 0, points_to_evaluate: Optional[List[Dict[str, Any]]] = None,
                 metric: Optional[str] = None, mode: Optional[str] = None,
                 couple: Optional[Tuple[str, str, float]] = None):
        super().__init__(metric=metric, mode=mode)
        if any(d.kind == "grid" for d in dims):
            raise ValueError("quasi-random search cannot search a grid; use choice")
        self.dims = list(dims)
        self.seed = seed
        self.points = [dict(p) for p in points_to_evaluate or []]
        self.drawn = 0
        self._sequence = None
        self.couple = tuple(couple) if couple else None
        self.cap: Optional[int] = None   # Tune's max_concurrent_trials, which this searcher keeps
        self.live: set = set()           # trials suggested and not yet ended
        self.held: Optional[Callable[[], int]] = None   # slots held outside Tune (smith's pilot)
        if self.couple:
            keys = {d.key for d in self.dims}
            missing = [k for k in self.couple[:2] if k not in keys]
            if missing:
                raise ValueError(f"coupling needs {' and '.join(missing)} in the space")

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """The space is the spec's dimensions, given at construction (Tune's param_space holds
        the same keys, which the suggestions replace)."""
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def _next_unit(self) -> List[float]:
        if self._sequence is None:
            from scipy.stats import qmc
            self._sequence = qmc.Halton(d=max(1, len(self.dims)), scramble=True, seed=self.seed)
            self._sequence.fast_forward(self.drawn)   # after a restore: continue, not repeat
        self.drawn += 1
        return [float(x) for x in self._sequence.random(1)[0]]

    def __getstate__(self):   # Tune pickles its searcher (tuner.pkl); a resumed sweep holds no slot
        return {**self.__dict__, "held": None}

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's cap, kept here rather than by a ConcurrencyLimiter: slots held outside Tune
        (``held``) count against it."""
        self.cap = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> Optional[Dict[str, Any]]:
        if self.cap is not None and len(self.live) + (self.held() if self.held else 0) >= self.cap:
            return None   # Tune asks again at its next step
        self.live.add(trial_id)
        if self.points:
            return self.points.pop(0)
        return point(self.dims, self._next_unit(), self.couple)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        self.live.discard(trial_id)   # the sequence does not learn

    def get_state(self) -> Dict[str, Any]:
        return {"dims": self.dims, "seed": self.seed, "points": self.points, "drawn": self.drawn,
                "metric": self._metric, "mode": self._mode, "couple": self.couple, "cap": self.cap,
                "live": sorted(self.live)}

    def set_state(self, state: Dict[str, Any]) -> None:
        self.dims, self.seed, self.points, self.drawn = state["dims"], state["seed"], state["points"], state["drawn"]
        self._metric, self._mode = state["metric"], state["mode"]
        self.couple = state.get("couple")
        self.cap, self.live = state.get("cap"), set(state.get("live", ()))   # a resumed sweep keeps its cap
        self._sequence = None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))
