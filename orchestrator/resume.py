"""`tunesmith resume RESULTS/SWEEP`: continue a sweep whose driver died.

Tune's own restore does the work: completed trials stay completed, unfinished and errored ones
continue from their last checkpoints, the searcher continues where it was, and failure counts
carry over. What it does not do is handled here and in the writer:
- the results writer comes back as the copy pickled in tuner.pkl; it rebuilds its records from
  trials.parquet and epochs/ (the truth on disk), so no row is lost or written twice;
- ASHA's rungs come back empty (ray#30838); they are refilled from the same files;
- a restore that fails can start a fresh experiment in the same folder; the trial count is
  checked afterwards.
Tune's state is a pickle, so it is read only from a folder tunesmith wrote: its manifest must
be there. A results folder is trusted like code.
"""
from __future__ import annotations

import glob
import io
import json
import os
import pickletools
import posixpath
import re
import stat
import tempfile
import time
from typing import Dict, List, Optional

from tunesmith.orchestrator import manifest as manifest_mod
from tunesmith.orchestrator.spec import SweepSpec
from tunesmith.cluster.storage import Storage
from tunesmith.trainables.config import ConfigError
from tunesmith.orchestrator.callback import RestoreFailed


def check_owner(parent: Storage, name: str) -> None:
    """As ssh does with keys: Tune's pickled state is code to this process, so on a local disk it
    must belong to this user and be writable by nobody else (the folder holding it too)."""
    if not parent.is_local:
        return   # an object store's access is its own policy
    for rel in ("_tune", "_tune/tuner.pkl"):
        path = parent.path(name, rel)
        st = os.stat(path)
        if st.st_uid != os.getuid():
            raise ConfigError("resume", path, f"belongs to another user (uid {st.st_uid}): resume unpickles it, "
                              "which runs code; pass --trust if you trust whoever wrote it")
        if st.st_mode & 0o022:
            raise ConfigError("resume", path, f"is writable by others (mode {stat.filemode(st.st_mode)}): resume "
                              "unpickles it, which runs code; chmod go-w it, or pass --trust")


def load(target: str, trust: bool = False):
    """(storage of the results root, sweep name, spec, manifest) of a sweep tunesmith wrote."""
    where = target.rstrip("/")
    parent = Storage(where).parent()
    name = posixpath.basename(Storage(where).root)
    if not parent.exists(name, "manifest.json"):
        raise ConfigError("resume", target, "no manifest.json: not a sweep folder tunesmith wrote "
                          "(resume reads Tune's pickled state only from those)")
    if not parent.exists(name, "_tune", "tuner.pkl"):
        raise ConfigError("resume", target, "holds no Tune state (_tune/tuner.pkl): nothing to resume")
    if not trust:
        check_owner(parent, name)
    man, spec = manifest_mod.read_sweep(parent, name, "resume", target)
    if spec.name != name:   # every row and path names the sweep: a renamed folder cannot carry on as it was
        raise ConfigError("resume", target, f"holds sweep {spec.name!r}, written under that name; move the folder "
                          f"back to {posixpath.join(posixpath.dirname(where), spec.name)} (another parent is fine)")
    if man.get("status") == "finished" and man.get("trials", {}).get("running", 0) == 0:
        raise ConfigError("resume", target, "finished; nothing to resume (its trials all ended)")
    from tunesmith.orchestrator.confirm_again import latest_confirmation
    mend_tune_state(parent, name, latest_confirmation(parent, name) or "_tune", target)
    return parent, name, spec, man


STATE_FILE = re.compile(r"^(?P<kind>[a-z_-]+)-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.(json|pkl)$")


def whole(data: bytes) -> bool:
    """Whether one of Tune's state files was written to its end: a pickle whose opcodes reach
    STOP (walked, not run), or else JSON that parses (a searcher's "-state-*.json" is a pickle)."""
    try:
        if data[:1] == b"\x80":   # a pickle's PROTO
            for _ in pickletools.genops(io.BytesIO(data)):
                pass
        else:
            json.loads(data)
        return bool(data)
    except Exception:   # noqa: BLE001 - any decoding error is a file cut short
        return False


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def staged_folder(experiment: str, state_file: str, ids: set) -> Optional[str]:
    """This machine's copy of a Tune experiment's state: its driver writes each file into Ray's
    session folder, then copies it to the results folder. The newest folder whose copy of
    ``state_file`` (experiment_state-*.json, named by its second) is whole and names one of the
    sweep's recorded trials ``ids`` (another sweep may have started in the same second); with no
    trial recorded, only a folder that no other could be."""
    roots = {os.path.join(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "ray")}
    try:
        from ray._common.utils import get_default_ray_temp_dir   # RAY_TMPDIR's rule, as Ray reads it
        roots.add(get_default_ray_temp_dir())
    except Exception:   # noqa: BLE001 - another Ray's layout: the default above
        pass
    found = sorted(os.path.dirname(p) for root in roots for p in glob.glob(
        os.path.join(root, "session_*", "artifacts", "*", experiment, "driver_artifacts", state_file)))
    mine = [f for f in found if whole(data := _read(os.path.join(f, state_file)))
            and (any(tid.encode() in data for tid in ids) if ids else len(found) == 1)]
    return mine[-1] if mine else None


