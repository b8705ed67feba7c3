"""Confirming the finalists (#28), without Ray: which configurations are finalists, the
confirmation trials' configs, how the ledger records them, and the statistics of the verdict."""
import json
import math

import pytest

from tunesmith.orchestrator import confirm
from tunesmith.orchestrator.ledger import Ledger
from tunesmith.orchestrator.sinks.parquet import trials_table
from tunesmith.trainables.config import CONFIRM, unpack


def _ledger():
    return Ledger("s", ["lr", "model.width"], epochs=4, metric="val_acc", mode="max", seed=7)


def _run(ledger, tid, config, accs, losses=None, test=None):
    rec, _ = ledger.start(tid, config)
    for e, acc in enumerate(accs, 1):
        result = {"training_iteration": e, "val_acc": acc, "val_loss": (losses or [1.0] * len(accs))[e - 1]}
        if test is not None and e == len(accs):
            result.update(test_acc=test, test_loss=0.5)
        ledger.record(rec, result)
    ledger.finish(rec)
    return rec


def _search(ledger, epochs=3):
    """Four search trials; at ``epochs`` 3 of the ledger's 4 they are cut short (as ASHA or a
    budget cuts them), so the verdict reads the confirmation's runs alone."""
    _run(ledger, "a", {"lr": 0.1, "model.width": 32}, [0.5, 0.8, 0.9, 0.95][-epochs:])
    _run(ledger, "b", {"lr": 0.2, "model.width": 32}, [0.5, 0.8, 0.9, 0.94][-epochs:])
    _run(ledger, "c", {"lr": 0.1, "model.width": 32, "seed": 3}, [0.5, 0.8, 0.9, 0.93][-epochs:])   # a's again
    _run(ledger, "d", {"lr": 0.3, "model.width": 16}, [0.5, 0.6, 0.7, 0.80][-epochs:])


def test_finalists_are_the_best_distinct_settings_and_their_points_share_the_seeds():
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 3)
    assert [r.trial_id for r in finals] == ["a", "b", "d"]   # c repeats a's settings with another seed
    seeds = confirm.next_seeds(7, w, 2)   # none used yet: from spec.seed + SEED_BASE
    assert seeds == [1007, 1008]
    pts = confirm.points(finals, seeds)
    assert [(p["of"], p["seed"]) for p in pts] == [("a", 1007), ("b", 1007), ("d", 1007),
                                                    ("a", 1008), ("b", 1008), ("d", 1008)]
    assert pts[1] == {"lr": 0.2, "model.width": 32, "seed": 1007, "of": "b"}
    flat, of = unpack({CONFIRM: pts[1]})
    assert of == "b" and flat == {"lr": 0.2, "model.width": 32, "seed": 1007}
    assert unpack({"lr": 0.1}) == ({"lr": 0.1}, None)


def test_the_ledger_marks_confirmation_trials_and_ranks_the_search_alone():
    w = _ledger()
    _search(w)
    rec = _run(w, "x", {CONFIRM: {"lr": 0.3, "model.width": 16, "seed": 1007, "of": "d"}}, [0.9, 0.99, 0.99, 0.99],
               test=0.97)
    assert rec.phase == "confirm" and rec.of == "d" and rec.seed == 1007
    assert rec.hparams == {"lr": 0.3, "model.width": 16} and rec.test == {"test_acc": 0.97, "test_loss": 0.5}
    assert [r.trial_id for r in w.ranked()] == ["a", "b", "c", "d"]   # 0.99 is a confirmation's, not a search's
    assert w.top(1)[0].trial_id == "a" and w.confirmations() == [rec]
    assert w.trials["a"].seed == 7 and w.trials["c"].seed == 3 and w.trials["a"].test == {}
    table = trials_table(w).to_pylist()
    row = {r["trial_id"]: r for r in table}
    assert row["x"]["phase"] == "confirm" and row["x"]["confirms"] == "d" and row["x"]["seed"] == 1007
    assert row["x"]["test_acc"] == 0.97 and row["a"]["test_acc"] is None and row["a"]["phase"] == "search"
    # read back as a resume reads it
    again = _ledger()
    again.load(table, [], lambda r: __import__("json").loads(r["config"]))
    back = again.trials["x"]
    assert (back.phase, back.of, back.seed, back.test["test_acc"]) == ("confirm", "d", 1007, 0.97)
    assert again.trials["a"].phase == "search" and again.trials["c"].seed == 3
    # the driver died after the run's last epoch row, before trials.parquet's rewrite: the test
    # figure comes back from that row's extra metrics (in CI, a resumed confirmation lost it)
    stale = [{**r, "test_acc": None, "test_loss": None, "status": "running"} if r["trial_id"] == "x" else r
             for r in table]
    last = {"trial_id": "x", "epoch": 4, "timestamp": None, "time_total_s": None, "node_ip": None, "device": None,
            "val_acc": 0.99, "extra": [("test_acc", 0.97), ("test_loss", 0.5), ("epoch_seconds", 1.0)]}
    again = _ledger()
    again.load(stale, [last], lambda r: json.loads(r["config"]))
    assert again.trials["x"].test == {"test_acc": 0.97, "test_loss": 0.5}


