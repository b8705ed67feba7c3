"""Progress displays. In a terminal, a live display (rich): counts by status out of the total,
the best metric so far and its hyperparameters, elapsed time and an estimate of the time left,
and a line per running trial with its epoch and metric; it ends as a clean final table. When
output is not a terminal (CI, pipes, `ray job logs`), plain lines: one per finished trial, and a
status line every 15 s. Both replace Tune's table reporter, which reprints the whole table."""
from __future__ import annotations

import os
import sys
import time

from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from tunesmith.orchestrator.sinks import transient_state


class NoTrialLines(TrialProgressCallback):
    """Stands in for Tune's per-trial printer, which Tune adds unless one is given: at verbose=0
    it still printed "Trial train_cnn_... completed. Last result:" for a trial that ended
    without a report (one the time budget stopped before its first epoch)."""

    def on_trial_result(self, *args, **kwargs):
        pass

    def on_trial_error(self, *args, **kwargs):
        pass

    def on_trial_complete(self, *args, **kwargs):
        pass


class ProgressPrinter(Callback):
    def __init__(self, ledger, total: int, every_seconds: float = 15.0, stream=None):
        self.ledger, self.total, self.every = ledger, total, every_seconds
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self._last = self.start

    TRANSIENT = {"stream": lambda: None}   # Tune pickles the run config (tuner.pkl); streams do not pickle

    def __getstate__(self):
        return transient_state(self, self.TRANSIENT)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.stream = self.stream or sys.stdout

    def _say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", file=self.stream, flush=True)

    def _counts(self) -> str:
        recs = list(self.ledger.trials.values())
        running = sum(r.status == "running" for r in recs)
        done = len(recs) - running
        best = self.ledger.top(1)
        best_txt = f", best {self.ledger.metric} {best[0].best[self.ledger.metric]:.4f}" if best else ""
        return f"{done}/{self.total} done, {running} running{best_txt}"

    def _finished(self, trial) -> None:
        rec = self.ledger.trials.get(trial.trial_id)
        if rec is None:
            return
        value = rec.best.get(self.ledger.metric)
        shown = f"{self.ledger.metric} {value:.4f}" if value is not None else "no result"
        hps = " ".join(f"{k}={_short(v)}" for k, v in rec.hparams.items())
        self._say(f"{trial.trial_id} {rec.status:<9} {shown} after {rec.epochs} ep  {hps}  | {self._counts()}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial)
        rec = self.ledger.trials.get(trial.trial_id)
        if rec is not None:
            self._say(f"{trial.trial_id} error: {rec.stop_reason}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._say(self._counts())


class LiveProgress(ProgressPrinter):
    """The terminal display, redrawn a few times a second from the writer's records."""

    def __init__(self, ledger, total: int, budget_s: float = None, stream=None):
        super().__init__(ledger, total, stream=stream)
        self.budget_s = budget_s
        self._live = None

    TRANSIENT = {**ProgressPrinter.TRANSIENT, "_live": lambda: None}

    def _eta(self, elapsed: float, done: int) -> str:
        left = []
        if self.budget_s:
            left.append(max(0.0, self.budget_s - elapsed))
        if done:
            left.append(elapsed / done * (self.total - done))
        return f"{min(left):.0f}s" if left else "-"

    def render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
        recs = list(self.ledger.trials.values())
        counts = {}
        for r in recs:
            counts[r.status] = counts.get(r.status, 0) + 1
        running = counts.get("running", 0)
        done = len(recs) - running
        elapsed = time.monotonic() - self.start
        m = self.ledger.metric
        head = Text.assemble(
            (f"{done}/{self.total} done", "bold"), "  ",
            *(f"{k} {counts.get(k, 0)}  " for k in ("running", "completed", "pruned", "diverged", "errored")),
            f"| {elapsed:.0f}s elapsed, ~{self._eta(elapsed, done)} left")
        ranked = self.ledger.top(1)
        if ranked:
            b = ranked[0]
            hps = " ".join(f"{k}={_short(v)}" for k, v in b.hparams.items())
            best = Text.assemble(("best ", "bold"), f"{m} {b.best[m]:.4f}", f"  {b.trial_id}  {hps}", style="green")
        else:
            best = Text("best: no result yet", style="dim")
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("trial", "epoch", m, *self.ledger.hp_keys):
            table.add_column(col)
        for r in recs:
            if r.status == "running":
                value = r.curve.get(max(r.curve)) if r.curve else None
                table.add_row(r.trial_id, f"{r.epochs}/{self.ledger.epochs}",
                              "-" if value is None else f"{value:.4f}", *(_short(r.hparams.get(k)) for k in self.ledger.hp_keys))
        return Group(head, best, table) if running else Group(head, best)

    def _start_live(self):
        if self._live is None:
            from rich.console import Console
            from rich.live import Live
            self._live = Live(self.render(), console=Console(file=self.stream), refresh_per_second=4,
                              transient=False, get_renderable=self.render)
            self._live.start()
            _LIVE.add(self)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._start_live()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._start_live()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._start_live()

    def on_step_end(self, iteration, trials, **info):
        self._start_live()

    def on_experiment_end(self, trials, **info):
        self.stop()

    def stop(self):
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None
        _LIVE.discard(self)


_LIVE: set = set()


def stop_all() -> None:
    """End any live display (an interrupted sweep does not reach on_experiment_end)."""
    for display in list(_LIVE):
        display.stop()


def make(ledger, total: int, budget_s=None, stream=None):
    """The live display in a terminal, plain lines elsewhere."""
    stream = stream or sys.stdout
    if stream.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveProgress(ledger, total, budget_s, stream)
    return ProgressPrinter(ledger, total, stream=stream)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
