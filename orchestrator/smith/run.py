"""`tunesmith smith` end to end: stage 1 (startup.py), stage 2 and its chance check, stage 3, the
report. Each stage is a function that takes the one before's typed result."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import lr_find
from tunesmith.orchestrator.smith import policy, report, startup
from tunesmith.orchestrator.smith.policy import NoResult, Options
from tunesmith.orchestrator.spec import SweepSpec

INTERRUPTED_WAIT_S = 2.0   # on Ctrl-C or SIGTERM, the most the command waits for the range test's thread


@dataclass
class Clock:
    """The command's budget: seconds left, or None without one."""
    started: float
    budget: Optional[float]

    @property
    def deadline(self) -> Optional[float]:
        return self.started + self.budget if self.budget else None

    def left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.time()


@dataclass
class Stage2:
    """Stage 2's sweeps (the first, and the widened retry after a chance-level answer)."""
    spec: SweepSpec
    first: Any                                  # the first sweep's SweepOutcome
    runs: List[Dict[str, Any]]                  # one summary per sweep (report.stage2_summary)
    warnings: List[str] = field(default_factory=list)

    @property
    def best(self) -> Dict[str, Any]:
        done = [st for st in self.runs if st["best"] is not None]
        mode = self.spec.mode
        return max(done, key=lambda st: st["best"] if mode == "max" else -st["best"], default=self.runs[0])


def stage2(spec: SweepSpec, args, opts: Options, s1: startup.Stage1, cluster, clock: Clock, samples: int,
           chance: Optional[policy.Chance]) -> Stage2:
    from tunesmith.orchestrator.sweep import best_table, run_sweep
    plan, left = s1.plan, clock.left
    s2, budget = plan.spec, clock.budget
    warnings = []
    if not s1.decision.informative:
        warnings.append(f"stage 1 gave no band: {s1.decision.curve.problem}; stage 2 searched "
                        f"{plan.lr_range[0]:.3g} to {plan.lr_range[1]:.3g}")
    print(f"\nstage 2: 1cycle, lr log-uniform in [{plan.lr_range[0]:.3g}, {plan.lr_range[1]:.3g}] ({plan.basis}) "
          f"{plan.beside}{report.coupling_text(s2.plan.lr_momentum_ref)}; "
          f"{opts.epochs} epochs, ASHA at epochs {list(s2.rungs)}"
          + (" on annealed schedules" if s2.milestones else " (one schedule over the run)")
          + (f"; {left():.0f}s of budget left" if budget else ""), flush=True)
    pilot = s1.pilot
    if pilot is not None:
        print(f"pilot: trial {pilot.trial.trial_id}, stage 2's centre ({report.config_text(pilot.config)}), trains in "
              f"this process while Ray starts the trials' workers", flush=True)
    elif s1.no_pilot:
        print(f"no pilot: {s1.no_pilot}", flush=True)
    hold = policy.stage3_hold_back(spec.train.trainer.epochs) if args.final and budget else None
    out = run_sweep(s2, cluster, command="smith", fresh=False, deadline=clock.deadline, hold_back=hold, pilot=pilot)
    if out.failure:
        raise NoResult(f"stage 2 stopped: {out.failure}; what was written stays readable")
    print("\n" + best_table(out), flush=True)
    from tunesmith.orchestrator.confirm import summary
    print("\n" + summary(out), flush=True)
    first = report.stage2_summary(out, s2, plan.lr_range, plan.basis)
    first["pilot"] = None if pilot is None else {"trial": pilot.trial.trial_id, "config": pilot.config}
    first["no_pilot"] = s1.no_pilot
    result = Stage2(s2, out, [first], warnings)
    specs = [s2]   # each stage-2 sweep's spec, beside its summary in result.runs
    # smith checks its own answer: no better than chance is no answer.
    if policy.no_better_than_chance(first["best"], chance) and not out.interrupted \
            and (left() is None or left() > 10):
        wide = policy.widened(plan.lr_range)
        note = (f"stage 2's best {spec.metric} {report.f(first['best'])} is no better than chance "
                f"({chance.text()}): widening the LR range to [{wide[0]:.3g}, {wide[1]:.3g}]"
                + (f" for the remaining {left():.0f}s" if budget else ""))
        print("\n" + note, flush=True)
        warnings.append(note)
        s2b = policy.stage2_spec(spec, wide, opts.epochs, opts.wd_preset, samples, left(),
                                 name=f"{spec.name}-wide", coupled=opts.coupled, held=plan.held,
                                 floor=s2.asha.floor)
        outb = run_sweep(s2b, cluster, command="smith", deadline=clock.deadline, hold_back=hold)
        specs.append(s2b)
        print("\n" + best_table(outb), flush=True)
        result.runs.append(report.stage2_summary(outb, s2b, wide, "widened after a result no better than chance"))
    early = report.left_unused(result.runs, specs, left(), budget) if not args.final else ""
    if early:
        print("\n" + early, flush=True)
    if result.best["best"] is None:
        from tunesmith.orchestrator.sweep import budget_problem
        why = budget_problem(out, budget)
        raise NoResult(f"stage 2 produced no result: {why or 'no trial finished an epoch'}")
    return result


