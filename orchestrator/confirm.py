"""Confirming the finalists (#28): the search's best configurations (under confirm.rank_by
late_val_loss, the lowest late val_loss among its best few) trained again, each with the same new
seeds, for their full schedule; the winner is the best mean (of the validation loss, or
of the metric: confirm.rank_by) over those seeds and the search's own run of each (every search
trial trains with the sweep's seed, so where a finalist's trained its whole schedule it is one
more seed's run), not the luckiest single run; each new final model reads the test split once.
The verdict between the first two is a paired comparison over the shared seeds (same
initialisation and data order).

The statistics are Ray-free (``judge``, over ``orchestrator/verdict.py``); ``run_phase`` is the
phase's Tune run, written by the sweep's own ledger callback: its trials are rows of
trials.parquet like any other, marked ``phase: confirm`` with the finalist they confirm and their
seed."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

from tunesmith.orchestrator.verdict import (LATE, Finalist, Verdict, add_run, add_search_run, choose, late_mean,
                                            late_chooses, mean_sd, pool_size, test_metric, verdict_of, whole_run,
                                            within_range)
from tunesmith.trainables.config import CONFIRM

SEED_BASE = 1000   # confirmation seeds: spec.seed + SEED_BASE + i, never a seed the search trained with
SHARE = 0.3        # with a time budget, the confirmation's most (its runs fit their schedules to it);
                   # a full-length hold-back on 64-px colour data at 90 s left the search nothing
LEAST = 0.8        # a confirmation run's schedule fitted to less than this share is not started: on shapes
                   # at 90 s, runs fitted to a third of theirs read 14 points below the search's figure for
                   # the same settings, and the kept model was one of them


AUTO_SEEDS = 2     # confirm.seeds "auto": two new seeds where they fit, else one. Over twelve sweeps with ten
                   # truth seeds, two cut single-run selection's expected regret by 37%, one by 28% (ranked
                   # by val_acc, before confirm.rank_by); the test figure's noise fell from 2.1 to 1.2 pp
                   # and the verdict's t interval has two degrees of freedom, not one (docs/benchmarks.md,
                   # "Two new seeds")


def rounds_of(spec, concurrency: int, seeds: Optional[int] = None, finals: Optional[int] = None) -> int:
    """How many rounds the confirmation's runs take, ``concurrency`` at a time: ``finals``
    (default confirm.top) finalists with ``seeds`` new seeds each, or confirm.seeds (its least,
    one, for "auto": the time a budget holds back)."""
    n = spec.confirm.top if finals is None else finals
    return -(-n * (seeds or spec.confirm.least_seeds) // max(1, concurrency))


def seeds_for(spec, ledger, concurrency: int, budgeted: bool, finals: Optional[int] = None) -> tuple:
    """How many new seeds each finalist gets, and why (for "auto"; '' for a number the spec gave).
    "auto" takes AUTO_SEEDS where they cost no more rounds than one seed would (idle workers), or,
    without a time budget, where all their rounds fit in SHARE of the search's own wall time at
    its pace (a sweep's cost grows by about that share at most); else one. With a budget the search
    held back one seed's rounds, and more would come out of the search. ``finals``: how many
    finalists there are (default confirm.top)."""
    asked = spec.confirm.seeds
    if asked != "auto":
        return asked, ""
    one, more = (rounds_of(spec, concurrency, k, finals) for k in (1, AUTO_SEEDS))
    if more == one:
        return AUTO_SEEDS, f"auto: {AUTO_SEEDS} fit in the workers of one round"
    if budgeted:
        return 1, "auto: 1, the time budget held back one seed's rounds"
    from tunesmith.orchestrator.ledger import pace_of
    span = busy_seconds((r.started_at, r.ended_at) for r in ledger.trials.values()
                        if r.phase == "search" and r.ended_at is not None)
    pace, start = pace_of(ledger)   # the expected cost, not a budget's margined hold
    need = more * spec.trainer.epochs * pace + start if pace else 0.0
    if need and need <= SHARE * span:
        return AUTO_SEEDS, f"auto: {AUTO_SEEDS} fit in {SHARE:.0%} of the search's {span:.0f}s"
    return 1, (f"auto: 1, as {AUTO_SEEDS} would take about {need:.0f}s, more than {SHARE:.0%} of the search's "
               f"{span:.0f}s")


def busy_seconds(spans) -> float:
    """The seconds in which at least one of the (start, end) ``spans`` ran: a resumed search's
    time between its interruption and its resume is not the search's."""
    total, reach = 0.0, None
    for a, b in sorted(spans):
        if reach is None or a > reach:
            total, reach = total + (b - a), b
        elif b > reach:
            total, reach = total + (b - reach), b
    return total


def budget_hold(ledger, spec, rounds: int, budget: float) -> float:
    """Seconds the search keeps for its confirmation, at the search's measured pace: ``held_for``."""
    from tunesmith.orchestrator.ledger import hold_for_epochs
    return held_for(lambda epochs: hold_for_epochs(ledger, epochs), spec.trainer.epochs, rounds, budget)


def held_for(hold, epochs: int, rounds: int, budget: float) -> float:
    """All of the confirmation's runs' schedules where they fit in SHARE of the budget; else that
    share, where LEAST (four fifths) of each fits in it; else none (the search keeps the whole budget, and
    the confirmation is not started: ``unaffordable`` says why). ``hold(n)``: the seconds to keep
    for n epochs after the search, at its measured pace (ledger.hold_for_epochs) or, as smith
    plans stage 2, at the range test's; ``epochs``: a confirmation run's schedule. Never less
    than the least, with the search's own wind-down (``after_search``)."""
    least = after_search(hold(rounds * epochs * LEAST))
    full, cap = max(hold(rounds * epochs), least), SHARE * budget
    if full <= cap:
        return full
    return cap if least <= cap else 0.0


def after_search(need: float) -> float:
    """A confirmation's least ``need`` (from the search's end) held from before the search's end:
    with the search's wind-down too, the trials' stop and Tune's return past the held-back
    deadline. On tiny data the whole schedule's hold exceeded the least by 0.01 s (two epochs of
    20 ms), the wind-down (0.43 s in a smith run at 60 s) took that, and the confirmation was
    refused, the 8 s held for it spent on nothing; on other data the schedule's last fifth covers
    the wind-down, and the hold is as it was. Nothing measured holds nothing."""
    from tunesmith.orchestrator.ledger import HOLD_WIND_DOWN_S
    return need + HOLD_WIND_DOWN_S if need else 0.0


def least_needed(ledger, spec, rounds: int) -> float:
    """The least a confirmation needs: each round's runs fitted to LEAST of their schedules,
    after one start-up (a later round's runs reuse the first's workers)."""
    from tunesmith.orchestrator.ledger import hold_for_epochs
    return hold_for_epochs(ledger, rounds * spec.trainer.epochs * LEAST)


def unaffordable(ledger, spec, rounds: int, budget: float) -> str:
    """Why a time budget affords no confirmation at the search's pace, or ''."""
    least = after_search(least_needed(ledger, spec, rounds))
    if not least or least <= SHARE * budget:
        return ""
    return (f"it would need about {least:.0f}s at the search's pace (four fifths of each run's schedule, "
            f"{rounds} round{'s' if rounds > 1 else ''}), more than its share of the time budget "
            f"({SHARE:.0%}, {SHARE * budget:.0f}s), so the search kept the whole budget")


def distinct(ledger, n: Optional[int] = None) -> list:
    """The search's ``n`` (default: all) best records with distinct settings (a seed study repeats them)."""
    seen, out = set(), []
    for rec in ledger.ranked():
        key = tuple(sorted((k, repr(v)) for k, v in rec.config.items() if k != "seed"))
        if key in seen:
            continue
        seen.add(key)
        out.append(rec)
        if len(out) == n:
            break
    return out


def late_of(rec) -> Optional[float]:
    """A search run's late val_loss where it trained its whole schedule, else None."""
    return late_mean(rec.losses) if whole_run(rec.status, rec.stop_reason) else None


def pool_of(ledger, top: int) -> list:
    """Where late_val_loss chooses the finalists from: the search's best by the metric, its top
    fifth (``verdict.pool_size``)."""
    every = distinct(ledger)
    return every[:pool_size(len(every), top)]


def finalists(ledger, top: int, by: str = "") -> list:
    """The search's ``top`` best records with distinct settings; under ``by`` late_val_loss
    (confirm.rank_by), as ``verdict.choose`` chooses in ``pool_of``."""
    if by != LATE:
        return distinct(ledger, top)
    return choose(pool_of(ledger, top), late_of, top)


def chosen_by_late(ledger, top: int) -> int:
    """The pool late_val_loss chose the finalists from (its size), or 0 where it did not choose: a
    pool no wider than the finalists, or one of it not trained its whole schedule."""
    pool = pool_of(ledger, top)
    return len(pool) if late_chooses([late_of(r) for r in pool], top) else 0


def points(finals: Sequence, seeds: Sequence[int]) -> List[dict]:
    """One confirmation trial's settings per finalist and seed (its config's CONFIRM entry),
    seed-major so that a budget cut short still leaves every finalist the same seeds."""
    return [{**{k: v for k, v in rec.config.items() if k != "seed"}, "seed": s, "of": rec.trial_id}
            for s in seeds for rec in finals]


def judge(ledger, finals: Sequence, seeds: Sequence[int], by: str = "") -> Verdict:
    """The confirmation's result from the ledger's confirmation records, each finalist's search
    run counted as one more seed where it trained its whole schedule (``whole_run``): its test
    figure and checkpoint are not the confirmation's, so it adds to the mean and the pairing only."""
    metric, mode = ledger.metric, ledger.mode
    by_id = {rec.trial_id: Finalist(rec.trial_id, dict(rec.hparams), rec.best.get(metric, math.nan))
             for rec in finals}

    def loss(rec):
        return late_mean(rec.losses) if by == LATE else rec.last.get("val_loss")

    for rec in finals:
        if rec.seed is not None:
            add_search_run(by_id[rec.trial_id], rec.status, rec.stop_reason, rec.seed, rec.last.get(metric),
                           loss(rec), mode)
    for rec in ledger.confirmations():
        f = by_id.get(rec.of or "")
        if f is not None and rec.seed is not None:
            add_run(f, rec.seed, rec.status, rec.last.get(metric), loss(rec),
                    rec.test.get(test_metric(metric)), mode, rec.trial_id)
    return verdict_of(list(by_id.values()), metric, mode, seeds, by)


def table(verdict: Verdict) -> str:
    """One row per finalist: the search's single look, the new seeds' mean, every seed's mean (the
    rank, over the seeds they share), spread and interval, and the test figure."""
    from tunesmith.orchestrator.tables import plain
    m = verdict.metric
    test_name = test_metric(m)
    keys = list(verdict.finalists[0].hparams) if verdict.finalists else []
    loss = [f"mean {verdict.by}"] if verdict.by else []
    head = ["rank", "finalist", f"search {m}", "new seeds", f"mean {m}", "sd", "95% interval", *loss,
            f"mean {test_name}", "seeds", *keys]
    rows = []
    for i, f in enumerate(verdict.finalists, 1):
        mean, half = f.mean, f.half
        lo, hi = within_range(mean - half, mean + half, m)
        interval = f"{lo:.4f} to {hi:.4f}" if math.isfinite(half) else "-"
        seeds = f"{len(f.by_seed)}" + (f" ({f.unfinished} cut short)" if f.unfinished else "")
        hp = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (f.hparams.get(k) for k in keys)]
        rows.append([str(i), f.trial_id, f"{f.search_value:.4f}", f"{f.new_mean:.4f}" if f.by_seed else "-",
                     f"{mean:.4f}" if f.by_seed else "-",
                     f"{f.sd:.4f}" if math.isfinite(f.sd) else "-", interval,
                     *([f"{f.loss:.4f}" if f.loss_by_seed else "-"] if loss else []),
                     f"{f.test:.4f}" if f.test_by_seed else "-", seeds, *hp])
    return plain(head, rows)


