"""`tunesmith smith`: Leslie Smith's procedure as one command, with its reasoning written down.

1. LR range test -> the LR band [max/10, max]. It runs in the driver while Ray starts (on a
   cluster, as a task where trials run), sized to the data, and checks its own curve: an
   uninformative one gives no band, and stage 2 then searches a wide LR range instead of
   reading a band from noise.
2. An ASHA sweep with 1cycle: the LR log-uniform from half a decade below the band's max to a
   decade and a half above it (the rule is conservative, the test can misread by a decade, and
   short runs favour LRs that are too small), jointly with the cyclical momentum's upper bound
   {0.99, 0.97, 0.95, 0.9} and Smith's weight decays, drawn quasi-randomly (a scrambled Halton
   sequence) so that the few trials a budget allows cover the range evenly. --coupling effective
   couples the two (lr/(1-m) is the effective step, and the range test measured it at
   trainer.momentum, so each trial's LR is the drawn one scaled by (1-m)/(1-trainer.momentum));
   on the quality benchmark that did no better, so the default draws them apart. ASHA's first
   rung comes a third of the way into each schedule.
3. Optionally (--final), the best configuration trained for the spec's full length.

``time_budget_s`` covers all the stages. smith checks its own answer: a best no better than
chance is never reported without a warning; it widens the LR range and spends the rest of the
budget. The report (smith_report.md, smith.json) lists each stage's decision and why.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Dict, List, Optional

from tunesmith.orchestrator import lrfind
from tunesmith.orchestrator.spec import SweepSpec, default_grace, from_dict
from tunesmith.orchestrator.storage import Storage
from tunesmith.trainables.config import ConfigError

MOMENTA = [0.99, 0.97, 0.95, 0.9]
DEEP_MODELS = ("resnet18", "resnet34")


WIDE = (1e-4, 1.0)            # the fallback LR range: where plain random search looks (issue #7)
STAGE3_START_S = 5.0   # Tune's set-up and a trial's worker start before stage 3's first epoch,
                       # until stage 2's own start-up is measured
STAGE3_WIND_DOWN_S = 1.5   # stage 2 stopping its trials and writing its results
STAGE3_MARGIN = 1.2


def stage3_hold_back(epochs: int):
    """With --final and a time budget, stage 2 stops early enough for stage 3: stage 2's own
    start-up (Tune's set-up, the trial's worker, the data: from the sweep's start to its first
    report, less that epoch), then ``epochs`` at the median pace of stage 2's trials so far (an
    epoch's whole cost, its report and checkpoint included; the training and validation time
    alone where no trial has a second epoch yet), with a margin, after stage 2's wind-down."""
    import statistics

    def seconds(writer) -> float:
        paces = [r.pace for r in writer.trials.values() if r.pace] or \
            [r.last["epoch_seconds"] for r in writer.trials.values() if r.last.get("epoch_seconds")]
        if not paces:
            return 0.0
        start = STAGE3_START_S if writer.start_up is None else writer.start_up
        return STAGE3_MARGIN * (epochs * statistics.median(paces) + start) + STAGE3_WIND_DOWN_S
    return seconds


class NoResult(RuntimeError):
    """smith ended without a model: one line for the user, exit code 1; what it wrote stays."""


DEFAULT_SAMPLES = 16          # stage-2 trials without a time budget
BUDGET_SAMPLES = 1000         # with one: as many as the budget allows
STAGE1_SHARE = 0.2            # at most this share of the budget for the range test


def weight_decay_preset(spec: SweepSpec, choice: str) -> str:
    if choice == "auto":
        return "weight_decay_deep" if spec.train.model.name in DEEP_MODELS else "weight_decay_shallow"
    return f"weight_decay_{choice}"


BELOW, ABOVE = 0.5, 1.5       # decades of stage 2's LR range below and above the band's max


def search_range(max_lr: float, below: float = BELOW, above: float = ABOVE):
    """Stage 2's LR range: from half a decade below the range test's max LR to a decade and a
    half above it, centred half a decade above the pick. The default rule (min10) is a tenth of
    the minimum-loss LR, a safe peak for one run; a 1cycle run tolerates more (Smith's own rule
    is the minimum), the test can misread by a decade, and short runs favour LRs that are too
    small (Wu et al., ICLR 2018). On the quality benchmark's datasets the trials that ended best
    lay at 3 to 10 times the pick, and those below a third of it never came near (bench/quality.py
    prints that evidence with every run)."""
    return max_lr / 10 ** below, max_lr * 10 ** above


