"""The sweep's stop: Ctrl-C, SIGTERM and the time budget, told to every trial."""
from __future__ import annotations

import signal
import threading
import time
from typing import Optional

import ray
from ray.tune.stopper import Stopper

from tunesmith.cluster.connect import raise_outside_locks


class SweepStopper(Stopper):
    """Stops every trial at the sweep's deadline or on Ctrl-C, keeping what was written; a second
    Ctrl-C aborts. Tune's own handler is switched off (TUNE_DISABLE_SIGINT_HANDLER) so that we
    know the sweep was interrupted and can say so in the results.

    ``deadline`` (time.time()) replaces Tune's ``time_budget_s``, whose clock starts at Tune's
    first check, after its set-up (3 s here): a budget counted from the command's start is then
    overrun by that much. A Tuner restored by `tunesmith resume` gets what was left of the budget
    when the sweep's state was pickled."""

    resumed: Optional["SweepStopper"] = None   # `tunesmith resume`'s, while Tune restores its copy

    def __init__(self, deadline: Optional[float] = None):
        self.event = threading.Event()       # Ctrl-C
        self.timed_out = threading.Event()   # the deadline passed
        self.deadline = deadline
        self.hold_back = None   # () -> seconds kept from the end of the budget (smith's stage 3)
        self.keeper = None      # DeadlineKeeper: tells the trials where the held-back budget ends
        self._published = deadline
        self._previous = None
        self.failure: Optional[str] = None   # why the sweep had to stop (its results could not be written)
        self._fitting = False   # inside fit(): a Tune loop runs, or is about to
        self._live = None       # its interrupt handler (SIGUSR1's), once the loop has run
        self._told = False      # Ctrl-C or SIGTERM called it

    def keep_for_trials(self) -> None:
        """With a hold-back, the trials' deadline moves earlier as stage 2's pace is measured:
        a small actor holds it, so trials on any node fit their schedules to it."""
        self.keeper = ray.remote(num_cpus=0)(DeadlineKeeper).remote(self.deadline)

    def adopt(self, keeper) -> None:
        """A resumed sweep's keeper, made before Tune's restore (its trainable carries it)."""
        self.keeper, self._published = keeper, self.deadline
        keeper.set.remote(self.deadline)

    def release(self) -> None:
        """The sweep is over: its keeper goes (smith's next stage has its own)."""
        if self.keeper is not None:
            try:
                ray.kill(self.keeper)
            except Exception:   # Ray already gone (an aborted sweep): the actor went with it
                pass
            self.keeper = None

    def __getstate__(self):   # Tune pickles the run config (tuner.pkl); events do not pickle
        return {"left": None if self.deadline is None else max(1.0, self.deadline - time.time())}

    def __setstate__(self, state):
        left = state.get("left")
        deadline = None if left is None else time.time() + left
        first = SweepStopper.resumed
        if first is None:
            self.__init__(deadline)
            return
        # Tune's controller restores its own copy, from its latest snapshot (the time left as it
        # stood then, where tuner.pkl's is from the sweep's start): one state for both, so that
        # Ctrl-C, the hold-back and the keeper reach the stopper Tune asks
        first.deadline = first._published = deadline
        if first.keeper is not None:
            first.keeper.set.remote(deadline)
        self.__dict__ = first.__dict__

    def install(self) -> None:
        """Ctrl-C and SIGTERM both stop the sweep cleanly; a second of either aborts."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def uninstall(self) -> None:
        if self._previous is not None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = None

    def _handle(self, signum, frame):
        if self.event.is_set():
            raise_outside_locks(signum, frame, KeyboardInterrupt())
            return
        self.event.set()
        self._interrupt_tune()
        what = "terminated" if signum == signal.SIGTERM else "interrupt"
        print(f"\n{what}: stopping all trials and keeping the results written so far "
              "(Ctrl-C again to abort at once)", flush=True)

    def fit(self, tuner):
        """``tuner.fit()``, during which Ctrl-C and SIGTERM end Tune's loop by its own interrupt."""
        self._live, self._told, self._fitting = None, False, True
        try:
            return tuner.fit()
        except Exception:
            if self.failure is None:
                raise
            # the storage failed: Tune's result grid, read back from it after its loop (a trial's
            # error file written empty: EOFError), is lost; its loop ended, its state saved
            return None
        finally:
            self._live, self._fitting = None, False

    def _interrupt_tune(self) -> None:
        """Tune's own interrupt, where its loop runs: the loop ends with the experiment's state
        saved as it stands, the running trials unfinished and the search not finished, so that
        `tunesmith resume` continues both, as after a killed driver. stop_all would end them
        for good (TERMINATED, the searcher set_finished): a resumed sweep went straight to its
        confirmation. Tune keeps its handler on SIGUSR1 whatever TUNE_DISABLE_SIGINT_HANDLER
        says; it is the live run's only once that loop has asked stop_all (an earlier run's
        would also put back that run's SIGINT handler)."""
        if callable(self._live):
            self._live(signal.SIGUSR1, None)
            self._told = True

    def fail(self, reason: str) -> None:
        """Stop every trial, as the first Ctrl-C does, because the sweep cannot go on (its results
        could not be written): by Tune's own interrupt too, so that once the storage is back
        (a disk freed) `tunesmith resume` continues the trials and the search."""
        self.failure = reason
        self.event.set()
        if threading.current_thread() is threading.main_thread():   # Tune's handler sets signals
            self._interrupt_tune()

    def release_hold(self, hold_back=None) -> bool:
        """What was held back is the next phase's now (a confirmation after its search):
        ``hold_back`` is what stays held for after it (smith's stage 3). Whether time is left."""
        self.hold_back = hold_back
        end = None if self.deadline is None else self.deadline - (hold_back() if hold_back else 0.0)
        if end is not None and time.time() >= end:
            return False
        self.timed_out.clear()
        if self.keeper is not None and end is not None:
            self.keeper.set.remote(end)
            self._published = end
        return True

    def __call__(self, trial_id, result):
        return False

    @property
    def trials_deadline(self) -> Optional[float]:
        """Where trials must end: the deadline, less what is held back once published."""
        return self._published

    def out_of_time(self) -> bool:
        """The budget is over: here (possibly held back), at the deadline, or at the held-back
        deadline published to the trials (a trial that reads it stops itself, before this
        stopper's next check)."""
        now = time.time()
        return self.timed_out.is_set() or (self.deadline is not None and now >= self.deadline) or \
            (self.keeper is not None and self._published is not None and now >= self._published)

    def stop_all(self):
        end = self.deadline
        if end is not None and self.hold_back:
            end -= self.hold_back()
            if self.keeper is not None and abs(end - self._published) > PUBLISH_STEP_S:
                self.keeper.set.remote(end)
                self._published = end
        if end is not None and time.time() >= end:
            self.timed_out.set()
        if self._fitting and hasattr(signal, "SIGUSR1"):   # asked from inside Tune's loop
            self._live = signal.getsignal(signal.SIGUSR1)
        # interrupted: Tune's own loop ends where it was told (_interrupt_tune)
        return (self.event.is_set() and not self._told) or self.timed_out.is_set()


PUBLISH_STEP_S = 0.5   # the held-back deadline is sent to the trials when it moves by more


class DeadlineKeeper:
    """Where the sweep's trials must end (time.time()), as a Ray actor the driver updates: the
    budget held back for smith's stage 3 grows with stage 2's measured pace, after the trials
    started. Trials read it at each epoch's start."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def set(self, deadline: float) -> None:
        self.deadline = deadline

    def get(self) -> float:
        return self.deadline
