"""What a sweep's trials say, with the noise floor beside it (#28): each hyperparameter's effect
(the metric by value or bin, with a 95% t interval on each mean), its importance (eta squared,
with a bootstrap interval and a permutation test of whether the data separate its values at
all), the seed spread wherever a configuration ran more than once, and a confirmation's
finalists read back from trials.parquet. Plain data from DataFrames; `analyze` renders it."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from tunesmith.orchestrator import verdict

FEW_VALUES = 12    # a grid, a choice or a decade sweep: shown per value, never averaged into bins
RESAMPLES = 200    # bootstrap resamples and permutations per hyperparameter
SEPARATE_P = 0.05  # a hyperparameter whose values the data do not separate at this level is said so


def fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def bins(values: pd.Series, few: int = FEW_VALUES):
    """Group labels for a hyperparameter: its values when ``few`` or fewer, else quantile bins (on
    a log scale for positive values spanning more than a decade, such as LR and weight decay)."""
    v = values.dropna()
    if v.empty:
        return values.astype(str)
    if values.dtype == object or values.dtype == bool or v.nunique() <= few:
        return values.map(fmt)
    x = v.astype(float)
    logscale = (x > 0).all() and x.max() / x.min() > 10
    key = x.map(math.log10) if logscale else x
    q = min(4, max(2, len(x) // 4))
    try:
        cut = pd.qcut(key, q=q, duplicates="drop")
    except ValueError:
        return values.map(fmt)

    def label(iv):
        lo, hi = (10 ** iv.left, 10 ** iv.right) if logscale else (iv.left, iv.right)
        return f"[{lo:.3g}, {hi:.3g}]"
    out = cut.map(label).astype(object)
    return out.reindex(values.index)


def eta2(codes: np.ndarray, y: np.ndarray, k: int) -> float:
    """The share of y's variance that the groups ``codes`` (0..k-1) explain."""
    total = ((y - y.mean()) ** 2).sum()
    if total <= 0:
        return 0.0
    n = np.bincount(codes, minlength=k)
    sums = np.bincount(codes, weights=y, minlength=k)
    means = np.divide(sums, n, out=np.zeros(k), where=n > 0)
    return float((n * (means - y.mean()) ** 2).sum() / total)