def _confirmed(w, values):
    """values: {finalist: [(seed, final val_acc, val_loss, test_acc), ...]}"""
    for of, runs in values.items():
        for seed, acc, loss, test in runs:
            settings = {k: v for k, v in w.trials[of].config.items() if k != "seed"}
            _run(w, f"{of}-{seed}", {CONFIRM: {**settings, "seed": seed, "of": of}}, [acc] * 4, [loss] * 4, test)


def test_the_winner_is_the_best_mean_and_a_clear_difference_is_called():
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 0.90, 0.3, 0.89), (2, 0.91, 0.3, 0.90), (3, 0.92, 0.3, 0.91)],
                   "b": [(1, 0.95, 0.2, 0.94), (2, 0.955, 0.2, 0.95), (3, 0.97, 0.2, 0.96)]})
    v = confirm.judge(w, finals, [1, 2, 3])
    assert [f.trial_id for f in v.finalists] == ["b", "a"]   # the search's second has the better mean
    b = v.finalists[0]
    assert b.mean == pytest.approx((0.95 + 0.955 + 0.97) / 3) and b.test == pytest.approx(0.95)
    # the paired interval is scipy's for the paired differences
    from scipy import stats
    diffs = [0.05, 0.045, 0.05]
    ci = stats.ttest_rel([0.95, 0.955, 0.97], [0.90, 0.91, 0.92]).confidence_interval(0.95)
    assert v.diff == pytest.approx(sum(diffs) / 3)
    assert v.diff - v.half == pytest.approx(ci.low) and v.diff + v.half == pytest.approx(ci.high)
    assert v.separated and v.text().startswith("verdict: b is better than a by 4.83 points")
    one = stats.ttest_1samp([0.95, 0.955, 0.97], 0).confidence_interval(0.95)
    assert b.mean - b.half == pytest.approx(one.low)
    assert confirm.kept_run(v, w) == "b-3"   # the winner's seed with the best final value
    assert "b" in confirm.table(v) and v.to_dict()["finalists"][0]["trial"] == "b"


def test_differences_inside_the_noise_are_not_called_and_ties_go_to_the_lower_loss():
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 0.90, 0.30, 0.9), (2, 0.95, 0.30, 0.9)],
                   "b": [(1, 0.95, 0.20, 0.9), (2, 0.90, 0.20, 0.9)]})
    v = confirm.judge(w, finals, [1, 2])
    assert [f.trial_id for f in v.finalists] == ["b", "a"]   # equal means: b's lower validation loss
    assert not v.separated and "cannot tell b and a apart at this budget" in v.text()
    assert "noise floor" in v.text()


def test_seeds_that_agree_to_one_validation_image_get_the_roundings_spread_not_a_zero_width_interval():
    """On 30 validation images an accuracy moves in steps of 1/30, and two seeds often read the
    same: a fine-tuning sweep said "better by 36.67 points (95% interval +36.67 to +36.67)", and a
    finalist's interval was "0.8000 to 0.8000". The spread is at least the rounding's own."""
    from scipy import stats
    from tunesmith.orchestrator.verdict import floored, step_of
    assert step_of([24 / 30, 13 / 30, 26 / 30, 15 / 30], "val_acc") == pytest.approx(1 / 30)
    assert step_of([1.0, 1.0], "val_acc") == 0.0 and step_of([0.3], "val_loss") == 0.0   # nothing pins it
    assert floored(0.02, 1 / 30) == 0.02 and floored(0.0, 0.0) == 0.0   # a measured spread stands
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 13 / 30, 1.0, 0.4), (2, 13 / 30, 1.0, 0.5)], "b": [(1, 24 / 30, 0.5, 0.8), (2, 24 / 30, 0.5, 0.9)]})
    v = confirm.judge(w, finals, [1, 2])
    b, a = v.finalists
    t = stats.t.ppf(0.975, 1)
    assert b.sd == 0 and b.half == pytest.approx(t * (1 / 30) / math.sqrt(12) / math.sqrt(2))
    assert v.diff == pytest.approx(11 / 30) and v.half == pytest.approx(t * (1 / 30) / math.sqrt(6) / math.sqrt(2))
    assert v.separated and v.spread_floored
    assert "by 36.67 points (95% interval +24.44 to +48.89 points, paired over 2 seeds; the seeds agree to " \
           "within one validation image" in v.text()


