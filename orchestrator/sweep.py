"""Assembling and running a sweep: spec -> Tuner -> results. The three roles stay apart:
cluster/ says where trials run, this module decides (search algorithm, scheduler, limits),
trainables/ trains and knows Ray only through its report call."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import yaml

from tunesmith.cluster.connect import ClusterInfo
from tunesmith.orchestrator import manifest as manifest_mod
from tunesmith.orchestrator.confirm import budget_hold, least_needed, rounds_of, unaffordable
from tunesmith.orchestrator.spec import SweepSpec, plan_text, trial_count
from tunesmith.orchestrator.tune_parts import (before_fit, concurrency_for, ddp_options, trial_dirname,
                                               trial_resources)
from tunesmith.cluster.storage import Storage
from tunesmith.trainables.config import ConfigError


@dataclass
class SweepOutcome:
    spec: SweepSpec
    storage: Storage
    ledger: object            # ledger.Ledger: the sweep's trials as they ended
    wall_seconds: float
    interrupted: bool
    timed_out: bool = False   # the time budget ran out (before the last trial ended)
    budget_left_s: Optional[float] = None   # what was left of it when the sweep began
    failure: Optional[str] = None           # why it stopped early: its results could not be written
    confirmed: Optional[object] = None      # confirm.Verdict: the finalists over new seeds, and the test figure
    unconfirmed: str = ""                   # why no confirmation ran, where one was asked for

    @property
    def path(self) -> str:
        return self.storage.uri(self.spec.name)


def check_fresh(storage: Storage, name: str, claim: bool = False) -> None:
    """Never overwrite a sweep: what is already written is not lost; the location takes writes
    (Storage.probe); and with ``claim``, the folder is this command's from now on (two commands
    started with one name at once cannot both write it). All before Ray starts."""
    from tunesmith.cluster.storage import CLAIM
    storage.probe()
    held = storage.listdir(name) if storage.exists(name) else []
    if [e for e in held if e != CLAIM]:
        raise ConfigError("name", name, f"{storage.uri(name)} already holds a sweep; pick another "
                          "--name or move the old one away")
    if claim:
        storage.claim(name)
    elif CLAIM in held and not storage.is_ours(name):
        raise ConfigError("name", name, f"{storage.uri(name)} is being written by another tunesmith command; "
                          "pick another --name")


def resolve_largest_batch(spec: SweepSpec) -> SweepSpec:
    """The largest_batch preset: find the batch as a Ray task holding one trial's resources, so
    the probe runs on the kind of device the trials get, not on the driver's."""
    if "largest_batch" not in spec.plan.presets:
        return spec
    import ray
    from tunesmith.trainables.batch_finder import find_for
    task = ray.remote(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)(find_for)
    found = ray.get(task.remote(spec.train.to_dict()))
    print(f"largest_batch: per_gpu_batch_size {found['per_gpu_batch_size']} (largest that ran: "
          f"{found['largest_fit']}, limited by {found['limit']})", flush=True)
    trainer = spec.trainer.model_copy(update={"per_gpu_batch_size": found["per_gpu_batch_size"]})
    return spec.model_copy(update={"trainer": trainer})   # the search does not move: no need to resolve it again