def stage2_spec(spec: SweepSpec, lr_range, epochs: int, wd_preset: str, samples: int,
                budget: Optional[float] = None, name: Optional[str] = None, coupled: bool = False) -> SweepSpec:
    """The user's dataset, model, resources and trainer, with Smith's stage-2 search: LR,
    momentum bound and weight decay drawn jointly. ``coupled`` (smith --coupling effective):
    lr/(1-m) is the effective step, and the range test measured it at trainer.momentum, so each
    trial's LR is the range's LR scaled by (1-m)/(1-trainer.momentum): a 0.99 bound gets a tenth
    of a 0.9 bound's LR."""
    from tunesmith.search_spaces.presets import PRESETS
    raw = spec.to_dict()
    trainer = dict(raw["trainer"])
    for key in ("schedule", "cycle_momentum", "max_momentum", "min_momentum"):
        trainer.pop(key, None)   # set by the lr_band preset
    trainer["epochs"] = epochs
    raw["trainer"] = trainer
    raw["name"] = name or spec.name
    wd_values = PRESETS[wd_preset].space["weight_decay"]["grid"]
    raw["search"] = {
        "algorithm": "quasi", "num_samples": samples, "max_concurrent": spec.search.max_concurrent,
        "presets": ["lr_band"], "lr_band": [float(lr_range[0]), float(lr_range[1])],
        # under 1cycle, "max_momentum" is the upper bound of the cycle, which falls to 0.85 and back
        "space": {"max_momentum": {"choice": MOMENTA}, "weight_decay": {"choice": list(wd_values)}},
        "lr_momentum_ref": float(spec.train.trainer.momentum) if coupled else None,
    }
    raw["asha"] = {"enabled": True, "max_t": epochs, "grace_period": default_grace(epochs),
                   "reduction_factor": 3, "budget_aware": False}
    raw["time_budget_s"] = budget
    if spec.train.trainer.optimizer not in ("sgd", "rmsprop"):
        raise ConfigError("trainer.optimizer", spec.train.trainer.optimizer,
                          "smith's stage 2 searches SGD-style momentum; use sgd or rmsprop")
    return from_dict(raw)


def final_spec(spec: SweepSpec, best_config: Dict[str, Any], stage2: SweepSpec) -> SweepSpec:
    """The best configuration, full length, as a one-trial sweep named <name>-final."""
    raw = stage2.to_dict()
    raw["name"] = f"{spec.name}-final"
    raw["trainer"] = {**raw["trainer"], "epochs": spec.train.trainer.epochs}
    for key, value in best_config.items():
        section, _, field = key.rpartition(".")
        raw[section or "trainer"][field] = value
    raw["search"] = {"algorithm": "random", "num_samples": 1}
    raw["asha"] = {"enabled": False}
    return from_dict(raw)


def _ranking(writer, key: str, metric: str, mode: str, at: int) -> List[Dict[str, Any]]:
    """Each value of ``key`` by the metric at epoch ``at``, ASHA's first rung: every trial that
    reached it counts, pruned ones too, and under budget-aware schedules each was read there
    with its schedule annealed."""
    groups: Dict[Any, List[float]] = {}
    for rec in writer.trials.values():
        value = rec.curve.get(at)
        if value is not None and value == value:
            groups.setdefault(rec.hparams.get(key), []).append(value)
    rows = [{"value": v, "trials": len(xs), "epoch": at, "mean": sum(xs) / len(xs),
             "best": max(xs) if mode == "max" else min(xs)} for v, xs in groups.items()]
    rows.sort(key=lambda r: -r["mean"] if mode == "max" else r["mean"])
    return rows


def _chance(metric: str, num_classes: int) -> Optional[float]:
    return 1.0 / num_classes if metric in ("val_acc", "train_acc") and num_classes > 1 else None