def test_intervals_stay_within_what_an_accuracy_or_a_loss_can_be():
    """Two seeds far apart: the t interval on an accuracy's mean spans more than [0, 1], and on the
    paired difference more than 100 points. The table and the verdict cut them to what the metric
    can take; the verdict's call is the uncut interval's."""
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 0.30, 1.0, 0.3), (2, 0.60, 1.0, 0.6)], "b": [(1, 0.50, 1.0, 0.5), (2, 0.45, 1.0, 0.4)]})
    v = confirm.judge(w, finals, [1, 2])
    b, a = v.finalists
    assert (b.trial_id, a.trial_id) == ("b", "a")
    assert a.mean - a.half < 0 and a.mean + a.half > 1   # 0.45 +- 1.91: uncut, -1.46 to 2.36
    rows = {line.split()[1]: line for line in confirm.table(v).splitlines()[2:]}
    assert "0.0000 to 1.0000" in rows["a"], rows
    lo, hi = b.mean - b.half, b.mean + b.half            # 0.475 +- 0.32: inside, as it was
    assert 0 < lo < hi < 1 and f"{lo:.4f} to {hi:.4f}" in rows["b"]
    assert v.diff - v.half < -1 and v.diff + v.half > 1  # +2.5 points +- 222: uncut
    assert "+2.50 points (95% interval -100.00 to +100.00 points" in v.text() and not v.separated
    from tunesmith.orchestrator.verdict import within_range
    assert within_range(-0.2, 0.3, "val_loss") == (0.0, 0.3) and within_range(-0.2, 0.3, "val_loss", True) == (-0.2, 0.3)
    assert within_range(-0.2, 1.3, "val_acc") == (0.0, 1.0) and within_range(-1.5, 0.2, "val_acc", True) == (-1.0, 0.2)


def test_a_finalists_whole_search_run_is_one_more_paired_seed_but_not_its_test_figure_or_checkpoint():
    """Every search trial trains with the sweep's seed (7 here): a finalist's search run that
    trained its whole schedule is that seed's run of its settings, paired with the other
    finalist's, so one new seed gives each finalist two; a run fitted to the time budget, or cut
    short, does not count."""
    w = _ledger()
    _search(w, epochs=4)   # a: 0.95, b: 0.94 at their final epochs, both whole
    assert w.trials["a"].stop_reason == "trained all 4 epochs"
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1007, 0.90, 0.3, 0.89)], "b": [(1007, 0.96, 0.2, 0.95)]})
    v = confirm.judge(w, finals, [1007])
    assert [f.trial_id for f in v.finalists] == ["b", "a"]
    b, a = v.finalists
    assert b.by_seed == {7: 0.94, 1007: 0.96} and a.by_seed == {7: 0.95, 1007: 0.90}
    assert b.mean == pytest.approx(0.95) and b.test_by_seed == {1007: 0.95}   # the test split: new models only
    assert v.paired_n == 2 and v.diff == pytest.approx((-0.01 + 0.06) / 2)
    assert v.seeds == [7, 1007] and v.search_seeds == [7]
    assert v.seeds_text() == "seeds 7 (the search's own runs) and 1007 (new)"
    assert confirm.kept_run(v, w) == "b-1007"   # its search run has no checkpoint of the confirmation's
    assert v.to_dict()["seeds_text"] == v.seeds_text()
    # the mean over the seeds both share ranks them, the search's runs among them, so the first
    # is the one the paired difference favours even where the new seed alone favours the second
    w = _ledger()
    _search(w, epochs=4)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1007, 0.93, 0.3, 0.9)], "b": [(1007, 0.935, 0.3, 0.9)]})
    v = confirm.judge(w, finals, [1007])
    a, b = v.finalists
    assert (a.trial_id, a.mean, a.new_mean) == ("a", pytest.approx(0.94), 0.93) and b.mean == pytest.approx(0.9375)
    assert v.diff == pytest.approx((0.01 - 0.005) / 2) and not v.separated   # paired over both seeds
    assert "new seeds" in confirm.table(v).splitlines()[0] and v.to_dict()["finalists"][1]["new_mean"] == 0.935
    # a finalist whose search run does not count (cut by ASHA, fitted to the budget) is ranked
    # against the others over the new seeds alone: the seeds they share
    w = _ledger()
    _search(w, epochs=4)
    finals = confirm.finalists(w, 2)
    finals[0].stop_reason = "pruned by ASHA at epoch 2"
    finals[0].status = "pruned"
    _confirmed(w, {"a": [(1007, 0.93, 0.3, 0.9)], "b": [(1007, 0.935, 0.3, 0.9)]})
    v = confirm.judge(w, finals, [1007])
    assert [f.trial_id for f in v.finalists] == ["b", "a"] and v.finalists[0].mean == pytest.approx(0.9375)
    # and the last lines say which seeds ranked them
    from types import SimpleNamespace
    outcome = SimpleNamespace(spec=SimpleNamespace(metric="val_acc"), confirmed=v, ledger=w)
    assert "ranked by the mean val_acc over the seeds they share (not every finalist's search run trained" \
        in confirm.summary(outcome).splitlines()[0]
    w2 = _ledger()
    _search(w2, epochs=4)
    finals = confirm.finalists(w2, 2)
    _confirmed(w2, {"a": [(1007, 0.93, 0.3, 0.9)], "b": [(1007, 0.935, 0.3, 0.9)]})
    outcome = SimpleNamespace(spec=SimpleNamespace(metric="val_acc"), confirmed=confirm.judge(w2, finals, [1007]),
                              ledger=w2)
    assert confirm.summary(outcome).splitlines()[0].endswith(
        "ranked by the mean val_acc over the seeds they share, the search's own runs among them")
    # smith's report says the same of the same verdict (it once said "the new seeds' mean")
    from tunesmith.orchestrator.smith.report import _confirm_lines
    head = _confirm_lines(outcome.confirmed.to_dict(), "val_acc")[1]
    assert head == ("Confirmation: the finalists' final-epoch val_acc over seeds 7 (the search's own runs) and 1007 "
                    "(new); ranked by the mean val_acc over the seeds they share, the search's own runs among them, not by "
                    "the best single run.")
    # fitted to the time budget, a search run is no seed's whole run
    w = _ledger()
    _search(w, epochs=4)
    rec, _ = w.start("e", {"lr": 0.5, "model.width": 64})
    for e in (1, 2):
        w.record(rec, {"training_iteration": e, "val_acc": 0.99, "val_loss": 0.1, "schedule_epochs": 2})
    w.finish(rec)
    assert rec.status == "completed" and rec.stop_reason.startswith("annealed")
    finals = confirm.finalists(w, 2)
    assert [r.trial_id for r in finals] == ["e", "a"]
    _confirmed(w, {"e": [(1007, 0.90, 0.3, 0.89)], "a": [(1007, 0.91, 0.3, 0.9)]})
    v = confirm.judge(w, finals, [1007])
    assert {f.trial_id: sorted(f.by_seed) for f in v.finalists} == {"a": [7, 1007], "e": [1007]}
    assert v.paired_n == 1 and v.seeds == [7, 1007]


