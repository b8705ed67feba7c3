"""A confirmation after the fact (#28): `tunesmith analyze RESULTS/SWEEP --confirm K [--seeds S]`
trains an existing sweep's K best configurations again with S seeds it has not used (a sweep run
without a confirmation, or one whose verdict wanted more seeds), written into the sweep's own
folder and files as its confirmation, and gives the verdict over all of its confirmation runs.
And the confirmation phase of a resumed sweep."""
from __future__ import annotations

import posixpath
import time
from typing import Optional

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import manifest as manifest_mod
from tunesmith.orchestrator.spec import ConfirmSpec
from tunesmith.trainables.config import ConfigError


def experiment_name(storage: Storage, name: str) -> str:
    """_confirm, then _confirm-2, -3: each confirmation run is a Tune experiment of its own."""
    n, rel = 1, "_confirm"
    while storage.exists(name, rel):
        n += 1
        rel = f"_confirm-{n}"
    return rel


def latest_confirmation(storage: Storage, name: str) -> Optional[str]:
    """The newest confirmation experiment with Tune's state saved, or None."""
    found = [rel for rel in ("_confirm", *(f"_confirm-{n}" for n in range(2, 100)))
             if storage.exists(name, rel, "tuner.pkl")]
    return found[-1] if found else None


def after_resume(spec, storage: Storage, cluster, callback, stopper, was_confirming: bool, streams: bool,
                 budget: Optional[float] = None, rounds: int = 1) -> dict:
    """What follows a resumed Tune run: a resumed search goes on to its confirmation, as `run`
    would have, where the time left fits it (``budget``: what the resumed search began with;
    ``rounds``: the confirmation's); a resumed confirmation gets its verdict and keeps the
    winner's checkpoint. Returns the manifest's additions."""
    from tunesmith.orchestrator.confirm import confirmed_finalists, run_phase, settle
    from tunesmith.orchestrator.stopper import SweepStopper
    if was_confirming:
        verdict = settle(callback, confirmed_finalists(callback.ledger), spec.confirm.rank_by)
    elif spec.confirm.top > 0 and callback.ledger.ranked():
        from tunesmith.orchestrator.sweep import why_unconfirmed
        stopper = stopper if stopper is not None else SweepStopper(None)
        why = why_unconfirmed(spec, callback.ledger, stopper, stopper.deadline, budget, None, rounds)
        if why:   # as `run` decides: runs cut to nothing would read as a confirmation
            print(f"not confirmed over seeds: {why}", flush=True)
            callback.close()
            return {}
        verdict = run_phase(spec, storage, cluster, callback, stopper, streams)
    else:
        return {}
    callback.close()
    if verdict is None:
        return {}
    from tunesmith.orchestrator.confirm import summary
    from tunesmith.orchestrator.sweep import SweepOutcome
    print(summary(SweepOutcome(spec, storage, callback.ledger, 0.0, False, confirmed=verdict)), flush=True)
    return {"confirm": verdict.to_dict()}


def confirm_sweep(target: str, top: int, seeds="auto", address: Optional[str] = None) -> int:
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator.callback import LedgerCallback
    from tunesmith.orchestrator.confirm import run_phase, summary
    from tunesmith.orchestrator.stopper import SweepStopper
    from tunesmith.orchestrator.sweep import SweepOutcome

    where = target.rstrip("/")
    parent = Storage(where).parent()
    name = posixpath.basename(Storage(where).root)
    for rel in ("trials.parquet", "spec.yaml", "manifest.json"):
        if not parent.exists(name, rel):
            raise ConfigError("--confirm", target, f"not one sweep's folder tunesmith wrote (no {rel})")
    man, spec = manifest_mod.read_sweep(parent, name, "--confirm", target)
    if man.get("status") == "running":
        raise ConfigError("--confirm", target, "the sweep is still running (or its driver died: "
                          "`tunesmith resume` it first)")
    spec = spec.model_copy(update={"confirm": ConfirmSpec(top=top, seeds=seeds, rank_by=spec.confirm.rank_by)})
    hp_keys = [d.key for d in spec.plan.space]
    domains = {d.key: list(d.values) if d.kind in ("choice", "grid") else [] for d in spec.plan.space}
    callback = LedgerCallback(parent, name, hp_keys, domains, epochs=spec.max_t, metric=spec.metric,
                              mode=spec.mode, keep_checkpoints=spec.checkpoints.keep, seed=spec.seed)
    callback.reload(reconcile=False)   # the sweep's records, as its files hold them
    if not callback.ledger.ranked():
        raise ConfigError("--confirm", target, "no search trial of the sweep has a result to confirm")
    cluster = connect(address)
    stopper = SweepStopper(None)
    began = time.monotonic()
    stopper.install()
    try:
        verdict = run_phase(spec, parent, cluster, callback, stopper, experiment=experiment_name(parent, name))
        interrupted = stopper.event.is_set()
    finally:
        stopper.uninstall()
        callback.close("confirmation interrupted" if stopper.event.is_set() else "confirmation ended")
        disconnect(cluster)
    if verdict is not None:
        man["confirm"] = verdict.to_dict()
    man.setdefault("confirmed_at", []).append(manifest_mod.now_iso())
    manifest_mod.save(parent, name, man)
    outcome = SweepOutcome(spec, parent, callback.ledger, time.monotonic() - began, interrupted,
                           confirmed=verdict, unconfirmed="" if verdict else "no finalist")
    print(f"\n{summary(outcome)}")
    print(f"results: {parent.uri(name)}")
    if callback.failure:
        print(f"tunesmith: the confirmation stopped: {callback.failure}", flush=True)
        return 1
    return 130 if interrupted else 0