def _no_better_than_chance(best: Optional[float], chance: Optional[float]) -> bool:
    """Within a few points of guessing: 16.8% with 10 classes is no model (issue #7)."""
    return chance is not None and (best is None or best < chance + max(0.1, chance))


def _stage2_report(out, s2: SweepSpec, lr_range, basis: str) -> Dict[str, Any]:
    w = out.writer
    ranked = w.ranked()
    at = (s2.rungs or (s2.max_t,))[0]
    best = ranked[0] if ranked else None
    return {"sweep": out.path, "name": s2.name, "epochs": s2.train.trainer.epochs, "lr_range": list(lr_range),
            "lr_basis": basis, "lr_momentum_ref": s2.search.lr_momentum_ref, "trials": len(w.trials), "rung_epochs": list(s2.rungs), "annealed_rungs": bool(s2.milestones),
            "best_trial": best.trial_id if best else None, "best": best.best[s2.metric] if best else None,
            "best_epoch": max(best.curve, key=lambda e: best.curve[e] if s2.mode == "max" else -best.curve[e])
            if best and best.curve else None,
            "best_config": best.hparams if best else {}, "metric": s2.metric,
            "momentum_ranking": _ranking(w, "max_momentum", s2.metric, s2.mode, at),
            "weight_decay_ranking": _ranking(w, "weight_decay", s2.metric, s2.mode, at),
            "ranked_at_epoch": at, "status": w.status_counts(), "seconds": round(out.wall_seconds, 2),
            "interrupted": out.interrupted}


def _range_test(train, start, end, steps, mode, val_loss, pick, cap, gpus, say=print) -> lrfind.LRDecision:
    return lrfind.decide(train, start, end, steps, mode, val_loss, pick, time_cap=cap, say=say,
                         default=lrfind.SMITH_PICK, num_gpus=gpus)


def _range_test_task(*stage1_args):
    """Stage 1 as a Ray task: the decision, the lines the test said, and the node it ran on."""
    import ray
    lines: List[str] = []
    decision = _range_test(*stage1_args, say=lines.append)
    return decision, lines, ray.util.get_node_ip_address()


def _range_test_on_cluster(spec: SweepSpec, stage1_args):
    """On a cluster the range test runs where trials run, as a task holding one trial's
    resources (all of a data-parallel trial's GPUs, which it then trains on as one batch): it
    reads the data on that node and measures the device the trials train on."""
    import ray
    res = spec.resources
    task = ray.remote(_range_test_task).options(num_cpus=res.cpus, num_gpus=res.gpus,
                                                name="tunesmith:range-test", max_retries=0)
    try:
        decision, lines, node = ray.get(task.remote(*stage1_args))
    except ray.exceptions.RayTaskError as exc:   # bad input found there (a data path) is still bad input
        raise exc.cause if isinstance(exc.cause, Exception) else exc
    for line in lines:
        print(line, flush=True)
    return decision, node


def _why_no_pilot(spec: SweepSpec, args, samples: int) -> Optional[str]:
    """None where smith trains a pilot (orchestrator/pilot.py), else why not (for the report):
    only where trials would run on this host, on CPUs, one process each."""
    r = spec.resources
    if args.no_pilot:
        return "--no-pilot"
    if args.address:
        return "trials run on the cluster's nodes"
    if r.gpus or r.ranks > 1:
        return "trials hold GPUs or several ranks, which Ray hands out"
    if samples == 1:
        return "--samples 1: the one trial is Tune's"
    return None


def _in_memory(spec: SweepSpec) -> bool:
    from tunesmith.orchestrator.datashare import plan
    return plan(spec.train.dataset, local=True)[0]


PILOT_S = 10.0   # the pilot's own deadline: about Ray's start and a Tune trial's first epoch here


def _pilot(spec: SweepSpec, s2: SweepSpec, storage: Storage, deadline: Optional[float]):
    """Stage 2's centre as a trial in this process, its 1cycle fitted to end PILOT_S from now:
    the time Ray's start-up and Tune's first trials leave the cores idle, so that the pilot costs
    Tune's trials nothing. Untimed, it ran its full length unpruned and held a slot that long:
    on the quality benchmark smith lost 1 pp on glyphs and 6.5 pp on shapes (one seed)."""
    from tunesmith.orchestrator.pilot import Pilot
    from tunesmith.search_spaces.space import centre
    ends = time.time() + PILOT_S if deadline is None else min(deadline, time.time() + PILOT_S)
    return Pilot(s2.trial_config(), centre(s2.search.space, s2.search.coupling), storage, s2.name,
                 spec.resources.cpus, ends, s2.checkpoints.every)