def build_search(spec: SweepSpec, concurrency: int, held: Optional[Callable[[], int]] = None):
    """``held``: concurrency slots held outside Tune (smith's pilot), for the quasi-random search."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    points = [dict(p) for p in spec.plan.points_to_evaluate]
    if spec.plan.algorithm == "tpe":
        from tunesmith.search_spaces.tpe import TPESearch
        tpe = TPESearch(points_to_evaluate=points or None,
                             n_initial_points=spec.plan.n_initial_points, random_state_seed=spec.seed)
        # TPE learns from finished trials: too many at once and it is random search.
        return ConcurrencyLimiter(tpe, max_concurrent=concurrency)
    if spec.plan.algorithm == "quasi" and any(d.kind != "grid" for d in spec.plan.space):
        from tunesmith.search_spaces.quasi import QuasiRandomSearch
        quasi = QuasiRandomSearch(spec.plan.space, seed=spec.seed, points_to_evaluate=points or None,
                                  couple=spec.plan.coupling)
        quasi.held = held
        return quasi
    # Tune caps a Searcher at max_concurrent_trials, but ignores the cap for a generator passed
    # in (a warning): the generator takes it itself.
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=spec.seed,
                                 max_concurrent=concurrency)


def build_scheduler(spec: SweepSpec):
    from tunesmith.orchestrator.asha import LiveQueue, RecordingASHA
    if not spec.asha.enabled:
        return LiveQueue()
    return RecordingASHA(time_attr="training_iteration",
                         max_t=spec.max_t, grace_period=spec.asha.grace_period,
                         reduction_factor=spec.asha.reduction_factor, rungs=spec.milestones[:-1] or None,
                         floor=spec.asha.floor)


def build_tuner(spec: SweepSpec, storage: Storage, cluster: ClusterInfo, trainable: Optional[Callable] = None,
                stopper=None, progress: bool = False, write_results: bool = True, data_streams: bool = False,
                manifest: Optional[dict] = None, pilot=None):
    """``stopper``: a stopper.SweepStopper; when not given, one for the spec's
    ``time_budget_s`` from now. ``pilot``: smith's orchestrator.pilot.Pilot, a trial of this
    sweep already training in the driver."""
    from ray import tune
    from tunesmith.orchestrator.callback import LedgerCallback
    from tunesmith.orchestrator.stopper import SweepStopper
    from tunesmith.trainables.tune_trainable import train_cnn

    if stopper is None:
        stopper = SweepStopper(time.time() + spec.time_budget_s if spec.time_budget_s else None)

    concurrency = concurrency_for(spec, cluster)
    scheduler = build_scheduler(spec)
    hp_keys = [d.key for d in spec.plan.space]
    domains = {d.key: list(d.values) if d.kind in ("choice", "grid") else [] for d in spec.plan.space}
    extra_sinks = []
    if spec.mlflow.uri:
        from tunesmith.orchestrator.sinks.mlflow import MLflowSink
        extra_sinks.append(MLflowSink(spec.mlflow.uri, spec.mlflow.experiment, spec.name, spec.to_dict(),
                                      manifest or {}))
    callback = LedgerCallback(storage, spec.name, hp_keys, domains, epochs=spec.max_t,
                              metric=spec.metric, mode=spec.mode,
                              pruned=getattr(scheduler, "pruned", None),
                              write=write_results, stopper=stopper,
                              keep_checkpoints=spec.checkpoints.keep, scheduler=scheduler, sinks=extra_sinks,
                              seed=spec.seed)
    from tunesmith.orchestrator.display import NoTrialLines
    callbacks = [callback, NoTrialLines()]
    if progress:
        from tunesmith.orchestrator.display import make
        callbacks.append(make(callback.ledger, trial_count(spec), None if stopper.deadline is None
                              else stopper.deadline - time.time()))
    if pilot is not None:   # first: its reports reach the others as a Tune trial's would
        import ray
        from tunesmith.orchestrator.pilot_relay import PilotRelay
        pilot.relay = PilotRelay(pilot, list(callbacks), callback, stopper, ray.util.get_node_ip_address())
        callbacks.insert(0, pilot.relay)
    if trainable is None:
        from tunesmith.orchestrator.data_share import share
        trainable = tune.with_parameters(train_cnn, base=spec.trial_config(),
                                         shared=share(spec.train.dataset, data_streams),
                                         checkpoint_every=spec.checkpoints.every, ddp=ddp_options(spec, storage),
                                         deadline=stopper.deadline, keeper=stopper.keeper)
    resources = trial_resources(spec)
    before_fit()
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={d.key: d.to_tune() for d in spec.plan.space},
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode,
            search_alg=build_search(spec, concurrency, None if pilot is None else pilot.holding),
            scheduler=scheduler, num_samples=spec.plan.num_samples,
            max_concurrent_trials=concurrency, reuse_actors=True,   # actor start-up is most of Tune's per-trial cost
            trial_dirname_creator=trial_dirname),   # no time_budget_s: the stopper keeps the deadline
        run_config=tune.RunConfig(
            # Ray gets our filesystem object, so a URI's endpoint and credentials carry over
            name="_tune", storage_path=storage.path(spec.name),
            storage_filesystem=None if storage.is_local else storage.fs, verbose=0,
            callbacks=callbacks, stop=stopper,
            # a trial whose worker or node dies restarts from its last checkpoint, on any node
            failure_config=tune.FailureConfig(max_failures=spec.checkpoints.max_failures),
            # num_to_keep=None: a count limit makes Tune snapshot the experiment at every
            # checkpoint (20x slower sweeps here); retention.py removes ended trials' checkpoints
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    )
    return tuner, callback, concurrency


def run_sweep(spec: SweepSpec, cluster: ClusterInfo, *, trainable: Optional[Callable] = None,
              progress: bool = True, command: str = "run", fresh: bool = True,
              started: Optional[float] = None, deadline: Optional[float] = None,
              hold_back: Optional[Callable] = None, pilot=None) -> SweepOutcome:
    """``started``: when the command started (time.time()); ``time_budget_s`` then counts from
    it, Ray's start-up included, instead of from the sweep's first trial. ``deadline``: when the
    trials stop, instead (smith's stages share one budget). ``hold_back(ledger)``: seconds to
    keep from the end of the budget for what follows the sweep, read as its trials report.
    ``pilot``: a trial of this sweep training in the driver (orchestrator/pilot.py)."""
    from tunesmith.orchestrator.stopper import SweepStopper

    storage = Storage(spec.results_dir)
    if fresh:   # `smith` checks before its first stage writes lr_find/ into the folder
        check_fresh(storage, spec.name)
    spec = resolve_largest_batch(spec)
    from tunesmith.orchestrator.data_share import plan
    # how the data is read, decided (and a folder that cannot fit refused) before anything is written
    in_memory, data_line = plan(spec.train.dataset, local=cluster.started_here) if trainable is None else (True, "")
    storage.makedirs(spec.name)
    storage.write_bytes(f"{spec.name}/spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    info = {"address": cluster.address, "cpus": cluster.cpus, "gpus": cluster.gpus, "nodes": cluster.nodes}
    man = manifest_mod.build(spec.to_dict(), command, info)
    manifest_mod.save(storage, spec.name, man)
    with manifest_mod.interrupted_if_stopped(storage, spec.name, man):   # until the try below closes it
        began = time.time()
        if deadline is None and spec.time_budget_s:
            deadline = (began if started is None else started) + spec.time_budget_s
        stopper = SweepStopper(deadline)
        confirming = trainable is None and spec.confirm.top > 0   # a test's own trainable reads no test split
        if (hold_back is not None or confirming) and deadline is not None:
            stopper.keep_for_trials()
        tuner, callback, concurrency = build_tuner(spec, storage, cluster, trainable, stopper, progress,
                                                 data_streams=not in_memory, manifest=man, pilot=pilot)
        after = (lambda: hold_back(callback.ledger)) if hold_back is not None else None
        rounds = rounds_of(spec, concurrency)
        if confirming and deadline is not None:   # the search stops in time for its confirmation
            stopper.hold_back = lambda: (after() if after else 0.0) + budget_hold(callback.ledger, spec, rounds,
                                                                                  deadline - began)
        else:
            stopper.hold_back = after
        callback.hold_open = confirming
        verdict, unconfirmed, tested = None, "", None
        if progress:
            print(f"sweep {spec.name}: {plan_text(spec, deadline is not None)}; {min(concurrency, trial_count(spec))} at a time"
                  f"{', ASHA' if spec.asha.enabled else ''}; "
                  f"{cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs on {cluster.nodes} node(s)", flush=True)
            if data_line:
                print(f"data: {data_line}", flush=True)
            if trainable is None:
                from tunesmith.orchestrator.catalogue import model_line
                line = model_line(spec.train)
                if line:
                    print(f"model: {line}", flush=True)
        start = time.monotonic()
        stopper.install()
    status = "failed"
    try:
        stopper.fit(tuner)
        status = "interrupted" if stopper.event.is_set() else "finished"
        if callback.failure:
            status = f"failed: {callback.failure}"
        if confirming:
            unconfirmed = (stopped_why(status) if status != "finished" else
                           why_unconfirmed(spec, callback.ledger, stopper, deadline, deadline and deadline - began,
                                           after, rounds))
        if confirming and unconfirmed and status == "finished":   # the kept model's test figure, at least
            from tunesmith.orchestrator.kept_test import kept_on_test
            tested = kept_on_test(spec, callback, here=cluster.started_here and in_memory)
        if confirming and not unconfirmed:
            from tunesmith.orchestrator.confirm import run_phase
            verdict = run_phase(spec, storage, cluster, callback, stopper, not in_memory, progress)
            status = "interrupted" if stopper.event.is_set() else status
            if callback.failure:
                status = f"failed: {callback.failure}"
            unconfirmed = "" if verdict is not None else "the search left no finalist"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        from tunesmith.orchestrator.display import stop_all
        stop_all()
        if pilot is not None:   # its last reports, before the writer closes
            pilot.relay.finish(stop=status != "finished")
        stopper.uninstall()
        stopper.release()
        callback.close("sweep interrupted" if status == "interrupted" else "sweep ended")
        man.update(ended_at=manifest_mod.now_iso(), status=status,
                   wall_seconds=round(time.monotonic() - start, 3),
                   trials=callback.ledger.status_counts())
        _say_skipped(spec, man, trainable is None and in_memory, callback.unreadable)
        if verdict is not None:
            man["confirm"] = verdict.to_dict()
        elif tested is not None:   # read where a confirmation's would be: the kept model's alone
            man["kept_test"] = {"trial": tested, **callback.ledger.trials[tested].test}
        manifest_mod.save_or_say(storage, spec.name, man, callback.failure)
    return SweepOutcome(spec, storage, callback.ledger, time.monotonic() - start, status == "interrupted",
                        stopper.timed_out.is_set(), None if deadline is None else deadline - began,
                        failure=callback.failure, confirmed=verdict, unconfirmed=unconfirmed)


def stopped_why(status: str) -> str:
    """Why a search that did not finish has no confirmation."""
    return "the sweep stopped: its results could not be written" if status.startswith("failed") else \
        "the search was interrupted"


def why_unconfirmed(spec: SweepSpec, ledger, stopper, deadline: Optional[float], budget: Optional[float], after,
                    rounds: int) -> str:
    """Why a finished search's confirmation does not start, or '': the hold the stopper dropped
    as unaffordable (``budget``: the seconds the search began with), where that left it short
    (not what the search then left: "1s were left"), else the time left against its least
    need. The held-back deadline is released here."""
    short = (too_short_to_confirm(spec, ledger, deadline, after, rounds) if stopper.release_hold(after)
             else "the time budget ran out in the search")
    return short and (unaffordable(ledger, spec, rounds, budget) or short)


def too_short_to_confirm(spec: SweepSpec, ledger, deadline: Optional[float], after=None, rounds: int = 1) -> str:
    """Why a confirmation is not started: the budget left cannot fit four fifths of each round's
    runs (they fit their schedules to their round's share of the time left, down to that), at
    the search's pace."""
    if deadline is None:
        return ""
    left = deadline - (after() if after else 0.0) - time.time()
    need = least_needed(ledger, spec, rounds)
    if left >= need:
        return ""
    each = "one round of its runs" if rounds == 1 else f"each of its {rounds} rounds of runs"
    places = 0 if round(max(left, 0)) != round(need) else 1   # not "7s were left, short of ... (7s)"
    return (f"{max(left, 0):.{places}f}s of the time budget were left, short of four fifths of {each} "
            f"({need:.{places}f}s at the search's pace)")


def _say_skipped(spec: SweepSpec, man: dict, shared: bool, streamed: Dict[str, str]) -> None:
    """The unreadable images left out, named on this terminal and in the manifest: by the shared
    load (a Ray task), or as the trials' decoders met them in a streaming sweep (their reports).
    Neither's own output reaches the user."""
    if spec.train.dataset.name != "imagefolder":
        return
    from tunesmith.orchestrator.data_share import skipped
    from tunesmith.trainables.folder import say_skipped
    files = skipped(spec.train.dataset, timeout=10) if shared else sorted(streamed.items())
    if files:
        say_skipped(spec.train.dataset.data_dir, files)
        man["data"] = {**man.get("data", {}), "skipped": [{"file": f, "why": why} for f, why in files]}


def budget_problem(outcome: SweepOutcome, budget: Optional[float] = None) -> Optional[str]:
    """Why a sweep with a time budget has no result: the budget ran out before any trial
    finished an epoch. ``budget``: the command's whole budget, where the sweep had the rest."""
    if outcome.ledger.top(1) or not outcome.timed_out:
        return None
    budget = budget or outcome.spec.time_budget_s
    left = outcome.budget_left_s
    spent = f" ({budget - left:.1f}s of it went before the sweep began, Ray's start-up included)" \
        if left is not None else ""
    return f"time_budget_s = {budget:g}: it ran out before any trial finished an epoch{spent}; give it a larger budget"


def best_table(outcome: SweepOutcome, top: int = 5) -> str:
    w = outcome.ledger
    rows = w.top(top)
    hp_keys = list(w.hp_keys)
    head = ["rank", "trial", "status", f"best {w.metric}", "epochs", *hp_keys]
    body = []
    for i, r in enumerate(rows, 1):
        hp = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.hparams.get(k) for k in hp_keys)]
        body.append([str(i), r.trial_id, r.status, f"{r.best[w.metric]:.4f}", str(r.epochs), *hp])
    from tunesmith.orchestrator.tables import plain
    return plain(head, body)