def test_a_diverged_seed_counts_against_its_configuration_and_one_seed_gives_no_interval():
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 0.99, 0.1, 0.98)], "b": [(1, 0.90, 0.3, 0.9)]})
    rec, _ = w.start("a-2", {CONFIRM: {"lr": 0.1, "model.width": 32, "seed": 2, "of": "a"}})
    w.record(rec, {"training_iteration": 1, "val_acc": math.nan, "diverged": True, "stop_reason": "diverged: nan"})
    w.finish(rec)
    v = confirm.judge(w, finals, [1, 2])
    a = next(f for f in v.finalists if f.trial_id == "a")
    assert a.by_seed[2] == -math.inf and v.finalists[0].trial_id == "b"
    assert math.isnan(v.finalists[0].half)
    assert "cannot tell b and a apart: 1 shared seed" in v.text()


def test_a_finalist_whose_runs_were_cut_short_is_named_in_the_verdict():
    """A confirmation stopped part-way (a full disk, Ctrl-C): it said "one finalist confirmed"."""
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    _confirmed(w, {"a": [(1, 0.95, 0.2, 0.94)]})
    rec, _ = w.start("b-1", {CONFIRM: {"lr": 0.2, "model.width": 32, "seed": 1, "of": "b"}})
    w.record(rec, {"training_iteration": 1, "val_acc": 0.5, "val_loss": 1.0})
    w.finish(rec, "", None, True, False)   # interrupted at epoch 1 of 4
    v = confirm.judge(w, finals, [1])
    assert v.text() == "verdict: nothing to compare a with: the runs of b were cut short"


def test_a_confirmation_the_time_left_cannot_fit_is_not_started_and_says_why():
    """Its runs fit their schedules to the time left, down to four fifths of their epochs; less
    than that, at the search's measured pace, and it is not started."""
    import time
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.ledger import hold_for_epochs
    from tunesmith.orchestrator.sweep import too_short_to_confirm
    spec = spec_mod.from_dict({"trainer": {"epochs": 10}})
    w = _ledger()
    _search(w)
    for rec in w.trials.values():
        rec.pace = 1.0   # seconds an epoch, report included
    w.start_up = 2.0
    need = hold_for_epochs(w, 8)
    assert need == pytest.approx(1.2 * (8 * 1.0 + 2.0) + 1.5)
    assert too_short_to_confirm(spec, w, None) == ""
    assert too_short_to_confirm(spec, w, time.time() + need + 5) == ""
    why = too_short_to_confirm(spec, w, time.time() + need - 3)
    assert "short of four fifths of one round of its runs (14s at the search's pace)" in why
    # where the two round to the same whole second, they are given to a tenth: not "13s were left,
    # short of ... (13s)"
    w.start_up = 2.25   # needs 13.8 s
    close = too_short_to_confirm(spec, w, time.time() + hold_for_epochs(w, 8) - 0.2)
    assert close.startswith("13.") and "s of the time budget" in close and "(13.8s at the search's pace)" in close, close
    w.start_up = 2.0
    # what is held for after it (smith's stage 3) is not the confirmation's
    assert "short of" in too_short_to_confirm(spec, w, time.time() + need + 5, after=lambda: 10.0)


