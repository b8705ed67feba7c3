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

    def __init__(self, deadline: Optional[float] = None):
        self.event = threading.Event()       # Ctrl-C
        self.timed_out = threading.Event()   # the deadline passed
        self.deadline = deadline
        self.hold_back = None   # () -> seconds kept from the end of the budget (smith's stage 3)
        self.keeper = None      # DeadlineKeeper: tells the trials where the held-back budget ends
        self._published = deadline
        self._previous = None
        self.failure: Optional[str] = None   # why the sweep had to stop (its results could not be written)

    def keep_for_trials(self) -> None:
        """With a hold-back, the trials' deadline moves earlier as stage 2's pace is measured:
        a small actor holds it, so trials on any node fit their schedules to it."""
        self.keeper = ray.remote(num_cpus=0)(DeadlineKeeper).remote(self.deadline)

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
        self.__init__(None if left is None else time.time() + left)

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
        what = "terminated" if signum == signal.SIGTERM else "interrupt"
        print(f"\n{what}: stopping all trials and keeping the results written so far "
              "(Ctrl-C again to abort at once)", flush=True)

    def fail(self, reason: str) -> None:
        """Stop every trial, as the first Ctrl-C does, because the sweep cannot go on."""
        self.failure = reason
        self.event.set()

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
        return self.event.is_set() or self.timed_out.is_set()


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