WARM_WAIT_S = 30.0   # the most Ray's start waits for the range test's imports


def _warm_up() -> None:
    """What the range test's first trainer imports, imported first: torch (by tensorboardX's
    background import), and torch._dynamo, which torch.optim imports when the first optimizer
    is built and at its first step (about 2 s of CPU here, holding the GIL throughout)."""
    from tunesmith.orchestrator.tensorboard import ready
    ready()   # torch, from one thread at a time
    import torch._dynamo  # noqa: F401


def _connect_below(args, after: Optional[threading.Event] = None):
    """(ClusterInfo, an Event to set once Ray is shut down, or None). Starting Ray on this
    machine, smith starts it from a thread of lower priority, which the processes Ray starts
    inherit (Linux keeps a priority per thread): Ray's start-up and then the trials' workers take
    the CPU time that the range test and the pilot leave. The thread lives until Ray is shut down:
    Ray's processes die with the thread that started them. The driver's own threads keep the
    normal priority (one holding the GIL at a low priority would stall the pilot). With ``after``,
    Ray's start (its import and ray.init, seconds of Python holding the GIL) waits until that
    event is set, or WARM_WAIT_S: until the range test has imported torch, so that the two do not
    take turns at the GIL; the range test's steps leave it free most of the time."""
    import os
    import sys
    from tunesmith.cluster.connect import connect
    ray = sys.modules.get("ray")   # not imported yet: not started either
    options = (args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
    if args.address or not sys.platform.startswith("linux") or (ray is not None and ray.is_initialized()):
        return connect(*options), None
    out: Dict[str, Any] = {}
    started, release = threading.Event(), threading.Event()

    def start():
        try:
            if after is not None:
                after.wait(WARM_WAIT_S)
            tid = threading.get_native_id()
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
            except OSError:   # not allowed here: Ray starts beside the range test, as it would anyway
                pass
            out["cluster"] = connect(*options)
        except BaseException as exc:   # noqa: BLE001 - re-raised in the calling thread
            out["error"] = exc
        finally:
            started.set()
        release.wait()
    import logging
    import signal
    quiet = _DropLine("SIGTERM handler is not set")   # set here instead, in the main thread
    logging.getLogger("ray._private.worker").addFilter(quiet)
    threading.Thread(target=start, name="tunesmith-ray-start", daemon=True).start()
    try:
        started.wait()
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if "error" in out:
        raise out["error"]
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:   # as ray.init sets it from the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    return out["cluster"], release


class _DropLine:
    """A logging filter that drops the records starting with ``text``."""

    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.text)


TITLE = "{}: LR range test"


def _write_plot(decision, storage: Storage, name: str, pilot, out: Dict[str, Any]) -> None:
    try:
        if pilot is not None:
            pilot.ended.wait()
        lrfind.write_plot(decision, storage, name, TITLE.format(name))
    except BaseException as exc:   # noqa: BLE001 - re-raised before the report is written
        out["error"] = exc


def _join(writing: Optional[threading.Thread], out: Dict[str, Any]) -> None:
    if writing is not None:
        writing.join()
    if "error" in out:
        raise out["error"]