def test_auto_seeds_take_two_where_they_fit_in_a_round_or_the_searchs_share_else_one():
    """confirm.seeds "auto" (the default): two new seeds where they cost no more rounds than one,
    or, without a budget, where all their rounds fit in SHARE of the search's wall time at its
    pace; else one. A number is taken as given, and a budget's hold counts one seed's rounds."""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.confirm import SHARE, rounds_of, seeds_for
    auto = spec_mod.from_dict({"trainer": {"epochs": 4}, "confirm": {"top": 2}})
    assert auto.confirm.seeds == "auto" and rounds_of(auto, 2) == 1 and rounds_of(auto, 2, 2) == 2
    w = _ledger()
    _search(w, epochs=4)
    for rec in w.trials.values():
        rec.pace, rec.started_at, rec.ended_at = 1.0, 1000.0, 1000.0 + 10
    w.start_up = 2.0
    assert seeds_for(auto, w, 4, budgeted=True) == (2, "auto: 2 fit in the workers of one round")
    assert seeds_for(auto, w, 2, budgeted=True)[0] == 1
    need = 2 * 4 * 1.0 + 2.0   # two rounds of 4 epochs at the search's pace, after its start-up
    count, why = seeds_for(auto, w, 2, budgeted=False)   # a 10 s search: two rounds are too dear
    assert count == 1 and why == f"auto: 1, as 2 would take about {need:.0f}s, more than 30% of the search's 10s"
    w.trials["d"].ended_at = 1000.0 + need / SHARE + 1   # a longer search affords them
    assert seeds_for(auto, w, 2, budgeted=False) == (2, f"auto: 2 fit in 30% of the search's {need / SHARE + 1:.0f}s")
    # a resumed search: the hours between its interruption and its resume are not its time
    w.trials["d"].started_at, w.trials["d"].ended_at = 5000.0, 5010.0
    assert seeds_for(auto, w, 2, budgeted=False)[1].endswith("of the search's 20s")
    assert confirm.busy_seconds([(0, 4), (1, 3), (2, 6), (10, 11)]) == 7 and confirm.busy_seconds([]) == 0
    given = spec_mod.from_dict({"trainer": {"epochs": 4}, "confirm": {"top": 2, "seeds": 3}})
    assert seeds_for(given, w, 2, budgeted=False) == (3, "") and rounds_of(given, 2) == 3


def test_under_a_time_budget_the_confirmation_takes_at_most_its_share_or_nothing():
    """The search keeps the confirmation's whole schedule where that fits in SHARE of the
    budget; else SHARE, where four fifths of each round's runs fit in it; else nothing, and the
    last lines say why (on 64-px colour data at 90 s a full-length hold-back left the search
    no time, and on shapes runs fitted to a third of their schedules read 14 points low)."""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.confirm import SHARE, budget_hold, least_needed, rounds_of, unaffordable
    from tunesmith.orchestrator.ledger import HOLD_WIND_DOWN_S, hold_for_epochs
    spec = spec_mod.from_dict({"trainer": {"epochs": 10}, "confirm": {"top": 2, "seeds": 2}})
    assert rounds_of(spec, 2) == 2 and rounds_of(spec, 4) == 1 and rounds_of(spec, 3) == 2
    w = _ledger()
    _search(w)
    assert budget_hold(w, spec, 2, 100.0) == 0.0 and unaffordable(w, spec, 2, 100.0) == ""   # nothing measured
    for rec in w.trials.values():
        rec.pace = 1.0
    w.start_up = 2.0
    full = hold_for_epochs(w, 20)
    least = least_needed(w, spec, 2)
    assert least == pytest.approx(1.2 * (2 * 8 * 1.0 + 2.0) + 1.5)
    least += HOLD_WIND_DOWN_S   # held before the search ends: its wind-down too
    assert full > least         # the whole schedule's last fifth covers it
    assert budget_hold(w, spec, 2, full / SHARE + 1) == pytest.approx(full)        # all of it fits
    between = (least + full) / 2 / SHARE
    assert budget_hold(w, spec, 2, between) == pytest.approx(SHARE * between)      # its share
    assert unaffordable(w, spec, 2, between) == ""
    assert budget_hold(w, spec, 2, least / SHARE - 1) == 0.0                        # not even four fifths
    why = unaffordable(w, spec, 2, least / SHARE - 1)
    assert f"about {least:.0f}s at the search's pace" in why and "the search kept the whole budget" in why