def mend_tune_state(parent: Storage, name: str, experiment: str, target: str) -> List[str]:
    """Tune restores from the newest of each of its state files (the experiment's, the search's,
    the callbacks'). One cut short as it was written (the disk filled) makes Tune's restore fail
    and start the experiment afresh, over the sweep's recorded trials. Each such file is put back
    from this machine's whole copy in Ray's session folder; where there is none, the resume is
    refused before anything runs. Returns what was put back."""
    newest: Dict[str, str] = {}
    for filename in parent.listdir(name, experiment):
        m = STATE_FILE.match(filename)
        if m and filename > newest.get(m["kind"], ""):
            newest[m["kind"]] = filename
    cut = [f for f in sorted(newest.values()) if not whole(parent.read_bytes(posixpath.join(name, experiment, f)))]
    if not cut:
        return []
    folder = staged_folder(experiment, newest.get("experiment_state", ""), trial_ids(parent, name, experiment))
    for filename in cut:
        copy = folder and os.path.join(folder, filename)
        data = _read(copy) if copy and os.path.exists(copy) else b""
        if not whole(data):
            raise ConfigError("resume", target, f"Tune's state {experiment}/{filename} was cut short as it was written "
                              "(a full disk?) and this machine holds no whole copy: Tune cannot restore the sweep; "
                              "trials.parquet and epochs/ read whole")
        parent.write_bytes(posixpath.join(name, experiment, filename), data)
        print(f"tunesmith: {experiment}/{filename} had been cut short as it was written; put back from this "
              f"machine's copy ({copy})", flush=True)
    return cut


def trial_ids(storage: Storage, name: str, experiment: str = "_tune") -> set:
    """The trials trials.parquet records of one of the sweep's Tune experiments: the search's
    (``_tune``), or a confirmation's, whose trials have their folders in it."""
    if not storage.exists(name, "trials.parquet"):
        return set()
    t = storage.read_table(f"{name}/trials.parquet").to_pydict()
    phases = t.get("phase") or ["search"] * len(t["trial_id"])
    if experiment == "_tune":
        return {tid for tid, ph in zip(t["trial_id"], phases) if ph != "confirm"}
    return {tid for tid, ph in zip(t["trial_id"], phases) if ph == "confirm" and storage.exists(name, experiment, tid)}


