"""The pilot's reports (orchestrator/pilot.py) to the sweep's Tune callbacks, from Tune's thread."""
from __future__ import annotations

import queue
from typing import List

from ray.tune import Callback

from tunesmith.orchestrator.pilot import TRIAL_ID, Pilot
from tunesmith.orchestrator.sinks import transient_state


class PilotRelay(Callback):
    """First among the sweep's callbacks: at each of Tune's steps, the pilot's reports go to the
    others, as Tune's hooks, from Tune's own thread. At the sweep's end it waits for the pilot
    (which keeps the sweep's deadline) before the writer closes."""

    def __init__(self, pilot: Pilot, callbacks: List[Callback], callback, stopper, node_ip: str):
        self.pilot, self.callbacks, self.callback, self.stopper = pilot, callbacks, callback, stopper
        self.node_ip = node_ip
        self.done = False

    # Tune pickles its run config: a resumed sweep has no pilot
    TRANSIENT = {"pilot": lambda: None, "callbacks": list, "callback": lambda: None, "stopper": lambda: None,
                 "done": lambda: True}

    def __getstate__(self):
        return transient_state(self, self.TRANSIENT)

    def _hooks(self, name: str, trials, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(0, [*trials, self.pilot.trial], self.pilot.trial, *args)

    def drain(self, trials=()) -> None:
        while self.pilot is not None and not self.done:
            try:
                kind, value = self.pilot.events.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                self._hooks("on_trial_start", trials)   # then its own start, not the relay's time
                self.callback.set_time(TRIAL_ID, "started_at", value)
            elif kind == "result":
                value["node_ip"] = self.node_ip
                start_up = self.callback.start_up   # what Tune's trials take to start, not this one
                self._hooks("on_trial_result", trials, value)
                self.callback.start_up = start_up
            elif kind == "checkpoint":
                self.pilot.trial.checkpoint = value
            elif kind == "complete":
                self.pilot.trial.status = "TERMINATED"
                self._hooks("on_trial_complete", trials)
                self.callback.set_time(TRIAL_ID, "ended_at", value)
                self.done = True
            elif kind == "error":   # the writer takes the error's text; the others read its record
                ended, text = value
                self.pilot.trial.status = "ERROR"
                self.callback.finish(TRIAL_ID, error=text)
                self.callback.set_time(TRIAL_ID, "ended_at", ended)
                self.callback.maybe_flush()
                for cb in self.callbacks:
                    if cb is not self.callback:
                        cb.on_trial_error(0, [*trials, self.pilot.trial], self.pilot.trial)
                self.done = True

    def finish(self, trials=(), stop: bool = False) -> None:
        """The sweep has ended: stop the pilot if the sweep was cut short, wait for it, relay the
        rest."""
        if self.pilot is None or self.done:
            return
        if stop:
            self.pilot.stop()
        self.pilot.ended.wait()
        self.drain(trials)

    def on_step_end(self, iteration, trials, **info):
        if self.pilot is not None and not self.done:
            if self.stopper.event.is_set() or self.stopper.timed_out.is_set():
                self.pilot.stop()
            else:
                self.pilot.move_deadline(self.stopper.trials_deadline)
        self.drain(trials)

    def on_experiment_end(self, trials, **info):
        self.finish(trials)
