"""Checkpoint retention: which of a trial's checkpoints stay on disk once it ends. Ray-free, so
that smith's pilot can use it without importing Ray."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pyarrow.fs as pafs


@dataclass
class KeptCheckpoint:
    """A checkpoint known by its path on the results' filesystem: the kept one read back on
    resume, or a data-parallel trial's (Ray Train's, named in its reports)."""
    path: str
    filesystem: Any


def delete_checkpoints(ckpt, keep_latest: bool = False) -> None:
    """A trial's checkpoints, on whatever filesystem holds them: every ``checkpoint_*`` folder
    beside ``ckpt`` (Tune keeps them all: a count limit forces an experiment snapshot at each
    checkpoint, which made a 16-trial digits sweep 20 times slower), or all but ``ckpt`` itself.
    A failure costs disk only."""
    try:
        fs = getattr(ckpt, "filesystem", None) or pafs.LocalFileSystem()
        parent = posixpath.dirname(ckpt.path.rstrip("/"))
        for info in fs.get_file_info(pafs.FileSelector(parent)):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.Directory or not name.startswith("checkpoint_"):
                continue   # Ray Train keeps checkpoint_manager_snapshot.json beside them
            if not (keep_latest and info.path.rstrip("/") == ckpt.path.rstrip("/")):
                fs.delete_dir(info.path)
    except Exception:   # noqa: BLE001 - housekeeping must never end a sweep
        pass


class Retention:
    """Bounded disk with the winner kept: as each trial ends, its checkpoints go unless it is
    the best trial so far (its final checkpoint is kept, and trials.parquet names it), or the
    spec keeps them all. A checkpoint is deleted only once a snapshot of Tune's experiment
    state, taken after its trial ended, has been saved: a driver killed between a trial's end
    and the next snapshot leaves Tune's state calling the trial unfinished, and resume restores
    it from that checkpoint."""

    def __init__(self, keep: str, filesystem):
        self.keep, self.filesystem = keep, filesystem   # best | all | none | defer
        self.candidates: Dict[str, Any] = {}   # trial_id -> its latest checkpoint, while it may be kept
        self._due: List[Tuple[Any, bool]] = []      # (checkpoint, keep_latest) queued since the last snapshot
        self._due_saved: List[Tuple[Any, bool]] = []   # and before it

    def trial_ended(self, rec, checkpoint, ledger) -> bool:
        """``checkpoint``: Tune's (or, for a data-parallel trial, Ray Train's, named in its
        reports). Whether any record's kept checkpoint changed."""
        if checkpoint is None and rec.train_checkpoint:
            checkpoint = KeptCheckpoint(rec.train_checkpoint, self.filesystem)
        if checkpoint is None or self.keep == "all":
            return False
        self.candidates[rec.trial_id] = checkpoint
        if self.keep == "defer":   # a confirmation's runs: kept until its winner is known (choose)
            return False
        records = ledger.trials
        best = ledger.top(1, among=[records[t] for t in self.candidates if t in records])   # a candidate or two
        keep = best[0].trial_id if best and self.keep == "best" else None
        for tid in list(self.candidates):
            if tid == keep:
                records[tid].checkpoint = self.candidates[tid].path
                self._due.append((self.candidates[tid], True))   # its earlier epochs
                continue
            self._due.append((self.candidates.pop(tid), False))
            if tid in records and records[tid].checkpoint:
                records[tid].checkpoint = None
        return True

    def choose(self, trial_id: Optional[str], ledger) -> None:
        """The deferred choice: ``trial_id``'s latest checkpoint stays (named in trials.parquet),
        every other candidate's go."""
        for tid, ckpt in list(self.candidates.items()):
            delete_checkpoints(ckpt, keep_latest=tid == trial_id)
            if tid == trial_id and tid in ledger.trials:
                ledger.trials[tid].checkpoint = ckpt.path
        self.candidates = {}

    def kept(self, rec) -> None:
        """A resumed record whose checkpoint was kept: it goes when a better trial ends."""
        if rec.checkpoint:
            self.candidates[rec.trial_id] = KeptCheckpoint(rec.checkpoint, self.filesystem)

    def snapshot_saved(self) -> None:
        """Tune saved its experiment state: what was due before it can go now."""
        for ckpt, keep_latest in self._due_saved:
            delete_checkpoints(ckpt, keep_latest)
        self._due_saved, self._due = self._due, []

    def sweep_ended(self) -> None:
        """Tune saves its state at the end: everything due goes."""
        for ckpt, keep_latest in self._due_saved + self._due:
            delete_checkpoints(ckpt, keep_latest)
        self._due_saved = self._due = []