def run(target: str, cluster, spec: SweepSpec, storage: Storage, name: str, man: dict) -> dict:
    import ray
    from ray import tune
    from tunesmith.orchestrator.data_share import plan, share
    from tunesmith.trainables.tune_trainable import train_cnn

    from tunesmith.orchestrator.confirm_again import latest_confirmation
    confirming = latest_confirmation(storage, name)   # the search ended: its confirmation is what resumes
    experiment = confirming or "_tune"
    before = trial_ids(storage, name, experiment)
    from tunesmith.orchestrator.stopper import DeadlineKeeper, SweepStopper
    from tunesmith.orchestrator.tune_parts import ddp_options
    in_memory, _ = plan(spec.train.dataset, local=cluster.started_here)
    # as `run` builds it: data-parallel ranks, and a deadline keeper that the restored stopper
    # adopts (the trainable is needed before Tune's restore hands the stopper back)
    keeper = ray.remote(num_cpus=0)(DeadlineKeeper).remote(None)
    trainable = tune.with_resources(
        tune.with_parameters(train_cnn, base=spec.trial_config(), shared=share(spec.train.dataset, not in_memory),
                             checkpoint_every=spec.checkpoints.every, ddp=ddp_options(spec, storage), keeper=keeper),
        {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
    tune_dir = storage.path(name, experiment)
    fs = None if storage.is_local else storage.fs
    began, was = time.monotonic(), json.loads(manifest_mod.dumps(man))   # as it was, for a failed restore
    states_before = set(storage.listdir(name, experiment))
    man.setdefault("resumed_at", []).append(manifest_mod.now_iso())
    man["status"] = "running"
    manifest_mod.save(storage, name, man)
    from tunesmith.orchestrator.tune_parts import before_fit
    before_fit()   # before the restore: our stopper, not Tune's handler, takes Ctrl-C and SIGTERM
    with manifest_mod.interrupted_if_stopped(storage, name, man):   # Tune's restore, until the try below
        tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
        stopper, callback = _restored_stopper(tuner, storage)
        if callback is not None:   # Tune's restore calls its set_state; a failed one starts afresh
            callback.awaiting_restore = True
        if stopper is not None:
            stopper.adopt(keeper)
        else:
            ray.kill(keeper)
    from tunesmith.orchestrator.confirm import rounds_of
    from tunesmith.orchestrator.tune_parts import concurrency_for
    rounds, opened = rounds_of(spec, concurrency_for(spec, cluster)), time.time()
    budget = lambda: None if stopper is None or stopper.deadline is None else stopper.deadline - opened  # noqa: E731
    if stopper is not None and callback is not None and not confirming and spec.confirm.top > 0:
        from tunesmith.orchestrator.confirm import budget_hold   # as `run` holds it (not pickled)
        stopper.hold_back = lambda: budget_hold(callback.ledger, spec, rounds, budget())   # asked only with a deadline
    status, undone = "failed", False
    try:
        if stopper is not None:
            stopper.install()
            SweepStopper.resumed = stopper   # the stopper Tune's controller restores shares its state
        grid = tuner.fit() if stopper is None else stopper.fit(tuner)
        status = "interrupted" if stopper is not None and stopper.event.is_set() else "finished"
        if callback is not None and callback.failure:
            status = f"failed: {callback.failure}"
        if status == "finished" and callback is not None:
            from tunesmith.orchestrator.confirm_again import after_resume
            man.update(after_resume(spec, storage, cluster, callback, stopper, bool(confirming), not in_memory,
                                    budget(), rounds))
            status = "interrupted" if stopper is not None and stopper.event.is_set() else status
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except RestoreFailed as exc:   # nothing ran: the sweep stays as it was, Tune's fresh start unsaved
        undone = True
        man.clear()
        man.update(was)
        for f in set(storage.listdir(name, experiment)) - states_before:
            if STATE_FILE.match(f):
                storage.fs.delete_file(storage.path(name, experiment, f))
        raise ConfigError("resume", target, str(exc)) from None
    finally:
        SweepStopper.resumed = None
        if stopper is not None:
            stopper.uninstall()
            stopper.release()
        after = storage.read_table(f"{name}/trials.parquet").to_pandas() if storage.exists(name, "trials.parquet") \
            else None
        counts = after.status.value_counts().to_dict() if after is not None else {}
        if not undone:
            man.update(ended_at=manifest_mod.now_iso(), status=status,
                       trials={str(k): int(v) for k, v in counts.items()})
            man["wall_seconds"] = round(man.get("wall_seconds") or 0, 3) + round(time.monotonic() - began, 3)
        manifest_mod.save_or_say(storage, name, man, callback is not None and callback.failure)
    if grid is not None and len(grid) < len(before):
        raise RuntimeError(f"Tune restored {len(grid)} trials where {len(before)} were recorded: the restore "
                           "failed and Tune started afresh; the Parquet files keep what was written")
    return {"trials": counts, "restored": len(before), "total": len(before if grid is None else grid),
            "path": storage.uri(name),
            "interrupted": status == "interrupted", "failure": callback is not None and callback.failure}


def _restored_stopper(tuner, storage: Storage):
    """(The sweep's stopper as Tune restored it from tuner.pkl (RunConfig.stop; the time left of
    its budget), the restored ledger callback). The stopper is handed to the callback too, so
    that Ctrl-C and SIGTERM stop a resumed sweep as they stop `run`: trials marked, the manifest
    interrupted. The ledger's callback is pointed at ``storage``, the results root as given now. Tune's restore keeps the
    run config, which tunesmith cannot pass again (ENGINEERING.md)."""
    from tunesmith.orchestrator.callback import LedgerCallback
    from tunesmith.orchestrator.stopper import SweepStopper
    config = tuner._local_tuner.get_run_config()   # noqa: SLF001 - the restored RunConfig has no public getter
    stopper = config.stop if isinstance(config.stop, SweepStopper) else None
    ledger_cb = None
    for cb in config.callbacks or []:
        if isinstance(cb, LedgerCallback):
            cb.relocate(storage)   # the folder given, wherever it was when Tune pickled the callback
            ledger_cb = cb
            if stopper is not None:
                cb.stopper = stopper
    return stopper, ledger_cb