def stage3(spec: SweepSpec, s2: Stage2, cluster, clock: Clock, result: Dict[str, Any], warnings: List[str]):
    """The best configuration for the spec's full length: (its summary, the result it makes)."""
    from tunesmith.orchestrator.sweep import run_sweep
    s3 = policy.final_spec(spec, s2.best["best_config"], s2.spec)
    if clock.budget:
        s3 = s3.model_copy(update={"time_budget_s": max(1.0, clock.left())})
    print(f"\nstage 3: the best configuration for {s3.train.trainer.epochs} epochs", flush=True)
    out3 = run_sweep(s3, cluster, command="smith", progress=False, deadline=clock.deadline)
    s3r = report.stage3_summary(out3, s3, spec.mode)
    if policy.better(s3r["best"], result["value"], spec.mode):
        return s3r, {"stage": 3, "sweep": s3.name, "trial": s3r["trial"], "value": s3r["best"],
                     "epoch": s3r["best_epoch"]}
    if s3r["best"] is None:
        note = ("stage 3 finished no epoch" + (" within the time budget" if out3.timed_out else "")
                + f"; keeping stage 2's trial {result['trial']}")
    else:
        note = (f"stage 3 ended below stage 2: its best {spec.metric} {report.f(s3r['best'])} against stage 2's "
                f"{report.f(result['value'])}; keeping stage 2's trial {result['trial']}")
    warnings.append(note)
    print(note, flush=True)
    return s3r, result


def interrupted_between_stages(spec: SweepSpec, storage: Storage) -> None:
    """Ctrl-C or SIGTERM after stage 1 wrote its files and before stage 2's sweep wrote its
    manifest (the pilot's start, the sweep's assembly): the folder says it was interrupted, as a
    sweep's does. A folder with nothing in it yet goes with its claim."""
    from tunesmith.orchestrator import manifest as manifest_mod
    try:
        if storage.exists(spec.name, "manifest.json") or not storage.exists(spec.name, "lr_find"):
            return   # a sweep's own manifest says so (run_sweep), or the claim goes with the empty folder
    except OSError:
        return
    manifest_mod.write_interrupted(storage, spec.name, manifest_mod.build(spec.to_dict(), "smith", {}))


def run(spec: SweepSpec, args, started: float) -> Dict[str, Any]:
    storage = Storage(spec.results_dir)
    try:
        return _run(spec, args, started, storage)
    except KeyboardInterrupt:
        interrupted_between_stages(spec, storage)
        raise


