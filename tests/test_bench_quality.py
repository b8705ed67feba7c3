"""bench/quality.py's judgement by the test split (#28): smith against each contender, paired
seed by seed over the seeds both read a test figure for."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(name):
    """A bench script as a module (bench/ is no package)."""
    import importlib
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _quality():
    return _bench("quality")


def _row(contender, tests):
    # (dataset, budget, repeats, contender, best, first, reached, behind, each val, each test)
    return ("shapes", 90, len(tests), contender, 0.0, None, 0, 0.0, [0.5] * len(tests), tests)


def test_the_test_split_pairs_only_the_seeds_both_read():
    quality = _quality()
    rows = [_row("smith", [0.60, None, 0.56, 0.58]), _row("random", [0.61, 0.50, None, 0.55]),
            _row("tpe", [None, 0.52, 0.50, None]), _row("smith-scratch", [0.10, 0.10, 0.10, 0.10])]
    lines = quality._paired_tests(rows, "shapes")
    # random shares seeds 0 and 3 with smith: -1 and +3 points, so +1.0 on average over 2 seeds;
    # tpe shares one seed (no interval) and smith from scratch is no contender
    assert len(lines) == 1
    assert "smith - random" in lines[0] and "+1.0 pp" in lines[0] and "over 2 seeds" in lines[0]
    assert "cannot tell" in lines[0]


def test_the_tests_line_prints_the_pairs_beside_the_medians(capsys):
    quality = _quality()
    rows = [_row("smith", [0.6078, 0.5056, 0.5533]), _row("random", [0.6044, 0.5100, 0.5600])]
    quality._print_tests(rows, ["shapes"], True)
    out = capsys.readouterr().out
    assert "shapes   smith - random           -0.3 pp" in out
    assert "worst gap 0.7 pp: NOT met" in out


def _confirm():
    return _bench("confirm")


def _runs(test_by_config, val_by_config=None):
    """(configuration, seed, val_acc, val_loss, test_acc) rows; val_acc is the test figure unless given."""
    val_by_config = val_by_config or {}
    return [(c, s, val_by_config.get(c, {}).get(s, v), 0.5, v)
            for c, seeds in test_by_config.items() for s, v in seeds.items()]


def test_the_truths_own_noise_judges_each_pick_on_the_seeds_it_did_not_read():
    confirm = _confirm()
    # b is truly better by 1 point on every seed; the single run picked a. Seed 4 is missing for
    # c, so only seeds 1 to 3 are shared: three splits, each holding 2 seeds, judged on the third
    runs = _runs({"a": {s: 0.90 for s in (1, 2, 3, 4)}, "b": {s: 0.91 for s in (1, 2, 3, 4)},
                  "c": {1: 0.80, 2: 0.80, 3: 0.99}})
    single, oracle = confirm.split_half(iter(runs), "a")   # the bench passes columns zipped
    # judged on seed 3, c is best (0.99), and the oracle (b, by seeds 1 and 2) is 8 points off it;
    # judged on seed 1 or 2, b is best and the oracle picks it (c's mean with seed 3 is 0.895)
    assert abs(oracle - 0.08 / 3) < 1e-9
    assert abs(single - (0.09 + 0.01 + 0.01) / 3) < 1e-9
    assert confirm.split_half(runs, "missing") is None
    assert confirm.split_half(_runs({"a": {1: 0.9, 2: 0.9}}), "a") is None


def test_the_best_truths_bias_is_none_where_one_configuration_is_far_ahead_and_real_among_ties():
    confirm = _confirm()
    # a leads by 10 points on every seed, whatever the seed's noise: resampling never changes the
    # best, so the bias is nil (but for the draws' noise); shuffled among ties, the same noise reads a regret above nil
    noise = {1: 0.02, 2: -0.01, 3: 0.0, 4: -0.02, 5: 0.01}
    ahead = _runs({"a": {s: 0.90 + n for s, n in noise.items()}, "b": {s: 0.80 - n for s, n in noise.items()},
                   "c": {s: 0.80 + n for s, n in noise.items()}})
    bias, ties, at_random = confirm.truth_bias(ahead)
    assert abs(bias) < 0.001 and ties > 0.001   # the draws' own noise only
    assert abs(at_random - (0.90 - (0.90 + 0.80 + 0.80) / 3)) < 1e-9
    # two configurations alike but for the seeds' noise, in opposite directions: the best truth
    # (their mean, .90) sits below the mean of the best resampled truth
    tied = _runs({"a": {s: 0.90 + n for s, n in noise.items()}, "b": {s: 0.90 - n for s, n in noise.items()}})
    bias, ties, _ = confirm.truth_bias(tied)
    assert bias > 0.001 and ties > 0.001
    assert confirm.truth_bias(_runs({"a": {1: 0.9}, "b": {1: 0.8}})) is None


def test_the_held_out_confirmation_ranks_the_finalists_by_the_held_seed_only():
    confirm = _confirm()
    # the search ranked a, b, c; finalists a and b. b is truly best; the held seed's val_acc favours
    # b on seeds 1 and 2 and a on seed 3 (where a's validation reads high and its test does not)
    test = {"a": {1: 0.90, 2: 0.90, 3: 0.90}, "b": {1: 0.92, 2: 0.92, 3: 0.92}, "c": {1: 0.95, 2: 0.80, 3: 0.80}}
    val = {"a": {3: 0.99}}
    single, confirmed, floor, optimism = confirm.held_out(_runs(test, val), ["a", "b", "c"], top=2, seeds=1)
    confirmed_alone = confirmed
    assert abs(optimism) < 1e-9   # each configuration reads the same test figure on every seed
    # holding seed 1: truths a .90, b .92, c .80 -> best b; seed 2: a .90, b .92, c .875 -> b;
    # seed 3: a .90, b .92, c .875 -> b. Single (a) is 2 points off each time; the confirmation
    # picks b twice and a once; the truest finalist is b each time
    assert abs(single - 0.02) < 1e-9
    assert abs(confirmed - 0.02 / 3) < 1e-9
    assert abs(floor) < 1e-9
    # with the search's own whole runs, the confirmation ranks by the mean over both: a's search run
    # (0.80) outweighs its high held seed 3, so b is picked every time
    single, confirmed, _, _ = confirm.held_out(_runs(test, val), ["a", "b", "c"], top=2, seeds=1,
                                              own={"a": (0.80, 0.5), "b": (0.92, 0.5)})
    assert abs(single - 0.02) < 1e-9 and abs(confirmed) < 1e-9
    # where a finalist has no whole run of its own, the new seeds alone rank them (the seeds they share)
    assert confirm.held_out(_runs(test, val), ["a", "b", "c"], top=2, seeds=1, own={"a": (0.80, 0.5)})[1] \
        == confirmed_alone
    # the winner's test figure on the held seed against its truth on the others: b is picked where
    # its held seed reads 0.95 (truth 0.85: +10 points), a where b's reads 0.85 (a: 0), +5 on average
    assert abs(confirm.held_out(_runs({"a": {1: 0.90, 2: 0.90}, "b": {1: 0.95, 2: 0.85}}), ["a", "b"], top=2,
                                seeds=1)[3] - 0.05) < 1e-9
    # the single pick unmeasured: no figure rather than a wrong one
    assert confirm.held_out(_runs(test, val), ["z", "a", "b"], top=2, seeds=1) is None


def test_the_held_out_confirmation_ranks_by_the_validation_loss_or_the_accuracy_as_asked():
    confirm = _confirm()
    # b is truly better by a point; every held seed reads a's accuracy higher and b's loss lower
    runs = [(c, s, va, vl, te) for s in (1, 2, 3)
            for c, va, vl, te in (("a", 0.93, 0.30, 0.90), ("b", 0.92, 0.25, 0.91))]
    by_loss = confirm.held_out(runs, ["a", "b"], top=2, seeds=1)
    by_acc = confirm.held_out(runs, ["a", "b"], top=2, seeds=1, by="")
    assert by_loss[0] == pytest.approx(0.01) and by_loss[1] == pytest.approx(0.0)
    assert by_acc[1] == pytest.approx(0.01)


def test_the_test_read_ranking_reads_the_held_seeds_test_figures_in_place_of_the_validation():
    confirm = _confirm()
    # b is truly better by a point; every seed's validation reads a higher, its test figures b
    runs = [(c, s, va, vl, te, tl) for s in (1, 2, 3)
            for c, va, vl, te, tl in (("a", 0.95, 0.20, 0.90, 0.40), ("b", 0.92, 0.30, 0.91, 0.35))]
    assert confirm.held_out(runs, ["a", "b"], top=2, seeds=1)[1] == pytest.approx(0.01)
    by_acc, by_loss = confirm.test_read(runs, ["a", "b"], top=2, seeds=1)
    assert by_acc == pytest.approx(0.0) and by_loss == pytest.approx(0.0)
    # a test loss that points the wrong way is read as such; without the sixth field, no figure
    flipped = [(c, s, va, vl, te, 0.30 if c == "a" else 0.40) for c, s, va, vl, te, _ in runs]
    assert confirm.test_read(flipped, ["a", "b"], top=2, seeds=1)[1] == pytest.approx(0.01)
    assert confirm.test_read([r[:5] for r in runs], ["a", "b"], top=2, seeds=1)[1] is None
    # the single pick unmeasured: no figure
    assert confirm.test_read(runs, ["z", "a"], top=2, seeds=1) is None


def _kept(folder, seeds=(1, 2, 3)):
    """A folder as --keep leaves it: the search's rows (a ranked first, then b, then c) and the
    confirmation's: the finalists on the sweep's new seed 100, every configuration on the truth
    seeds; and every run's epoch rows. b is truly best; each seed's final val_loss reads a lower,
    its late epochs b."""
    import pandas as pd
    rows, epochs = [], []
    for c, acc in (("a", 0.95), ("b", 0.94), ("c", 0.90)):
        rows.append(dict(phase="search", trial_id=c, status="completed", stop_reason="trained all 4 epochs",
                         best_val_acc=acc, best_val_loss=0.3, last_val_acc=acc, last_val_loss=0.3, confirms=None,
                         seed=0, test_acc=float("nan"), test_loss=float("nan")))
        epochs += [dict(trial_id=c, epoch=e, val_loss=v) for e, v in enumerate((0.9, 0.5, 0.3, 0.3), 1)]
    truth = {"a": 0.90, "b": 0.92, "c": 0.88}
    curve = {"a": (0.9, 0.6, 0.5, 0.2), "b": (0.9, 0.5, 0.3, 0.25), "c": (0.9, 0.7, 0.6, 0.5)}
    for seed, configs in [(100, "ab")] + [(s, "abc") for s in seeds]:
        for c in configs:
            rows.append(dict(phase="confirm", trial_id=f"{c}{seed}", status="completed",
                             stop_reason="trained all 4 epochs", best_val_acc=truth[c], best_val_loss=curve[c][-1],
                             last_val_acc=truth[c], last_val_loss=curve[c][-1], confirms=c, seed=seed,
                             test_acc=truth[c], test_loss=1 - truth[c]))
            epochs += [dict(trial_id=f"{c}{seed}", epoch=e, val_loss=v) for e, v in enumerate(curve[c], 1)]
    os.makedirs(os.path.join(folder, "epochs"))
    pd.DataFrame(rows).to_parquet(os.path.join(folder, "trials.parquet"))
    pd.DataFrame(epochs).to_parquet(os.path.join(folder, "epochs", "part-0.parquet"))


def test_the_kept_sweeps_are_read_again_pooled_for_each_count_of_new_seeds(tmp_path, capsys):
    confirm = _confirm()
    _kept(str(tmp_path / "shapes-0"))
    assert confirm.main(["--read", str(tmp_path / "shapes-0"), "--most", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines if line.strip()[:1].isdigit()]
    # truth seeds 1 to 3 (seed 100 ran only the finalists): 1 or 2 held, judged on the rest; 3 leaves
    # none to judge on. Single-run picked a, 2 points below b. The late val_loss (the default), the
    # accuracy and the test-read rankings pick b; the final epoch's val_loss picks a
    assert [row[:2] for row in table] == [["1", "1"], ["2", "1"]]
    # single, confirmed (late val_loss), the same of the metric's finalists (here the same two: the
    # search runs' late losses tie), by final val_loss, by val_acc, new seeds alone, by test_acc, by
    # test_loss, the truest finalist
    assert table[0][2:11] == ["2.00pp", "0.00pp", "0.00pp", "2.00pp", "0.00pp", "0.00pp", "0.00pp", "0.00pp",
                              "0.00pp"]
    assert "by final val_loss" in lines[1] and "the metric's finalists" in lines[1]
    assert "ranked by late val_loss" in lines[0]
    with pytest.raises(SystemExit, match="--read = .*no trials.parquet"):
        confirm.main(["--read", str(tmp_path / "missing")])
    # a sweep's own reading, as one run of the bench takes it: the truth runs on the seeds outside
    # its confirmation's, each with its late val_loss from the epoch rows; the truths their test means
    import pandas as pd
    folder = tmp_path / "shapes-0"
    _, ranked, runs, whole = confirm.sweep_runs(pd.read_parquet(folder / "trials.parquet"), {100},
                                                confirm.read_epochs(str(folder)))
    assert list(ranked.trial_id) == ["a", "b", "c"] and sorted({r[1] for r in runs}) == [1, 2, 3]
    assert {r[0]: r[6] for r in runs} == pytest.approx({"a": 0.35, "b": 0.275, "c": 0.55})
    assert whole["a"] == pytest.approx((0.95, 0.3, 0.3))
    assert confirm.truths(runs) == pytest.approx({"a": 0.90, "b": 0.92, "c": 0.88})
    # the finalists as each rank_by chooses them: late_val_loss, among the 3 x top best, the lowest
    # late loss of their whole runs (the metric's first where one has none); the others, the first
    # (the pool: the search's top fifth, at most 3 x top; 32 trials and two finalists, six)
    late = {"a": (0.95, 0.3, 0.40), "b": (0.94, 0.3, 0.20), "c": (0.90, 0.3, 0.30), "e": (0.80, 0.3, 0.10),
            "f": (0.79, 0.3, 0.50), "g": (0.78, 0.3, 0.60),
            **{f"z{i}": (0.1, 2.3, 0.05) for i in range(26)}}   # chance-level runs, past the pool
    tail = [f"z{i}" for i in range(26)]
    assert confirm.finalists(["a", "b", "c", "e", "f", "g", *tail], late, 2, "late_val_loss") == ["e", "b"]
    assert confirm.finalists(["a", "b", "c", "e", "f", "g", *tail], late, 1, "late_val_loss") == ["b"]   # pool a..c
    assert confirm.finalists(["a", "b", "c", "d", "f", "g", *tail], late, 2, "late_val_loss") == ["a", "b"]   # d: no whole run
    assert confirm.finalists(["a", "b", "c", "e"], late, 2, "late_val_loss") == ["a", "b"]   # four: no pool
    assert confirm.finalists(["a", "b", "c"], late, 2, "val_loss") == ["a", "b"] == \
        confirm.finalists(["a", "b", "c"], late, 2, "metric")
    # held_out judges the finalists it is given, the single pick (order's first) beside them
    runs = [(c, s, 0.9, 0.3, {"a": 0.90, "b": 0.92, "c": 0.88}[c]) for s in (1, 2, 3) for c in "abc"]
    single, confirmed, floor, _ = confirm.held_out(runs, ["a", "b", "c"], top=2, seeds=1, finals=["c", "a"])
    assert single == pytest.approx(0.02) and floor == pytest.approx(0.02)
    assert confirm.held_out(runs, ["a", "b", "c"], top=2, seeds=1, finals=["b", "z"]) is None   # z unmeasured
