"""A compact progress display: one line per finished trial, and a status line while
trials run. Replaces Tune's table reporter, which reprints the whole table."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, writer, total: int, every_seconds: float = 15.0, stream=None):
        self.writer, self.total, self.every = writer, total, every_seconds
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self._last = self.start

    def __getstate__(self):   # Tune pickles the run config (tuner.pkl); streams do not pickle
        state = dict(self.__dict__)
        state["stream"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.stream = self.stream or sys.stdout

    def _say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", file=self.stream, flush=True)

    def _counts(self) -> str:
        recs = list(self.writer.trials.values())
        running = sum(r.status == "running" for r in recs)
        done = len(recs) - running
        best = self.writer.ranked()
        best_txt = f", best {self.writer.metric} {best[0].best[self.writer.metric]:.4f}" if best else ""
        return f"{done}/{self.total} done, {running} running{best_txt}"

    def _finished(self, trial) -> None:
        rec = self.writer.trials.get(trial.trial_id)
        if rec is None:
            return
        value = rec.best.get(self.writer.metric)
        shown = f"{self.writer.metric} {value:.4f}" if value is not None else "no result"
        hps = " ".join(f"{k}={_short(v)}" for k, v in rec.hparams.items())
        self._say(f"{trial.trial_id} {rec.status:<9} {shown} after {rec.epochs} ep  {hps}  | {self._counts()}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial)
        rec = self.writer.trials.get(trial.trial_id)
        if rec is not None:
            self._say(f"{trial.trial_id} error: {rec.stop_reason}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._say(self._counts())


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