def _config_text(config: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {_f(v)}" for k, v in config.items())


def check(spec: SweepSpec, args):
    """smith's options against the spec, before any work (also where `submit --smith` sends the
    job): (weight-decay preset, (decades below, above), stage-2 epochs, coupled)."""
    lrfind.check_options(args.pick or lrfind.SMITH_PICK, args.start, args.end, args.steps, args.max_seconds)
    wd_preset = weight_decay_preset(spec, args.weight_decay)
    below, above = args.range or (BELOW, ABOVE)
    if below < 0 or above < 0 or below + above <= 0:
        raise ConfigError("--range", f"{below:g} {above:g}", "decades below and above the max LR: both >= 0, "
                          "not both 0")
    epochs = args.short_epochs or spec.train.trainer.epochs
    if epochs > spec.train.trainer.epochs:
        raise ConfigError("--short-epochs", epochs, f"must not exceed trainer.epochs ({spec.train.trainer.epochs})")
    coupled = args.coupling == "effective"
    stage2_spec(spec, WIDE, epochs, wd_preset, 1, coupled=coupled)   # valid for some band
    return wd_preset, (below, above), epochs, coupled


def stage1_options(spec: SweepSpec, args) -> tuple:
    """The range test's arguments from smith's command line: lr-find's options, its time cap
    (--max-seconds) within a fifth of time_budget_s, and one trial's config and GPUs."""
    budget = spec.time_budget_s
    cap = args.max_seconds if not budget else min(args.max_seconds, STAGE1_SHARE * budget)
    cfg, gpus = lrfind.as_one_trial(spec)
    return (cfg, args.start, args.end, args.steps, "linear" if args.linear else "exp", args.val_loss,
            args.pick, cap, gpus)


def run(spec: SweepSpec, args, started: float) -> Dict[str, Any]:
    from tunesmith.cluster.connect import disconnect
    from tunesmith.orchestrator.sweep import best_table, budget_problem, check_fresh, run_sweep

    storage = Storage(spec.results_dir)
    retry_name, final_name = f"{spec.name}-wide", f"{spec.name}-final"
    for name in (spec.name, retry_name, final_name):
        check_fresh(storage, name)
    wd_preset, (below, above), epochs, coupled = check(spec, args)
    budget = spec.time_budget_s
    deadline = started + budget if budget else None
    samples = args.samples or (BUDGET_SAMPLES if budget else DEFAULT_SAMPLES)

    def left() -> Optional[float]:
        return None if deadline is None else deadline - time.time()

    if args.address and not args.address.startswith("ray://"):
        from tunesmith.cluster.connect import check_reachable
        check_reachable(args.address)   # before the range test starts: a dead address is bad input

    box: Dict[str, Any] = {"no_pilot": _why_no_pilot(spec, args, samples)}
    stage1_args = stage1_options(spec, args)
    decided, warm = threading.Event(), threading.Event()

    def plan(decision):
        """Stage 2 from stage 1's decision: (LR range, why that range, stage 2's spec)."""
        if decision.informative:
            lr_range = search_range(decision.max_lr, below, above)
            basis = (f"from {below:g} decades below the range test's max LR {decision.max_lr:.3g} to {above:g} "
                     f"above it")
        else:
            lr_range = WIDE
            basis = f"the wide range, since the range test gave no band ({decision.curve.problem})"
        pilot = box["no_pilot"] is None   # the pilot is one of --samples
        s2 = stage2_spec(spec, lr_range, epochs, wd_preset, samples - pilot if not budget else samples,
                         None if left() is None else max(1.0, left()), coupled=coupled)   # checked below
        return lr_range, basis, s2

    def stage1():
        try:
            _warm_up()
            warm.set()
            box["decision"] = _range_test(*stage1_args, say=print)
            box["ended_s"] = round(time.time() - started, 2)   # no stage-2 trial can start sooner
            if box["no_pilot"] is None and not _in_memory(spec):
                box["no_pilot"] = "the data streams from disk: the driver does not load it"
            box["plan"] = plan(box["decision"])
            if box["no_pilot"] is None:
                box["pilot"] = _pilot(spec, box["plan"][2], storage, deadline)
        except BaseException as exc:   # re-raised in the main thread
            box["error"] = exc
        finally:
            warm.set()
            decided.set()
        if box.get("pilot") is not None:   # stage 2's first trial, while Ray starts its workers
            box["pilot"].run()
    worker = None
    if not args.address:   # here the driver's host is the node: stage 1 runs while Ray starts
        worker = threading.Thread(target=stage1, daemon=True)
        worker.start()
    cluster, ray_thread = _connect_below(args, None if args.address else warm)
    warnings: List[str] = []
    writing, written = None, {}
    try:
        if args.address:
            from tunesmith.cluster.storage_check import check_every_node
            check_every_node(spec.results_dir)
            # where trials run: the driver's host may lack the data, or the GPU the trials train on
            box["decision"], box["node"] = _range_test_on_cluster(spec, stage1_args)
            box["ended_s"] = round(time.time() - started, 2)
            box["plan"] = plan(box["decision"])
        else:
            decided.wait()
            box.setdefault("node", "driver")
        if "error" in box:
            raise box["error"]
        decision = box["decision"]
        pilot = box.get("pilot")
        paths = lrfind.write(decision, storage, spec.name, TITLE.format(spec.name), plot=False)
        # the plot (a second of CPU and the GIL) waits for the pilot: stage 2 starts meanwhile
        writing = threading.Thread(target=_write_plot, args=(decision, storage, spec.name, pilot, written),
                                   daemon=True)
        writing.start()
        where = "" if box["node"] == "driver" else f", on node {box['node']}"
        print(f"stage 1 ({time.time() - started:.1f}s{where}): " + lrfind.summary_text(decision), flush=True)
        chance = _chance(spec.metric, decision.curve.num_classes)
        if budget and left() <= 0:
            raise NoResult(f"time_budget_s = {budget:g}: Ray's start-up and the range test took {budget - left():.1f}s "
                           f"of it, and nothing is left for stage 2 (the range test's curve is written); "
                           "give smith a larger budget")

        lr_range, basis, s2 = box["plan"]
        if not decision.informative:
            warnings.append(f"stage 1 gave no band: {decision.curve.problem}; stage 2 searched {WIDE[0]:g} to {WIDE[1]:g}")
        print(f"\nstage 2: 1cycle, lr log-uniform in [{lr_range[0]:.3g}, {lr_range[1]:.3g}] ({basis}) jointly with "
              f"max_momentum {MOMENTA} and {wd_preset}{_coupling_text(s2.search.lr_momentum_ref)}; {epochs} epochs, ASHA at epochs "
              f"{list(s2.rungs)}" + (" on annealed schedules" if s2.milestones else " (one schedule over the run)")
              + (f"; {left():.0f}s of budget left" if budget else ""), flush=True)
        if pilot is not None:
            print(f"pilot: trial {pilot.trial.trial_id}, stage 2's centre ({_config_text(pilot.config)}), trains in "
                  f"this process while Ray starts the trials' workers", flush=True)
        hold = stage3_hold_back(spec.train.trainer.epochs) if args.final and budget else None
        out2 = run_sweep(s2, cluster, command="smith", fresh=False, deadline=deadline, hold_back=hold, pilot=pilot)
        print("\n" + best_table(out2), flush=True)
        stages = [_stage2_report(out2, s2, lr_range, basis)]
        stages[0]["pilot"] = None if pilot is None else {"trial": pilot.trial.trial_id, "config": pilot.config}
        stages[0]["no_pilot"] = box["no_pilot"]

        # smith checks its own answer: no better than chance is no answer.
        if _no_better_than_chance(stages[-1]["best"], chance) and not out2.interrupted \
                and (left() is None or left() > 10):
            wide = (min(WIDE[0], lr_range[0]) / 10, max(WIDE[1], lr_range[1]) * 3)
            note = (f"stage 2's best {spec.metric} {_f(stages[-1]['best'])} is no better than chance "
                    f"({chance:.3g}): widening the LR range to [{wide[0]:.3g}, {wide[1]:.3g}]"
                    + (f" for the remaining {left():.0f}s" if budget else ""))
            print("\n" + note, flush=True)
            warnings.append(note)
            s2b = stage2_spec(spec, wide, epochs, wd_preset, samples, left(), name=retry_name, coupled=coupled)
            out2b = run_sweep(s2b, cluster, command="smith", deadline=deadline, hold_back=hold)
            print("\n" + best_table(out2b), flush=True)
            stages.append(_stage2_report(out2b, s2b, wide, "widened after a result no better than chance"))
        if budget and left() is not None and left() > 0.1 * budget and not args.final:
            done = sum(st["trials"] for st in stages)
            print(f"\nsmith stopped with {left():.0f}s of its {budget:g}s budget left: all {done} trials of "
                  f"stage 2 finished (--samples sets how many)", flush=True)
        best_stage = max((st for st in stages if st["best"] is not None),
                         key=lambda st: st["best"] if spec.mode == "max" else -st["best"], default=stages[0])
        if best_stage["best"] is None:
            why = budget_problem(out2, budget)
            raise NoResult(f"stage 2 produced no result: {why or 'no trial finished an epoch'}")
        report: Dict[str, Any] = {"sweep": spec.name, "started_at_unix": started, "metric": spec.metric,
                                  "mode": spec.mode, "chance": chance, "time_budget_s": budget,
                                  "stage1": {**decision.to_dict(), **paths, "ended_s": box["ended_s"],
                                             "node": box["node"]},
                                  "stage2": best_stage,
                                  "stage2_runs": stages, "warnings": warnings}
        result = {"stage": 2, "sweep": best_stage["name"], "trial": best_stage["best_trial"],
                  "value": best_stage["best"], "epoch": best_stage["best_epoch"]}
        if args.final and not out2.interrupted:
            s3 = final_spec(spec, best_stage["best_config"], s2)
            if budget:
                s3 = dataclasses.replace(s3, time_budget_s=max(1.0, left()))
            print(f"\nstage 3: the best configuration for {s3.train.trainer.epochs} epochs", flush=True)
            out3 = run_sweep(s3, cluster, command="smith", progress=False, deadline=deadline)
            rec = next(iter(out3.writer.trials.values()), None)
            s3r = {"sweep": out3.path, "epochs": s3.train.trainer.epochs,
                   "final": rec.last.get(s3.metric) if rec else None,
                   "best": rec.best.get(s3.metric) if rec else None,
                   "best_epoch": (max(rec.curve, key=lambda e: rec.curve[e] if spec.mode == "max" else -rec.curve[e])
                                  if rec and rec.curve else None),
                   "status": rec.status if rec else "none", "trained": rec.epochs if rec else 0,
                   "stop_reason": rec.stop_reason if rec else ""}
            report["stage3"] = s3r
            better = s3r["best"] is not None and (s3r["best"] >= result["value"] if spec.mode == "max"
                                                  else s3r["best"] <= result["value"])
            if better:
                result = {"stage": 3, "sweep": s3.name, "trial": rec.trial_id, "value": s3r["best"],
                          "epoch": s3r["best_epoch"]}
            elif s3r["best"] is None:
                note = ("stage 3 finished no epoch" + (" within the time budget" if out3.timed_out else "")
                        + f"; keeping stage 2's trial {result['trial']}")
                warnings.append(note)
                print(note, flush=True)
            else:
                note = (f"stage 3 ended below stage 2: its best {spec.metric} {_f(s3r['best'])} against stage 2's "
                        f"{_f(result['value'])}; keeping stage 2's trial {result['trial']}")
                warnings.append(note)
                print(note, flush=True)
        report["result"] = result
        if _no_better_than_chance(result["value"], chance):
            warnings.append(f"WARNING: the best {spec.metric} {_f(result['value'])} is no better than chance "
                            f"({chance:.3g}): this is not a usable model; check the data and the model")
        _join(writing, written)   # the plot, before the report that links it
        report["seconds"] = round(time.time() - started, 2)
    finally:
        if box.get("pilot") is not None:   # never left training past the command (Ctrl-C, an error)
            box["pilot"].stop()
        if worker is not None:
            worker.join()
        if writing is not None:
            writing.join()
        disconnect(cluster)
        if ray_thread is not None:
            ray_thread.set()
    storage.write_bytes(f"{spec.name}/smith.json", json.dumps(report, indent=2, default=str).encode())
    text = render(report)
    storage.write_bytes(f"{spec.name}/smith_report.md", text.encode())
    print("\n" + text)
    if spec.mlflow.uri:
        from tunesmith.orchestrator.mlflow_sink import log_files
        files = {"smith/smith_report.md": text.encode(),
                 "smith/smith.json": json.dumps(report, indent=2, default=str).encode()}
        for rel in ("curve.parquet", "lr_find.png", "decision.json"):
            files[f"lr_find/{rel}"] = storage.read_bytes(f"{spec.name}/lr_find/{rel}")
        log_files(spec.mlflow.uri, spec.mlflow.experiment, spec.name, files)
    return report


def _coupling_text(ref: Optional[float]) -> str:
    """How stage 2's LR was tied to the momentum, for the printed plan and the report."""
    return ("" if ref is None else
            f", each trial's lr scaled by (1-m)/(1-{ref:g}) for its momentum bound m (the effective step "
            f"lr/(1-m) spread over the range, as the range test measured it at momentum {ref:g})")


def _f(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render(r: Dict[str, Any]) -> str:
    s1 = r["stage1"]
    m = r["metric"]
    lines = [f"# Smith report: {r['sweep']}", "", "## Stage 1: LR range test",
             f"{s1['points']} points, LR from {s1['start_lr']:.2g} rising exponentially ({s1['mode']} loss); "
             f"stopped: {s1['stop_reason']}."]
    lines += [f"{n}." for n in s1.get("notes", [])]
    if s1["informative"]:
        lines += ["Suggestions: " + ", ".join(f"{k} {_f(v)}" for k, v in s1["suggestions"].items()) + ".",
                  f"Decision: max LR {_f(s1['max_lr'])} by {s1['why']}; min LR {_f(s1['min_lr'])} = max/10: "
                  f"the 1cycle band. Curve: {s1['plot']}"]
    else:
        lines.append(f"Decision: none. {s1['why']}. Curve: {s1['plot']}")
    for run in r["stage2_runs"]:
        lines += ["", f"## Stage 2: ASHA sweep ({run['name']})",
                  f"{run['trials']} trials of up to {run['epochs']} epochs "
                  f"({', '.join(f'{n} {k}' for k, n in sorted(run['status'].items()))}) in {run['seconds']:.0f}s; "
                  f"1cycle with the LR log-uniform in [{run['lr_range'][0]:.3g}, {run['lr_range'][1]:.3g}] "
                  f"({run['lr_basis']}), momentum cycling down to 0.85 from the bound searched"
                  + _coupling_text(run.get("lr_momentum_ref")) + "; "
                  f"ASHA rungs at epochs {run['rung_epochs']}" + (", each read on an annealed schedule."
                                                                   if run.get("annealed_rungs") else
                                                                   ", a third of the run or later into one schedule."),
                  *([f"Trial {run['pilot']['trial']}, stage 2's centre ({_config_text(run['pilot']['config'])}), "
                     "trained in smith's own process while Ray started the trials' workers; ASHA did not judge it."]
                    if run.get("pilot") else []),
                  "", f"Momentum (upper bound) by mean {m} at epoch {run['ranked_at_epoch']} (the first rung):"]
        lines += [f"- {_f(x['value'])}: mean {x['mean']:.4f}, best {x['best']:.4f} ({x['trials']} trials)"
                  for x in run["momentum_ranking"]]
        lines += ["", "Weight decay by mean at the same epoch:"]
        lines += [f"- {_f(x['value'])}: mean {x['mean']:.4f}, best {x['best']:.4f} ({x['trials']} trials)"
                  for x in run["weight_decay_ranking"]]
        if run["best"] is not None:
            cfg = ", ".join(f"{k}={_f(v)}" for k, v in run["best_config"].items())
            lines += ["", f"Best: {cfg}: trial {run['best_trial']}, {m} {run['best']:.4f} at epoch "
                      f"{run['best_epoch']} (ties go to the lower validation loss). Sweep: {run['sweep']}"]
    if "stage3" in r:
        s3 = r["stage3"]
        lines += ["", "## Stage 3: full-length training",
                  f"{s3.get('trained', s3['epochs'])} of {s3['epochs']} epochs ({s3['status']}"
                  + (f": {s3['stop_reason']}" if s3.get("stop_reason") and s3.get("trained") != s3["epochs"] else "")
                  + f"): best {m} {_f(s3['best'])} at epoch {s3['best_epoch']}, "
                  f"{_f(s3['final'])} at the last epoch. Sweep: {s3['sweep']}"]
    res = r["result"]
    lines += ["", "## Result",
              f"{m} {res['value']:.4f}: trial {res['trial']} of {res['sweep']} (stage {res['stage']}), "
              f"at epoch {res['epoch']}."]
    lines += [f"- {w}" for w in r["warnings"]]
    lines.append(f"Total: {r['seconds']:.1f}s from the command's start"
                 + (f", of a {r['time_budget_s']:g}s budget." if r.get("time_budget_s") else "."))
    return "\n".join(lines) + "\n"