def _run(spec: SweepSpec, args, started: float, storage: Storage) -> Dict[str, Any]:
    from tunesmith.cluster.connect import disconnect
    from tunesmith.orchestrator.sweep import check_fresh
    for name in (spec.name, f"{spec.name}-wide", f"{spec.name}-final"):
        check_fresh(storage, name, claim=True)
    opts = policy.check(spec, args)
    clock = Clock(started, spec.time_budget_s)
    samples = args.samples or (policy.BUDGET_SAMPLES if clock.budget else policy.DEFAULT_SAMPLES)
    if args.address and not args.address.startswith("ray://"):
        from tunesmith.cluster.connect import check_reachable
        check_reachable(args.address)   # before the range test starts: a dead address is bad input
    no_pilot = policy.why_no_pilot(spec, args, samples)
    stage1_args = policy.stage1_options(spec, args)

    def plan(decision, pilot: bool, slots: Optional[int] = None):
        slots = slots or policy.local_slots(spec, args)   # here: in stage 1's thread, torch imported
        return policy.plan_stage2(spec, decision, opts, samples, pilot, clock.left(), slots)

    local = None
    if not args.address:   # here the driver's host is the node: stage 1 runs while Ray starts
        local = startup.LocalStage1(spec, stage1_args, plan, no_pilot, storage, clock.deadline, started).start()
    cluster, ray_thread = startup.connect_below(args, None if local is None else local.warm)
    plot = None
    try:
        if local is None:
            from tunesmith.cluster.storage_check import check_every_node
            check_every_node(spec.results_dir)
            # where trials run: the driver's host may lack the data, or the GPU the trials train on
            from tunesmith.orchestrator.sweep import concurrency_for
            slots = concurrency_for(spec, cluster)
            s1 = startup.on_cluster(spec, stage1_args, lambda d, p: plan(d, p, slots), started, no_pilot)
        else:
            s1 = local.wait()
        decision = s1.decision
        paths = lr_find.write(decision, storage, spec.name, startup.TITLE.format(spec.name), plot=False)
        plot = startup.PlotWriter(decision, storage, spec.name, s1.pilot)
        where = "" if s1.node == "driver" else f", on node {s1.node}"
        print(f"stage 1 ({time.time() - started:.1f}s{where}): " + lr_find.summary_text(decision), flush=True)
        chance = policy.chance(spec.metric, decision.curve)
        if clock.budget and clock.left() <= 0:
            raise NoResult(f"time_budget_s = {clock.budget:g}: Ray's start-up and the range test took "
                           f"{clock.budget - clock.left():.1f}s of it, and nothing is left for stage 2 (the range "
                           "test's curve is written); give smith a larger budget")
        s2 = stage2(spec, args, opts, s1, cluster, clock, samples, chance)
        warnings = s2.warnings
        best = s2.best
        out: Dict[str, Any] = {"sweep": spec.name, "started_at_unix": started, "metric": spec.metric,
                               "mode": spec.mode, "chance": None if chance is None else chance.level,
                               "chance_bar": None if chance is None else chance.bar, "time_budget_s": clock.budget,
                               "stage1": {**decision.to_dict(), **paths, "ended_s": s1.ended_s, "node": s1.node},
                               "stage2": best, "stage2_runs": s2.runs, "warnings": warnings}
        result = {"stage": 2, "sweep": best["name"], "trial": best["best_trial"], "value": best["best"],
                  "epoch": best["best_epoch"]}
        if args.final and not s2.first.interrupted:
            out["stage3"], result = stage3(spec, s2, cluster, clock, result, warnings)
        out["result"] = result
        if policy.no_better_than_chance(result["value"], chance):
            short = policy.too_few_steps(decision, (spec if result["stage"] == 3 else s2.spec).trainer.epochs)
            warnings.append(f"WARNING: the best {spec.metric} {report.f(result['value'])} is no better than chance "
                            f"({chance.text()}): this is not a usable model; "
                            + (short or "check the data and the model"))
        plot.join()   # the plot, before the report that links it
        out["seconds"] = round(time.time() - started, 2)
    finally:
        if local is not None:
            local.stop(wait=INTERRUPTED_WAIT_S if sys.exc_info()[0] is not None else None)
        if plot is not None:
            plot.join(check=False)
        disconnect(cluster)
        if ray_thread is not None:
            ray_thread.set()
    print("\n" + report.write(out, storage, spec.name, spec.mlflow))
    return out


