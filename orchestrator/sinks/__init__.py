"""Where the ledger's records go: Parquet, TensorBoard, MLflow. Each is a ``Sink``; the Tune
adapter (callback.py) calls every sink's hooks in order after the ledger has taken the change,
so a sink reads the trial's status and values from the record it is handed."""
from __future__ import annotations

from typing import Any, Dict, List


class Sink:
    """The hooks a sink may implement; each default does nothing. ``TRANSIENT`` names the
    attributes that do not survive Tune's pickling of the run config (open files, clients):
    each comes back as the value its factory makes, and ``reopen`` (called on resume) renews
    what a pickled copy lost."""
    TRANSIENT: Dict[str, Any] = {}

    def trial_started(self, rec, fresh: bool) -> None:
        """``fresh``: the trial's session starts (a new trial, or one whose config arrived late)."""

    def epoch(self, rec, row: Dict[str, Any], extra: Dict[str, float], result: Dict[str, Any]) -> None:
        """One new epoch row (never a replay)."""

    def trial_ended(self, rec) -> None:
        """The record holds the trial's final status and stop reason."""

    def rows_due(self) -> None:
        """Tune is about to name a checkpoint: rows it covers go to disk first."""

    def flush(self, ledger, trials_due: bool) -> None:
        """Write what is pending; ``trials_due``: the trials' summary is due too."""

    def close(self, ledger, stopped: List[Any], interrupted: bool) -> None:
        """The sweep has ended (everything is flushed first); ``stopped``: the records of the
        trials it stopped while they ran."""

    def reopen(self) -> None:
        """A resume: the pickled copy is in use again."""

    def __getstate__(self):
        return transient_state(self, self.TRANSIENT)


def transient_state(obj, names: Dict[str, Any]) -> Dict[str, Any]:
    """``obj``'s attributes for pickling, with each of ``names`` replaced by its factory's value."""
    state = dict(obj.__dict__)
    for name, factory in names.items():
        state[name] = factory()
    return state


__all__: List[str] = ["Sink", "transient_state"]