def test_a_hold_dropped_as_unaffordable_is_the_reason_given_not_the_second_it_left():
    """smith at 60 s on 600 glyphs of 12 epochs: the hold's least need outgrew its share, the
    stopper dropped it, the search ran on to 1 s left, and the last lines said "1s were left,
    short of ... (13s)" as if the hold had been too small. Where the search ended early with time
    to spare, the confirmation still starts."""
    import time
    from types import SimpleNamespace
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.confirm import SHARE, least_needed
    from tunesmith.orchestrator.sweep import why_unconfirmed
    spec = spec_mod.from_dict({"trainer": {"epochs": 10}})
    w = _ledger()
    _search(w)
    for rec in w.trials.values():
        rec.pace = 1.0
    w.start_up = 2.0
    least = least_needed(w, spec, 1)
    now, stopper = time.time(), SimpleNamespace(release_hold=lambda after: True)
    budget = least / SHARE - 5   # its share cannot hold four fifths of the runs
    why = why_unconfirmed(spec, w, stopper, now + 1, budget, None, 1)
    assert "more than its share of the time budget" in why and "the search kept the whole budget" in why
    assert why_unconfirmed(spec, w, stopper, now + least + 5, budget, None, 1) == ""
    held = least / SHARE + 20    # affordable, and the search left too little: that is the reason
    assert "s of the time budget were left" in why_unconfirmed(spec, w, stopper, now + 1, held, None, 1)
    out = SimpleNamespace(release_hold=lambda after: False)
    assert why_unconfirmed(spec, w, out, now, held, None, 1) == "the time budget ran out in the search"

def test_a_confirmation_run_fits_to_its_rounds_share_and_to_the_sweeps_deadline():
    import time
    from tunesmith.trainables.tune_trainable import own_deadline
    now = time.time()
    assert own_deadline(now + 50, None, None) == (now + 50, None)
    deadline, reader = own_deadline(now + 50, lambda: now + 40, 10.0)
    assert deadline == pytest.approx(now + 10, abs=1) and reader() == pytest.approx(now + 10, abs=1)
    deadline, reader = own_deadline(now + 50, lambda: now + 5, 10.0)
    assert reader() == pytest.approx(now + 5)                     # the sweep's moved earlier
    deadline, reader = own_deadline(None, None, 10.0)
    assert deadline == pytest.approx(now + 10, abs=1) and reader is None
    _, reader = own_deadline(now + 50, lambda: None, 10.0)
    assert reader() is None                                        # the keeper did not answer: keep the last


def test_smiths_report_says_why_stage_2_was_not_confirmed_and_gives_the_kept_models_test_figure():
    from tunesmith.orchestrator.smith.report import _stage2_lines
    run = {"name": "s2", "trials": 3, "epochs": 10, "status": {"completed": 3}, "seconds": 80.0,
           "lr_range": [0.01, 0.3], "lr_basis": "a decade either side", "rung_epochs": [3],
           "ranked_at_epoch": 3, "momentum_ranking": [], "weight_decay_ranking": [], "best": 0.61,
           "best_config": {"lr": 0.1}, "best_trial": "t1", "best_epoch": 9, "sweep": "/r/s2", "confirmed": None,
           "unconfirmed": "it would need about 120s at the search's pace", "kept_test": {"test_acc": 0.5912,
                                                                                        "test_loss": 1.2}}
    text = "\n".join(_stage2_lines(run, "val_acc"))
    assert ("Not confirmed over seeds: it would need about 120s at the search's pace; the kept model read the "
            "test split once: test_acc 0.5912.") in text