def importance(codes: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> Dict[str, float]:
    """eta squared, its 95% bootstrap interval, and the permutation p-value: how often the
    trials' scores shuffled over the same groups explain as much."""
    rng = np.random.default_rng(seed)
    value = eta2(codes, y, k)
    n = len(y)
    boot = [eta2(codes[i], y[i], k) for i in (rng.integers(0, n, n) for _ in range(RESAMPLES))]
    beaten = sum(eta2(codes, rng.permutation(y), k) >= value - 1e-12 for _ in range(RESAMPLES))
    return {"importance": value, "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
            "p": (beaten + 1) / (RESAMPLES + 1)}


def effects(sweep) -> List[Dict[str, Any]]:
    """Per hyperparameter: the metric per bin (mean, its 95% interval, best) and the importance
    with its interval; ``separated`` is false where the data cannot tell its values apart."""
    t = sweep.trials
    score = t[sweep.score].astype(float)
    ok = score.notna()
    out = []
    for col in sweep.hp_columns:
        groups = bins(t[col])[ok]
        frame = pd.DataFrame({"bin": groups.astype(str), "score": score[ok]})
        rows = []
        for b, g in frame.groupby("bin", sort=False):
            best = g.score.max() if sweep.mode == "max" else g.score.min()
            half = verdict.t_half_width(float(g.score.std(ddof=1)) if len(g) > 1 else math.nan, len(g))
            rows.append({"bin": str(b), "trials": int(len(g)), "mean": float(g.score.mean()),
                         "±95%": None if math.isnan(half) else float(half), "best": float(best)})
        rows.sort(key=lambda r: sort_key(r["bin"]))
        codes, uniques = pd.factorize(frame["bin"])
        binned = 0
        if len(uniques) == len(frame) > 3:   # each value ran once: as groups they explain everything
            coarse = bins(t[col], few=0)[ok].astype(str)
            if coarse.nunique() < len(frame):
                codes, uniques = pd.factorize(coarse)
                binned = len(uniques)
        imp = importance(codes, frame.score.to_numpy(), len(uniques)) if len(frame) > 1 else \
            {"importance": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
        out.append({"hparam": sweep.names.get(col, col[3:]), "column": col, **imp, "binned": binned,
                    "separated": imp["p"] < SEPARATE_P and len(uniques) > 1, "bins": rows})
    out.sort(key=lambda e: -e["importance"])
    return out


def sort_key(label: str):
    try:
        return (0, float(label.strip("[]").split(",")[0]))
    except ValueError:
        return (1, label)


def seed_variance(sweep) -> List[Dict[str, Any]]:
    """Repeats of one configuration with distinct seeds (``num_samples`` over a finite space):
    the metric's mean and spread per configuration, the noise floor every other comparison in
    the sweep sits on."""
    if "hp_seed" not in sweep.trials.columns:
        return []
    others = [c for c in sweep.hp_columns if c != "hp_seed"]
    t = sweep.trials.dropna(subset=[sweep.score])
    groups = t.groupby(others, dropna=False) if others else [((), t)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        x = g[sweep.score].astype(float)
        sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        half = verdict.t_half_width(verdict.floored(sd, verdict.step_of(list(x), sweep.metric)), len(x))
        rows.append({**{sweep.names.get(c, c[3:]): plain(v) for c, v in zip(others, key)},
                     "seeds": int(len(x)), "mean": float(x.mean()), "std": 0.0 if math.isnan(sd) else sd,
                     "±95%": None if math.isnan(half) else half, "min": float(x.min()), "max": float(x.max())})
    return rows


def confirmation(sweep) -> Dict[str, Any]:
    """A confirmation's finalists and verdict, from its rows of trials.parquet (phase confirm),
    as the sweep's last lines gave them; {} where none ran."""
    c = sweep.confirm
    if c is None or c.empty:
        return {}
    m = sweep.metric
    search = sweep.trials.set_index("trial_id")
    finals: Dict[str, verdict.Finalist] = {}
    late = None   # confirm.rank_by late_val_loss: each run's late epochs' mean, from its epoch rows
    if sweep.rank_by == verdict.LATE:
        e = sweep.epochs
        late = {} if e.empty else verdict.late_by_trial(e["trial_id"], e["epoch"], e["val_loss"])

    def loss(tid: str, row) -> Optional[float]:
        return plain(row.get("last_val_loss")) if late is None else late.get(tid)

    for _, r in c.iterrows():
        of = r["confirms"]
        if of not in finals:
            row = search.loc[of] if of in search.index else None
            hp = {sweep.names.get(k, k[3:]): plain(row[k]) for k in sweep.hp_columns} if row is not None else {}
            value = float(row[f"best_{m}"]) if row is not None and pd.notna(row[f"best_{m}"]) else math.nan
            finals[of] = verdict.Finalist(of, hp, value)
            if row is not None and pd.notna(row["seed"]):   # the search's own run, as the sweep counted it
                verdict.add_search_run(finals[of], row["status"], row["stop_reason"], int(row["seed"]),
                                       plain(row.get(f"last_{m}")), loss(of, row), sweep.mode)
        test = r.get(verdict.test_metric(m))
        verdict.add_run(finals[of], int(r["seed"]), r["status"], plain(r.get(f"last_{m}")),
                        loss(r["trial_id"], r), plain(test), sweep.mode, r["trial_id"])
    seeds = sorted({int(s) for s in c["seed"].dropna()})
    return verdict.verdict_of(list(finals.values()), m, sweep.mode, seeds, sweep.rank_by).to_dict()

