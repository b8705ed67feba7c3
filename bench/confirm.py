"""Is confirming the finalists worth its cost? (#28)

For each dataset and seed, as a user runs it (fresh processes, the CLI):

1. ``tunesmith run``: random search (``--trials`` trials of ``--epochs`` epochs, ASHA as default)
   with the confirmation at ``--top`` finalists x ``--seeds`` new seeds (the default), beside each
   finalist's own search run where it trained its whole schedule. Read: the search's
   single-run pick (its rank 1), the confirmed winner, the reported figures (the search's best
   val_acc; the confirmation's mean test_acc), and the wall time of each phase.
2. ``tunesmith analyze --confirm M --seeds 5``: the search's M best configurations (the
   finalists among them) each trained again with 5 seeds none of the sweep used. A
   configuration's true quality is the mean test_acc of those 5 final models.

Then, over every dataset and seed:
- selection regret: the true quality of the best of the M minus that of the configuration
  chosen, for single-run selection (today's rank 1) and for the confirmed winner;
- optimism: the reported figure minus the chosen configuration's true quality: the search's best
  val_acc (today) against the confirmation's test figure;
- the confirmation's wall time as a share of the search's.

Bars (issue #28): confirmation halves the mean regret of single-run selection, for at most 35%
more wall time; the reported test figure is within 1 point of the chosen configuration's true
quality on average.

Beside them, each truth seed in turn as the new seed: the expectation rather than one draw, and the
same finalists ranked by the new seeds' own test figures, which no sweep may read: what no reading
of the new seeds' validation can beat. ``--read`` prints those again, pooled, from folders that
``--keep`` filled, for 1 to ``--most`` new seeds, and runs nothing.

    .venv/bin/python bench/confirm.py [--datasets small glyphs] [--repeats 2] [--trials 16] [--epochs 6]
                                      [--top 2] [--seeds auto] [--candidates 4] [--truth-seeds 5] [--keep DIR]
    .venv/bin/python bench/confirm.py --read DIR/* [--most 3] [--judged N] [--top 2] [--rank-by val_loss]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tunesmith.orchestrator", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tunesmith {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return proc


def _span(rows) -> float:
    return (rows.ended_at.max() - rows.started_at.min()).total_seconds() if len(rows) else 0.0


def _shared(runs):
    """``runs``: (configuration, seed, val_acc, val_loss, test_acc[, test_loss]) of the truth runs.
    The runs by configuration and seed, the configurations, and the seeds that every configuration
    finished."""
    by = {(c, int(s)): tuple(float(x) for x in (va, vl, te, *more)) for c, s, va, vl, te, *more in runs}
    configs = sorted({c for c, _ in by})
    return by, configs, sorted({s for _, s in by if all((c, s) in by for c in configs)})


def _splits(runs, k: int, judged: int = 0):
    """``runs``: (configuration, seed, val_acc, val_loss, test_acc) of the truth runs. For each way
    to hold ``k`` of the seeds that every configuration finished: (held, the runs by configuration
    and seed, each configuration's truth: its mean test figure over the other seeds, or over
    ``judged`` of them drawn at random: the same draws for the same runs and ``k``)."""
    import random
    from itertools import combinations
    by, configs, seeds = _shared(runs)
    rng = random.Random(0)
    for held in (combinations(seeds, k) if len(seeds) > k else ()):
        rest = [s for s in seeds if s not in held]
        rest = rng.sample(rest, judged) if 0 < judged < len(rest) else rest
        yield held, by, {c: statistics.fmean(by[(c, s)][2] for s in rest) for c in configs}


def split_half(runs, single: str, k: int = 2):
    """The truth's own noise: over ``_splits``, the mean regret of the single-run pick and of an
    oracle that picks by the ``k`` held seeds' mean test figure over every configuration (no sweep
    may: it reads the test split, and it trains every configuration ``k`` more times). Where the
    oracle's regret is not below half the single pick's, the configurations lie within the seeds'
    noise, and no confirmation can halve the regret measured this way. None where no split is."""
    single_r, oracle_r = [], []
    for held, by, truth in _splits(runs, k):
        if single not in truth:
            return None
        pick = max(truth, key=lambda c: statistics.fmean(by[(c, s)][2] for s in held))
        best = max(truth.values())
        single_r.append(best - truth[single])
        oracle_r.append(best - truth[pick])
    return (statistics.fmean(single_r), statistics.fmean(oracle_r)) if single_r else None


def truth_bias(runs, draws: int = 2000):
    """How far the best truth, the regret's reference, reads above the best configuration's real
    quality: the truth seeds resampled with replacement (each seed's runs kept together, so its
    common luck stays), ``draws`` times, the best resampled truth minus the best truth. Beside it,
    the same bias where all the configurations were equally good (each one's runs centred on its
    own mean, then shuffled between them within each seed): what a perfect pick would read as its
    regret among ties, the bias's upper end. And the regret of a pick at random on the real truth.
    None where the configurations do not share at least two seeds."""
    import random
    by, configs, seeds = _shared(runs)
    if len(seeds) < 2 or len(configs) < 2:
        return None
    mean = {c: statistics.fmean(by[(c, s)][2] for s in seeds) for c in configs}
    resid = {s: [by[(c, s)][2] - mean[c] for c in configs] for s in seeds}
    scale = math.sqrt(len(seeds) / (len(seeds) - 1))   # centring took one of the seeds' freedom
    rng, boot, ties = random.Random(0), [], []
    for _ in range(draws):
        drawn = [rng.choice(seeds) for _ in seeds]
        boot.append(max(mean[c] + statistics.fmean(resid[s][i] for s in drawn) for i, c in enumerate(configs))
                    - max(mean.values()))
        cols = {s: rng.sample(resid[s], len(configs)) for s in seeds}
        shuffled = [scale * statistics.fmean(cols[s][i] for s in seeds) for i in range(len(configs))]
        ties.append(max(shuffled) - statistics.fmean(shuffled))
    return statistics.fmean(boot), statistics.fmean(ties), max(mean.values()) - statistics.fmean(mean.values())


def held_out(runs, order, top: int, seeds: int, own=None, by: str = "val_loss", judged: int = 0, finals=None):
    """The bar's expectation rather than one draw: each way to take ``seeds`` of the truth seeds in
    turn as the confirmation's new seeds, judged on the other truth seeds. The finalists (the
    search's ``top`` first in ``order``) are ranked by the confirmation's own ``verdict_of``, their
    own whole search runs among the seeds (``own``: configuration -> (val_acc, val_loss)), by their
    mean ``by`` (confirm.rank_by: val_loss, or metric, here val_acc); ``finals``, where given, are
    the finalists in place of ``order``'s first (``finalists``). Returns
    the mean regret of single-run selection (``order``'s first), of the confirmation, and of the
    truest finalist, and the confirmation's optimism (its winner's test figure on the new seeds
    minus its truth: the bar's "on average", with no one seed's luck in it); None where no split is."""
    from tunesmith.orchestrator.verdict import Finalist, add_run, verdict_of
    own, search_seed = own or {}, -1   # every search trial shares one seed, none of the truth's
    out = []
    chosen = finals
    for held, got, truth in _splits(runs, seeds, judged):
        finals = [c for c in order if c in truth][:top] if chosen is None else chosen
        if not finals or order[0] not in truth or any(c not in truth for c in finals):
            return None
        fs = []
        for c in finals:
            f = Finalist(c, {}, math.nan)
            if c in own:
                add_run(f, search_seed, "completed", own[c][0], own[c][1], None, "max")
                f.own = search_seed
            for s in held:
                add_run(f, s, "completed", got[(c, s)][0], got[(c, s)][1], got[(c, s)][2], "max")
            fs.append(f)
        pick = verdict_of(fs, "val_acc", "max", held, by).finalists[0].trial_id
        best = max(truth.values())
        reported = statistics.fmean(got[(pick, s)][2] for s in held)
        out.append((best - truth[order[0]], best - truth[pick], best - max(truth[c] for c in finals),
                    reported - truth[pick]))
    return tuple(statistics.fmean(col) for col in zip(*out)) if out else None


def test_read(runs, order, top: int, seeds: int, judged: int = 0, finals=None):
    """What no confirmation can beat by reading its new seeds better: ``held_out``'s finalists
    ranked by the held seeds' own test figures (which no sweep may read) in place of their
    validation, the new seeds alone, judged on the other truth seeds as ``held_out`` judges. Returns
    (mean regret ranked by the mean test_acc, by the mean test_loss where every run carries it as
    a sixth field, else None); None where ``held_out`` is."""
    runs = list(runs)
    by_acc = held_out([(c, s, te, -te, te) for c, s, _, _, te, *_ in runs], order, top, seeds, None, "", judged,
                      finals)
    if by_acc is None:
        return None
    lossy = all(len(r) > 5 for r in runs)
    by_loss = held_out([(c, s, te, tl, te) for c, s, _, _, te, tl, *_ in runs], order, top, seeds, None,
                       "val_loss", judged, finals) if lossy else None
    return by_acc[1], by_loss[1] if by_loss else None


RANKINGS = ("late_val_loss", "val_loss", "metric")   # confirm.rank_by's values
NAMES = {"late_val_loss": "by late val_loss", "val_loss": "by final val_loss", "metric": "by val_acc"}


def sweep_runs(t, first_seeds=None, epochs=None):
    """A sweep's Parquet rows (``t``, pandas; ``epochs``, its epoch rows) as the bench reads them:
    (the search's rows, ranked as single-run selection ranks them, the truth runs (configuration,
    seed, val_acc, val_loss, test_acc, test_loss, late val_loss), each configuration's whole search
    run (val_acc, val_loss, late val_loss)); the late val_loss is the confirmation's ``late_mean`` of
    the run's epoch rows (NaN without them). The truth runs are the confirmation rows on seeds outside
    ``first_seeds`` (the sweep's own confirmation); without it (a kept folder), those on the seeds that
    the most configurations ran."""
    from tunesmith.orchestrator.verdict import late_by_trial, whole_run
    search, conf = t[t.phase == "search"], t[(t.phase == "confirm") & (t.status == "completed")]
    if first_seeds is None:
        counts = t[t.phase == "confirm"].groupby("seed").confirms.nunique()
        truth = conf[conf.seed.isin(counts[counts == counts.max()].index)] if len(counts) else conf
    else:
        truth = conf[~conf.seed.isin(first_seeds)]
    ranked = search.dropna(subset=["best_val_acc"]).sort_values(["best_val_acc", "best_val_loss"],
                                                                ascending=[False, True])
    late = {} if epochs is None else late_by_trial(epochs.trial_id, epochs.epoch, epochs.val_loss)
    runs = [(c, s, va, vl, te, tl, late.get(tid, math.nan)) for c, s, va, vl, te, tl, tid in zip(
        truth.confirms, truth.seed, truth.last_val_acc, truth.last_val_loss, truth.test_acc, truth.test_loss,
        truth.trial_id)]
    whole = {r.trial_id: (r.last_val_acc, r.last_val_loss, late.get(r.trial_id, math.nan))
             for r in search.itertuples() if whole_run(r.status, r.stop_reason)}
    return search, ranked, runs, whole


def truths(runs) -> dict:
    """Each configuration's true quality: its truth runs' mean test figure (``sweep_runs``' runs)."""
    out = {}
    for c, _, _, _, te, *_ in runs:
        if te == te:   # not NaN
            out.setdefault(c, []).append(te)
    return {c: statistics.fmean(v) for c, v in out.items()}


def read_epochs(folder: str):
    """A sweep folder's epoch rows (trial_id, epoch, val_loss), or None where it has none."""
    import pyarrow.dataset as ds
    path = os.path.join(folder, "epochs")
    if not os.path.isdir(path):
        return None
    return ds.dataset(path, format="parquet").to_table(columns=["trial_id", "epoch", "val_loss"]).to_pandas()


def finalists(order, whole, top: int, by: str):
    """The finalists as confirm.rank_by ``by`` chooses them (``orchestrator/confirm.py``): the
    search's ``top`` first in ``order``, or under late_val_loss ``verdict.choose`` over its
    ``pool_size`` first by their whole runs' late val_loss (``sweep_runs``' whole runs, their third field)."""
    from tunesmith.orchestrator.verdict import LATE, choose, pool_size
    if by != LATE:
        return list(order[:top])
    return choose(order[:pool_size(len(order), top)], lambda c: whole[c][2] if c in whole else None, top)


def expected(runs, whole, order, top: int, seeds: int, by: str, judged: int = 0, own: bool = True,
             chosen: str = ""):
    """``held_out`` as confirm.rank_by ``by`` chooses and ranks the finalists (``chosen``: as that
    one chooses them instead): late_val_loss reads each run's late val_loss (``sweep_runs``'
    seventh field, the whole runs' third) as its loss."""
    finals = finalists(order, whole, top, chosen or by)
    if by == "late_val_loss":
        runs = [(c, s, va, late, te, *rest) for c, s, va, _, te, *rest, late in runs]
        whole = {c: (va, late) for c, (va, _, late) in whole.items()}
    return held_out(runs, order, top, seeds, whole if own else None, "" if by == "metric" else "val_loss", judged,
                    finals)


def one(dataset: str, seed: int, args) -> dict:
    """One dataset and seed: the sweep with its confirmation, then the truth runs."""
    import pyarrow.parquet as pq
    import yaml
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from quality import _dataset, _model, WIDE
    root = tempfile.mkdtemp(prefix=f"tunesmith-confirm-{dataset}-")
    spec = {"name": "c", "seed": seed, "dataset": _dataset(dataset), "results_dir": root,
            "trainer": {"epochs": args.epochs},
            "search": {"algorithm": "random", "num_samples": args.trials, "space": {"lr": WIDE}},
            "confirm": {"top": args.top, "seeds": args.seeds, "rank_by": args.rank_by}}
    model = _model(dataset)
    if model:
        spec["model"] = model
    path = os.path.join(root, "spec.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(spec, fh)
    began = time.time()
    _cli("run", path)
    sweep_s = time.time() - began
    folder = os.path.join(root, "c")
    man = json.load(open(os.path.join(folder, "manifest.json")))
    confirmed = man["confirm"]
    t = pq.read_table(os.path.join(folder, "trials.parquet")).to_pandas()
    search, ranked, _, _ = sweep_runs(t, set())
    phase1 = t[t.phase == "confirm"]
    single = ranked.trial_id.iloc[0]
    winner = confirmed["finalists"][0]
    first_seeds = set(phase1.seed)
    # "auto" resolved: the new seeds the sweep ran (the verdict's seeds include the search's own)
    out_seeds = len(set(confirmed.get("seeds") or first_seeds) - set(confirmed.get("search_seeds") or ()))
    # the same confirmation ranked by the new seeds alone (the default before the mean over the
    # shared seeds, the search's own whole runs among them, ranked the finalists)
    scored = [f for f in confirmed["finalists"] if f.get("new_mean") is not None]
    pick_new = max(scored, key=lambda f: f["new_mean"])["trial"] if scored else single
    own = [int(s) for s in confirmed.get("search_seeds", [])]
    # the truth's candidates are the search's M best by its metric, as they have always been read, so
    # they hold single-run selection's pick and the finalists any rank_by chooses (among the 3 x top
    # best): the sweep's spec.yaml says metric for the one call that picks them
    with open(os.path.join(folder, "spec.yaml")) as fh:
        written = yaml.safe_load(fh)
    with open(os.path.join(folder, "spec.yaml"), "w") as fh:
        yaml.safe_dump({**written, "confirm": {**written["confirm"], "rank_by": "metric"}}, fh)
    _cli("analyze", folder, "--confirm", str(args.candidates), "--seeds", str(args.truth_seeds))
    t = pq.read_table(os.path.join(folder, "trials.parquet")).to_pandas()
    search, ranked, runs, whole = sweep_runs(t, first_seeds, read_epochs(folder))
    truth = truths(runs)
    best = max(truth.values())
    out = {"dataset": dataset, "seed": seed, "single": single, "confirmed": winner["trial"],
           "truth": truth, "best": best,
           "regret_single": best - truth[single], "regret_confirmed": best - truth[winner["trial"]],
           "regret_new_only": best - truth[pick_new],
           # the least regret any ranking of the finalists could reach: the truest of them
           "regret_floor": best - max(truth[f["trial"]] for f in confirmed["finalists"] if f["trial"] in truth),
           "reported_single": float(ranked.best_val_acc.iloc[0]), "reported_confirmed": winner["test"],
           "optimism_single": float(ranked.best_val_acc.iloc[0]) - truth[single],
           "optimism_confirmed": winner["test"] - truth[winner["trial"]],
           "search_s": _span(search), "confirm_s": _span(phase1), "sweep_s": sweep_s,
           "verdict": confirmed["verdict"], "folder": folder, "own_seeds": own, "new_seeds": out_seeds}
    out["split_half"] = split_half(runs, single)
    out["truth_bias"] = truth_bias(runs)
    order = list(ranked.trial_id)
    out["test_read"] = test_read(runs, order, args.top, out_seeds, 0, finalists(order, whole, args.top, args.rank_by))
    out["held_out"] = expected(runs, whole, order, args.top, out_seeds, args.rank_by)
    out["held_out_metric_finalists"] = expected(runs, whole, order, args.top, out_seeds, args.rank_by, chosen="metric")
    out["held_out_other"] = {by: expected(runs, whole, order, args.top, out_seeds, by)
                             for by in RANKINGS if by != args.rank_by}   # the other rankings, on the same runs
    out["share"] = out["confirm_s"] / max(out["search_s"], 1e-9)
    import shutil
    if args.keep:   # the sweep's Parquet rows, for reading the choice again another way
        shutil.copytree(folder, os.path.join(args.keep, f"{dataset}-{seed}"), dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if not n.endswith(".parquet")
                                                 and not os.path.isdir(os.path.join(d, n))])
    shutil.rmtree(root, ignore_errors=True)
    return out


def _test_read_line(read, top: int) -> str:
    loss = [r[1] for r in read if r[1] is not None]
    return (f"the {top} finalists ranked instead by the new seeds' own test figures, which no sweep may read "
            f"({len(read)} sweeps): mean regret {100 * statistics.fmean(r[0] for r in read):.2f}pp by test_acc"
            + (f", {100 * statistics.fmean(loss):.2f}pp by test_loss" if loss else ""))


def read_kept(folders, top: int, most: int, rank_by: str, judged: int = 0) -> int:
    """``--read``: the expectation lines again over folders that ``--keep`` filled, pooled, for 1 to
    ``most`` new seeds per finalist, each truth seed (or set of them) in turn as the new seeds,
    judged on the other truth seeds, or on ``judged`` of them (the truth made as coarse as a run
    with fewer truth seeds would have it)."""
    import pyarrow.parquet as pq
    others = [by for by in RANKINGS if by != rank_by]
    print(f"mean regret in expectation; the finalists ranked {NAMES[rank_by]} (confirm.rank_by {rank_by}), "
          f"the search's own whole runs among the seeds, unless the column says otherwise")
    top_col = "the metric's finalists"
    print(f"{'new seeds':>9}  {'sweeps':>6}  {'single-run':>10}  {'confirmed':>9}  {top_col:>22}  "
          + "  ".join(f"{NAMES[by]:>17}" for by in others)
          + f"  {'new seeds alone':>15}  {'by test_acc':>11}  {'by test_loss':>12}  {'truest finalist':>15}  "
          f"{'winner test - truth':>19}")
    sweeps = []
    for folder in folders:
        path = os.path.join(folder, "trials.parquet")
        if not os.path.isfile(path):
            raise SystemExit(f"--read = {folder!r}: no trials.parquet there (a folder that --keep filled)")
        _, ranked, runs, whole = sweep_runs(pq.read_table(path).to_pandas(), None, read_epochs(folder))
        sweeps.append((list(ranked.trial_id), runs, whole))
    for k in range(1, most + 1):
        cols = {"own": [], "new": [], "read": [], "top": [], **{by: [] for by in others}}
        for order, runs, whole in sweeps:
            h = expected(runs, whole, order, top, k, rank_by, judged)
            if h is None:
                continue
            cols["own"].append(h)
            for by in others:
                cols[by].append(expected(runs, whole, order, top, k, by, judged)[1])
            cols["new"].append(expected(runs, whole, order, top, k, rank_by, judged, own=False)[1])
            cols["top"].append(expected(runs, whole, order, top, k, rank_by, judged, chosen="metric")[1])
            cols["read"].append(test_read(runs, order, top, k, judged, finalists(order, whole, top, rank_by)))
        if not cols["own"]:
            continue
        pp = lambda xs: f"{100 * statistics.fmean(xs):.2f}pp" if xs else "-"   # noqa: E731
        own = cols["own"]
        print(f"{k:>9}  {len(own):>6}  {pp([h[0] for h in own]):>10}  {pp([h[1] for h in own]):>9}  {pp(cols['top']):>22}  "
              + "  ".join(f"{pp(cols[by]):>17}" for by in others)
              + f"  {pp(cols['new']):>15}  {pp([r[0] for r in cols['read']]):>11}  "
              f"{pp([r[1] for r in cols['read'] if r[1] is not None]):>12}  {pp([h[2] for h in own]):>15}  "
              f"{100 * statistics.fmean(h[3] for h in own):>+17.2f}pp")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["small", "glyphs"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--top", type=int, default=2)
    p.add_argument("--seeds", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="confirm.seeds: a number, or auto (the default's rule)")
    p.add_argument("--candidates", type=int, default=4, help="configurations whose true quality is measured")
    p.add_argument("--truth-seeds", type=int, default=5)
    p.add_argument("--rank-by", choices=RANKINGS, default=RANKINGS[0], help="confirm.rank_by")
    p.add_argument("--keep", default="", help="a folder to copy each sweep's Parquet files into")
    p.add_argument("--read", nargs="+", metavar="FOLDER", default=[],
                   help="run nothing: read again the sweeps that --keep kept (each DIR/dataset-seed), pooled, "
                        "for 1 to --most new seeds")
    p.add_argument("--most", type=int, default=3, help="with --read: the most new seeds per finalist")
    p.add_argument("--judged", type=int, default=0,
                   help="with --read: judge on this many of the other truth seeds, drawn at random (0: all)")
    args = p.parse_args(argv)
    if args.read:
        return read_kept(args.read, args.top, args.most, args.rank_by, args.judged)
    rows = []
    for dataset in args.datasets:
        for r in range(args.repeats):
            row = one(dataset, args.first_seed + r, args)
            rows.append(row)
            print(f"{dataset} seed {row['seed']}: single-run pick {row['single']} (true {row['truth'][row['single']]:.4f}), "
                  f"confirmed {row['confirmed']} (true {row['truth'][row['confirmed']]:.4f}), best of "
                  f"{len(row['truth'])} {row['best']:.4f}; reported {row['reported_single']:.4f} today, "
                  f"{row['reported_confirmed']:.4f} (test) confirmed; confirmation {row['confirm_s']:.0f}s against "
                  f"the search's {row['search_s']:.0f}s", flush=True)
    ran = sorted({r["new_seeds"] for r in rows})
    ran_text = " or ".join(map(str, ran))
    print(f"\nnew seeds per finalist (confirm.seeds {args.seeds}): {ran_text}")
    print("\ndataset  seed  regret single  regret confirmed  optimism single  optimism confirmed  "
          "confirm/search wall")
    for r in rows:
        print(f"{r['dataset']:<8} {r['seed']:>4}  {100 * r['regret_single']:>11.2f}pp  {100 * r['regret_confirmed']:>14.2f}pp"
              f"  {100 * r['optimism_single']:>13.2f}pp  {100 * r['optimism_confirmed']:>16.2f}pp  {r['share']:>18.2f}")
    mean = lambda k: statistics.fmean(r[k] for r in rows)   # noqa: E731
    rs, rc = mean("regret_single"), mean("regret_confirmed")
    share = sum(r["confirm_s"] for r in rows) / max(sum(r["search_s"] for r in rows), 1e-9)
    off = statistics.fmean(abs(r["optimism_confirmed"]) for r in rows)
    print(f"\nmean regret: single-run {100 * rs:.2f}pp, confirmed {100 * rc:.2f}pp; mean optimism: single-run "
          f"{100 * mean('optimism_single'):+.2f}pp (search's best val_acc), confirmed {100 * mean('optimism_confirmed'):+.2f}pp "
          f"(test); confirmation wall time {100 * share:.0f}% of the search's")
    halved = rc <= rs / 2 if rs > 0 else rc <= 0
    counted = sum(bool(r["own_seeds"]) for r in rows)
    print(f"the search's own runs counted as a seed in {counted} of {len(rows)} sweeps; ranked by the new seeds "
          f"alone instead: mean regret {100 * mean('regret_new_only'):.2f}pp")
    print(f"the best any ranking of the {args.top} finalists could do (the truest of them each time): mean regret "
          f"{100 * mean('regret_floor'):.2f}pp" + ("; the rest of single-run selection's regret lay outside the finalists"
                                                   if mean("regret_floor") > 0 else ""))
    held = [r["held_out"] for r in rows if r["held_out"]]
    if held:
        print(f"expected, each truth seed in turn as the new seed ({len(held)} sweeps, judged on the other "
              f"{' or '.join(str(args.truth_seeds - n) for n in ran)}): mean regret single-run {100 * statistics.fmean(h[0] for h in held):.2f}pp, "
              f"confirmed {100 * statistics.fmean(h[1] for h in held):.2f}pp, the truest finalist "
              f"{100 * statistics.fmean(h[2] for h in held):.2f}pp; the confirmed winner's test figure minus its "
              f"truth {100 * statistics.fmean(h[3] for h in held):+.2f}pp")
        tops = [r["held_out_metric_finalists"] for r in rows if r["held_out"] and r["held_out_metric_finalists"]]
        if tops and args.rank_by == "late_val_loss":
            print(f"the same, the finalists the search's {args.top} best by its metric: confirmed "
                  f"{100 * statistics.fmean(h[1] for h in tops):.2f}pp, the truest of them "
                  f"{100 * statistics.fmean(h[2] for h in tops):.2f}pp")
        for by in (b for b in RANKINGS if b != args.rank_by):
            other = [r["held_out_other"][by] for r in rows if r["held_out"] and r["held_out_other"].get(by)]
            if other:
                print(f"the same, the finalists ranked {NAMES[by]} (confirm.rank_by {by}): confirmed "
                      f"{100 * statistics.fmean(h[1] for h in other):.2f}pp; the winner's test figure minus its "
                      f"truth {100 * statistics.fmean(h[3] for h in other):+.2f}pp")
        read = [r["test_read"] for r in rows if r["held_out"] and r["test_read"]]
        if read:
            print(_test_read_line(read, args.top))
    halves = [r["split_half"] for r in rows if r["split_half"]]
    if halves:
        judged = args.truth_seeds - 2
        print(f"the truth's own noise, judged on {judged} of the {args.truth_seeds} truth seeds ({len(halves)} sweeps): "
              f"single-run selection's mean regret {100 * statistics.fmean(h[0] for h in halves):.2f}pp; an oracle "
              f"picking by the other 2 seeds' test figures over all {args.candidates} configurations (2 more runs "
              f"of each, the test split read) {100 * statistics.fmean(h[1] for h in halves):.2f}pp")
    biases = [r["truth_bias"] for r in rows if r["truth_bias"]]
    if biases:
        b = statistics.fmean(x[0] for x in biases)
        print(f"the best truth's own upward bias, the truth seeds resampled ({len(biases)} sweeps): {100 * b:.2f}pp, "
              f"so past it single-run {100 * (rs - b):.2f}pp, confirmed {100 * (rc - b):.2f}pp; where all "
              f"{args.candidates} configurations tied it would be {100 * statistics.fmean(x[1] for x in biases):.2f}pp; "
              f"a pick at random among them reads {100 * statistics.fmean(x[2] for x in biases):.2f}pp")
    print(f"bar: confirmation halves the mean regret: {'met' if halved else 'NOT met'} "
          f"({100 * rc:.2f}pp against {100 * rs:.2f}pp{'' if rs > 0 else '; single-run selection had no regret here'})")
    print(f"bar: for at most 35% more wall time: {'met' if share <= 0.35 else 'NOT met'} ({100 * share:.0f}%)")
    # on average: the mean signed difference (the figure's bias, what optimism is); the mean
    # |difference| beside it is the seeds' noise in a mean of --seeds runs, which no selection causes
    bias = mean("optimism_confirmed")
    print(f"bar: the reported test figure within 1 point of the chosen configuration's true quality on average: "
          f"{'met' if abs(bias) <= 0.01 else 'NOT met'} (mean difference {100 * bias:+.2f}pp; mean |difference| "
          f"{100 * off:.2f}pp, the noise of a mean over {ran_text} new model{'s' if ran != [1] else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