def test_the_finalists_are_ranked_by_their_mean_validation_loss_and_the_verdict_compares_it():
    from tunesmith.orchestrator.verdict import Finalist, add_run, verdict_of

    def pair(diverged=False):
        # a reads the higher accuracy on seeds 1 and 2 (by one image in a hundred), b the lower loss on all three
        a, b = Finalist("a", {}, 0.95), Finalist("b", {}, 0.94)
        for seed, (acc_a, loss_a, acc_b, loss_b) in {1: (0.92, 0.30, 0.91, 0.26), 2: (0.93, 0.29, 0.92, 0.27),
                                                     3: (0.92, 0.31, 0.92, 0.25)}.items():
            add_run(a, seed, "completed", acc_a, loss_a, acc_a - 0.01, "max")
            add_run(b, seed, "completed", acc_b, loss_b, acc_b, "max")
        if diverged:
            add_run(b, 4, "diverged", None, None, None, "max")
            add_run(a, 4, "completed", 0.92, 0.30, 0.91, "max")
        return [a, b]

    v = verdict_of(pair(), "val_acc", "max", [1, 2, 3], "val_loss")
    assert [f.trial_id for f in v.finalists] == ["b", "a"] and v.ranked == "val_loss"
    # paired over three seeds, a's loss minus b's: .04, .02, .06 (mean .04, sd .02); t(2) half-width 4.303 x .02 / sqrt(3)
    assert v.diff == pytest.approx(0.04) and v.half == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-3)
    assert not v.separated and ("cannot tell b and a apart at this budget: +0.0400 val_loss (95% interval -0.0097 "
                                "to +0.0897 val_loss, paired over 3 seeds; val_acc -0.67 points on the same seeds)") in v.text()
    assert "ranked by the mean val_loss over the new seeds" == v.basis()
    d = v.to_dict()
    assert d["ranked_by"] == "val_loss" and d["finalists"][0]["mean_val_loss"] == pytest.approx(0.26)
    head, _, first = confirm.table(v).splitlines()[:3]
    assert "mean val_loss" in head and "0.2600" in first and first.split()[1] == "b"
    from tunesmith.orchestrator.smith.report import _confirm_lines
    lines = _confirm_lines(d, "val_acc")
    assert "ranked by the mean val_loss over the new seeds, not by the best single run" in lines[1]
    assert lines[2].startswith("- trial b: search 0.94, mean 0.9167") and ", mean val_loss 0.2600, test" in lines[2]
    # the metric as the ranking, as confirm.rank_by metric gives it: a's mean accuracy is higher
    m = verdict_of(pair(), "val_acc", "max", [1, 2, 3])
    assert [f.trial_id for f in m.finalists] == ["a", "b"] and m.ranked == "val_acc"
    assert m.diff == pytest.approx(0.02 / 3) and "mean val_loss" not in confirm.table(m)
    # a seed b diverged on counts against it in the loss too
    assert [f.trial_id for f in verdict_of(pair(True), "val_acc", "max", [1, 2, 3, 4], "val_loss").finalists] == ["a", "b"]
    # equal mean losses: the metric breaks the tie
    a, b = Finalist("a", {}, 0.9), Finalist("b", {}, 0.9)
    add_run(a, 1, "completed", 0.90, 0.3, 0.9, "max")
    add_run(b, 1, "completed", 0.91, 0.3, 0.9, "max")
    assert verdict_of([a, b], "val_acc", "max", [1], "val_loss").finalists[0].trial_id == "b"
    # a sweep whose metric is the loss already ranks by it, and says so as the metric
    assert verdict_of(pair(), "val_loss", "min", [1, 2, 3], "val_loss").by == ""


def test_a_sweep_written_before_confirm_rank_by_goes_on_ranking_by_its_metric(tmp_path):
    """`resume` and `analyze --confirm` read a sweep's spec.yaml, which holds every key as it was
    written: one without confirm.rank_by ranked its finalists by the metric, and so do its later
    confirmations, as `analyze` reads them back."""
    import yaml
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator import analyze
    from tunesmith.orchestrator.manifest import read_sweep
    from tunesmith.orchestrator.spec import from_dict
    root = tmp_path / "sw"
    root.mkdir()
    (root / "manifest.json").write_text("{}")
    full = from_dict({"name": "sw"}).to_dict()
    assert full["confirm"]["rank_by"] == "late_val_loss"
    for confirm, expected in (({"top": 2, "seeds": "auto"}, "metric"), (full["confirm"], "late_val_loss"),
                              ({**full["confirm"], "rank_by": "val_loss"}, "val_loss"),
                              ({**full["confirm"], "rank_by": "metric"}, "metric")):
        (root / "spec.yaml").write_text(yaml.safe_dump({**full, "confirm": confirm}))
        assert read_sweep(Storage(str(tmp_path)), "sw", "--confirm", str(root))[1].confirm.rank_by == expected
        assert analyze._metric_of(Storage(str(tmp_path)), "sw")[2] == ("" if expected == "metric" else expected)


def test_the_late_epochs_mean_is_the_last_half_of_a_runs_epochs_and_an_unfinite_one_counts_against_it():
    from tunesmith.orchestrator.verdict import late_mean
    assert late_mean({1: 0.9, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.2, 6: 0.1}) == pytest.approx(0.2)   # epochs 4 to 6
    assert late_mean({3: 0.4, 1: 0.9, 2: 0.5}) == pytest.approx(0.45)   # the last two of three, by epoch
    assert late_mean({1: 0.7}) == pytest.approx(0.7)
    assert late_mean({1: 0.3, 2: math.nan}) == math.inf and late_mean({1: 0.3, 2: None}) == math.inf
    assert late_mean({}) is None