def kept_run(verdict: Verdict, ledger, have=None) -> Optional[str]:
    """The confirmation trial whose checkpoint is kept: the winner's seed with the best final
    value (its test figure is that model's own), among the runs in ``have`` (default: all)."""
    w = verdict.winner
    if w is None:
        return None
    sign = -1.0 if verdict.mode == "max" else 1.0
    done = [s for s in w.by_seed if math.isfinite(w.by_seed[s]) and s in w.runs
            and (have is None or w.runs[s] in have)]
    return w.runs[min(done, key=lambda s: sign * w.by_seed[s])] if done else None


def used_seeds(ledger) -> List[int]:
    return sorted({int(r.seed) for r in ledger.confirmations() if r.seed is not None})


def next_seeds(spec_seed: int, ledger, n: int) -> List[int]:
    """``n`` confirmation seeds none of the sweep's confirmations used yet."""
    used = used_seeds(ledger)
    start = max(used) + 1 if used else spec_seed + SEED_BASE
    return list(range(start, start + n))


def confirmed_finalists(ledger) -> list:
    """The search records the sweep's confirmation runs confirm, in the search's order."""
    confirmed = {r.of for r in ledger.confirmations()}
    return [r for r in ledger.ranked() if r.trial_id in confirmed]


def run_phase(spec, storage, cluster, callback, stopper, data_streams: bool = False,
              progress: bool = True, experiment: str = "_confirm") -> Optional[Verdict]:
    """The confirmation's Tune run, after the search's, in the same folder (``experiment``) and
    written by the search's ledger callback; None when the search left no finalist. Its seeds
    are new to the sweep (``analyze --confirm`` adds seeds to an earlier confirmation), and the
    verdict reads every confirmation run of the finalists."""
    from ray import tune
    from tunesmith.orchestrator.data_share import share
    from tunesmith.orchestrator.display import NoTrialLines
    from tunesmith.orchestrator.retention import Retention
    from tunesmith.orchestrator.tune_parts import (before_fit, concurrency_for, ddp_options,
                                                   trial_dirname, trial_resources)
    from tunesmith.trainables.tune_trainable import train_cnn

    finals = finalists(callback.ledger, spec.confirm.top, spec.confirm.rank_by)
    if not finals:
        return None
    concurrency = concurrency_for(spec, cluster)
    end, run_s = stopper.trials_deadline, None
    count, why = seeds_for(spec, callback.ledger, concurrency, end is not None, len(finals))
    seeds = next_seeds(spec.seed, callback.ledger, count)
    grid = points(finals, seeds)
    if progress:
        plural = "s" if len(seeds) > 1 else ""
        which = f"the {len(finals)} best configurations" if len(finals) > 1 else "the best configuration"
        pool = chosen_by_late(callback.ledger, spec.confirm.top) if spec.confirm.rank_by == LATE else 0
        if pool:
            which = (f"the {len(finals)} finalist{'s' if len(finals) > 1 else ''} (the lowest late val_loss "
                     f"among the search's {pool} best by {spec.metric})")
        print(f"confirm: {which} x {len(seeds)} new seed{plural} "
              f"({', '.join(map(str, seeds))}{'; ' + why if why else ''}), {spec.trainer.epochs} epochs each, {min(concurrency, len(grid))} "
              f"at a time, beside the search's own run of each where it trained its whole schedule; each new "
              "final model reads the test split once", flush=True)
    keep = spec.checkpoints.keep
    callback.retention = Retention("defer" if keep == "best" else keep, storage.fs)
    callback.hold_open = False
    if end is not None:   # each round of runs gets its share of the time left after the start-up
        import time
        from tunesmith.orchestrator.ledger import HOLD_START_S
        start = HOLD_START_S if callback.ledger.start_up is None else callback.ledger.start_up
        run_s = max(1.0, end - time.time() - start) / rounds_of(spec, concurrency, count)
    trainable = tune.with_parameters(train_cnn, base=spec.trial_config(), shared=share(spec.train.dataset, data_streams),
                                     checkpoint_every=spec.checkpoints.every, ddp=ddp_options(spec, storage),
                                     deadline=stopper.deadline, keeper=stopper.keeper, run_s=run_s)
    before_fit()
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(spec)),
        param_space={CONFIRM: tune.grid_search(grid)},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=1,
                                    max_concurrent_trials=concurrency, reuse_actors=True,   # Tune's generator, capped
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=experiment, storage_path=storage.path(spec.name),
            storage_filesystem=None if storage.is_local else storage.fs, verbose=0,
            callbacks=[callback, NoTrialLines()], stop=stopper,
            failure_config=tune.FailureConfig(max_failures=spec.checkpoints.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    stopper.fit(tuner)
    return settle(callback, finals, spec.confirm.rank_by)


def settle(callback, finals, by: str = "") -> Verdict:
    """The verdict over every confirmation run of ``finals`` (ranked by ``by``, confirm.rank_by),
    and the checkpoint kept."""
    verdict = judge(callback.ledger, finals, used_seeds(callback.ledger), by)
    settle_checkpoints(callback, verdict)
    return verdict


def settle_checkpoints(callback, verdict: Verdict) -> None:
    """The confirmed winner's checkpoint is the sweep's: its best seed's, among the runs whose
    checkpoints are still there; every other kept checkpoint goes (the other confirmation
    runs', and the search winner's, or an earlier confirmation's)."""
    from tunesmith.orchestrator.retention import KeptCheckpoint, delete_checkpoints
    retention, ledger = callback.retention, callback.ledger
    if retention.keep != "defer":
        return
    have = set(retention.candidates) | {t for t, r in ledger.trials.items() if r.checkpoint}
    kept = kept_run(verdict, ledger, have)
    retention.choose(kept, ledger)
    if kept is None or not ledger.trials[kept].checkpoint:
        return
    for rec in ledger.trials.values():
        if rec.checkpoint and rec.trial_id != kept:
            delete_checkpoints(KeptCheckpoint(rec.checkpoint, retention.filesystem))
            rec.checkpoint = None
    callback.mark_changed()


def summary(outcome) -> str:
    """The sweep's last lines on its finalists: the confirmation's table, the verdict between the
    first two, and the test figure; or why there is none, and what the search's figure is."""
    spec, verdict = outcome.spec, outcome.confirmed
    m = spec.metric
    looks = sum(r.epochs for r in outcome.ledger.ranked())
    if verdict is None:
        why = outcome.unconfirmed or "confirm.top is 0"
        tested = next((r for r in outcome.ledger.ranked()[:1] if r.test.get(test_metric(m)) is not None), None)
        if tested is not None:
            return (f"not confirmed over seeds ({why}): the best {m} above is the best of {looks} looks at the "
                    f"validation set, so it reads high\ntest: {test_metric(m)} {tested.test[test_metric(m)]:.4f} "
                    f"for the kept model ({tested.trial_id}'s final checkpoint), which read the test split once")
        return (f"not confirmed ({why}): the best {m} above is the best of {looks} looks at the validation set, "
                "so it reads high, and no test split was read")
    ranks = f"; {verdict.basis()}" if verdict.search_seeds else ""
    lines = [f"confirmation: final-epoch {m} of each finalist over {verdict.seeds_text()}{ranks}",
             table(verdict), verdict.text()]
    w = verdict.winner
    if w is None:
        lines.append("no confirmation run finished; the search's ranking stands")
        return "\n".join(lines)
    kept = next((r for r in outcome.ledger.confirmations() if r.of == w.trial_id and r.checkpoint), None)
    if w.test_by_seed:
        k, unit = verdict.scale()
        spread = (f" ± {mean_sd(list(w.test_by_seed.values()))[1] * k:.2f}{unit} sd"
                  if len(w.test_by_seed) > 1 else "")
        models = (f"the mean of {len(w.test_by_seed)} new final models, each of which" if len(w.test_by_seed) > 1
                  else "one new final model, which")
        lines.append(f"test: {test_metric(m)} {w.test:.4f}{spread} for {w.trial_id}'s settings, {models} read the "
                     f"test split once (the search's figure for them was {w.search_value:.4f})")
    else:
        lines.append(f"test: none (dataset.test_fraction is 0, or the runs were cut short): {w.mean:.4f} is a "
                     "validation figure")
    if kept is not None:
        lines.append(f"kept: {kept.trial_id}'s checkpoint (seed {kept.seed}) {kept.checkpoint}")
    return "\n".join(lines)