def test_the_finalists_are_ranked_by_their_late_validation_loss_by_default():
    """A finalist whose final epoch read the lower loss on every seed, but whose late epochs read
    higher, ranks second under the default (each run's late epochs' mean), first by the final
    epoch's loss (confirm.rank_by val_loss); the verdict and the table say which."""
    from tunesmith.orchestrator.spec import ConfirmSpec
    assert ConfirmSpec().rank_by == "late_val_loss"
    w = _ledger()
    _search(w)
    finals = confirm.finalists(w, 2)
    curves = {"a": [0.9, 0.6, 0.40, 0.30], "b": [0.9, 0.5, 0.32, 0.31]}   # late (epochs 3, 4): a .35, b .315
    for of, losses in curves.items():
        for seed in (1, 2):
            settings = {k: v for k, v in w.trials[of].config.items() if k != "seed"}
            _run(w, f"{of}-{seed}", {CONFIRM: {**settings, "seed": seed, "of": of}}, [0.9] * 4,
                 [x + 0.01 * seed for x in losses], 0.9)
    late = confirm.judge(w, finals, [1, 2], "late_val_loss")
    assert [f.trial_id for f in late.finalists] == ["b", "a"] and late.ranked == "late_val_loss"
    assert late.finalists[0].loss == pytest.approx(0.315 + 0.015)
    assert late.diff == pytest.approx(0.035) and "+0.0350 late_val_loss" in late.text()
    assert "ranked by the mean late_val_loss (val_loss over each run's second half) over" in late.basis()
    assert "mean late_val_loss" in confirm.table(late).splitlines()[0]
    final = confirm.judge(w, finals, [1, 2], "val_loss")
    assert [f.trial_id for f in final.finalists] == ["a", "b"] and final.diff == pytest.approx(0.01)
    # a resumed sweep rebuilds each record's epochs from its rows: the same late mean
    again = _ledger()
    again.load([], [{"trial_id": "a-1", "epoch": e, "val_loss": v, "val_acc": 0.9, "timestamp": None,
                      "time_total_s": None, "node_ip": None, "device": None} for e, v in enumerate(curves["a"], 1)],
               lambda row: {})
    assert again.trials["a-1"].losses == dict(enumerate(curves["a"], 1))


def test_late_val_loss_chooses_the_finalists_among_the_metrics_best_few_by_their_whole_runs_late_loss():
    """Under confirm.rank_by late_val_loss the finalists are the top whose whole search runs read
    the lowest late val_loss among the search's best by the metric: POOL x top of them, at most its
    top fifth. Where one of those was cut short (or fitted to a time budget), the late losses do not
    compare: the metric's top. The metric's order under the other rankings; what lies past the pool
    is never chosen; a search too small for a pool wider than the finalists keeps the metric's top."""
    from tunesmith.orchestrator.verdict import LATE, POOL, choose, pool_size
    assert POOL == 3 and pool_size(32, 2) == 6 and pool_size(10, 2) == 2 and pool_size(4, 2) == 2
    assert pool_size(20, 2) == 4 and pool_size(100, 1) == 3
    w = _ledger()
    losses = {"a": [0.9, 0.8, 0.70, 0.70], "b": [0.9, 0.6, 0.40, 0.40], "c": [0.9, 0.7, 0.50, 0.50],
              "d": [0.9, 0.5, 0.30, 0.30], "e": [0.9, 0.4, 0.60, 0.60], "f": [0.9, 0.6, 0.55, 0.55],
              "g": [0.9, 0.1, 0.10, 0.10]}
    accs = {"a": 0.99, "b": 0.98, "c": 0.97, "d": 0.96, "e": 0.95, "f": 0.94, "g": 0.90}
    for i, (tid, curve) in enumerate(losses.items()):
        _run(w, tid, {"lr": 0.1 * (i + 1), "model.width": 32}, [0.5, 0.6, 0.7, accs[tid]], curve)
    # seven runs: no pool wider than two, so the metric's top, and the progress line names no pool
    assert [r.trial_id for r in confirm.finalists(w, 2, LATE)] == ["a", "b"] and confirm.chosen_by_late(w, 2) == 0
    for i in range(23):   # a search of thirty: chance-level runs with the lowest loss of all, past the pool
        _run(w, f"z{i}", {"lr": 1e-5 * (i + 1), "model.width": 8}, [0.1] * 4, [0.05] * 4)
    for rec in w.trials.values():
        assert rec.stop_reason.startswith("trained all"), rec.stop_reason
    assert [r.trial_id for r in confirm.finalists(w, 2)] == ["a", "b"]
    assert [r.trial_id for r in confirm.finalists(w, 2, "val_loss")] == ["a", "b"]
    # the pool is a..f (g, the lowest loss of the seven, lies past it)
    assert [r.trial_id for r in confirm.finalists(w, 2, LATE)] == ["d", "b"] and confirm.chosen_by_late(w, 2) == 6
    assert [r.trial_id for r in confirm.finalists(w, 1, LATE)] == ["b"]   # the pool: a, b, c
    assert [r.trial_id for r in confirm.finalists(w, 3, LATE)] == ["d", "b", "c"]   # the top fifth: a..f
    w.trials["d"].stop_reason = "pruned at epoch 2"   # cut short: its late loss does not compare
    assert [r.trial_id for r in confirm.finalists(w, 2, LATE)] == ["a", "b"] and confirm.chosen_by_late(w, 2) == 0
    # a diverged late epoch is a late loss that reads worst
    assert choose(["x", "y", "z"], {"x": math.inf, "y": 0.7, "z": 0.5}.get, 2) == ["z", "y"]
    assert choose(["x", "y", "z"], {"x": math.inf, "y": math.nan, "z": 0.5}.get, 2) == ["z", "x"]
