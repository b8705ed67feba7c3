"""The confirmation's statistics, Ray-free (#28): each finalist's final values over its seeds
(the new seeds' runs, and the search's own run where it trained its whole schedule), their mean,
spread and t interval, and the paired verdict between the first two. ``orchestrator/confirm.py``
runs the phase; ``orchestrator/effects.py`` reads a finished one back from Parquet."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tunesmith.orchestrator.ledger import WHOLE

LEVEL = 0.95
LATE = "late_val_loss"   # confirm.rank_by: each run's val_loss over the second half of its epochs


def late_mean(by_epoch: Dict[int, Optional[float]]) -> Optional[float]:
    """A run's validation loss over the second half of the epochs it trained (the last ceil(n/2)):
    the annealing end of its schedule, read as one figure. One epoch's reading carries that epoch's
    luck on top of the configuration's quality; the late epochs' mean reads the same model
    trajectory with less of it. inf where one of them is not finite; None where there are none."""
    values = [by_epoch[e] for e in sorted(by_epoch)]
    late = values[len(values) // 2:]
    if not late:
        return None
    return sum(late) / len(late) if all(v is not None and math.isfinite(v) for v in late) else math.inf


def late_by_trial(trial_ids, epochs, losses) -> Dict[str, Optional[float]]:
    """``late_mean`` of each trial's epoch rows, given as three columns (trial_id, epoch, val_loss):
    how `analyze` and the bench read a finished sweep's late losses back from its epochs/."""
    by: Dict[str, Dict[int, Optional[float]]] = {}
    for tid, epoch, loss in zip(trial_ids, epochs, losses):
        by.setdefault(tid, {})[int(epoch)] = loss
    return {tid: late_mean(values) for tid, values in by.items()}


POOL = 3    # confirm.rank_by late_val_loss: the finalists come from the search's POOL x top best,
FIFTH = 5   # and from no more than its top fifth: a search of a few runs has chance-level ones among
            # its six best, and a run stuck at chance can read a lower loss than a confident good one


def pool_size(searched: int, top: int) -> int:
    """How many of the search's best (of ``searched`` distinct configurations) late_val_loss chooses
    the ``top`` finalists from: POOL x top, at most its top fifth, at least ``top`` (then the
    metric's top are the finalists). 32 trials and two finalists: six, as bench/confirm.py measured."""
    return min(POOL * top, max(top, searched // FIFTH))


def late_chooses(late: Sequence[Optional[float]], top: int) -> bool:
    """Whether the late losses of a pool (None for a run cut short or fitted) choose the ``top``
    finalists: a pool wider than them, every one of it trained its whole schedule."""
    return len(late) > top and all(v is not None for v in late)


def choose(pool: Sequence, late_of, top: int) -> list:
    """The ``top`` finalists among ``pool`` (the search's best by its metric, best first,
    ``pool_size`` of them) as confirm.rank_by late_val_loss chooses them: where every one of them trained its
    whole schedule (``late_of``: an item -> its late val_loss, None for a run cut short or fitted to
    a time budget, whose late epochs do not compare), the ``top`` with the lowest late val_loss (an
    unfinite one last); else the metric's first ``top``. The metric keeps out a run whose loss is low
    but whose accuracy is not; the late loss, read over half the epochs where the metric's best is
    one epoch's, picks among those it lets in: over twenty-five sweeps of bench/confirm.py the
    truest of two finalists so chosen was 0.10 pp below the best of six, against 0.17 pp for the
    metric's first two."""
    late = [late_of(x) for x in pool]
    if not late_chooses(late, top):
        return list(pool[:top])
    key = [(v if math.isfinite(v) else math.inf, i) for i, v in enumerate(late)]
    return [pool[i] for _, i in sorted(key)[:top]]


def whole_run(status: str, stop_reason: str) -> bool:
    """A search trial that trained its whole schedule, unfitted: its final model is one seed's
    confirmation run of its settings (the search's seed; every search trial shares it, so the
    finalists' search runs are paired like the new seeds' runs)."""
    return status == "completed" and str(stop_reason or "").startswith(WHOLE)


def t_half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Half the width of a t interval on the mean of ``n`` values with spread ``sd``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    from scipy.special import stdtrit   # Student's t quantile: scipy.stats would cost a second to import
    return float(stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)


def step_of(values: Sequence[float], metric: str) -> float:
    """The step between the values an accuracy takes, 1/n on n validation images: the least n up
    to 10,000 that all ``values`` fit as k/n. 0 for another metric, or where nothing pins it
    (no value strictly between 0 and 1, or none fits)."""
    vals = [v for v in values if math.isfinite(v)]
    if not metric.endswith("_acc") or not any(0.0 < v < 1.0 for v in vals):
        return 0.0
    for n in range(2, 10_001):
        if all(abs(v * n - round(v * n)) < 1e-3 for v in vals):
            return 1.0 / n
    return 0.0


def floored(sd: float, step: float, pair: bool = False) -> float:
    """A spread no smaller than the rounding's own: a reading on a grid of ``step`` (an accuracy
    on few validation images) carries a uniform error of sd step/sqrt(12), a difference of two
    step/sqrt(6). Seeds that all read the same (common on 30 images) otherwise gave a zero-width
    interval ("better by 36.67 points, +36.67 to +36.67")."""
    if not step or not math.isfinite(sd):
        return sd
    return max(sd, step / math.sqrt(6.0 if pair else 12.0))


def within_range(lo: float, hi: float, metric: str, difference: bool = False) -> Tuple[float, float]:
    """A t interval cut to the values the metric can take: a mean accuracy lies in [0, 1], a
    difference of two in [-1, 1], and a mean loss is not negative. The true value lies there, so
    the cut interval covers it as often as the t interval; uncut, two seeds' interval on an
    accuracy read like "-0.57 to 1.24"."""
    if metric.endswith("_acc"):
        return max(lo, -1.0 if difference else 0.0), min(hi, 1.0)
    if metric.endswith("_loss") and not difference:
        return max(lo, 0.0), hi
    return lo, hi


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd


@dataclass
class Finalist:
    trial_id: str                  # the search trial whose settings these are
    hparams: Dict[str, object]
    search_value: float            # its best value in the search (one look at the validation set)
    by_seed: Dict[int, float] = field(default_factory=dict)    # final-epoch metric of each seed's model
    loss_by_seed: Dict[int, float] = field(default_factory=dict)   # and val_loss: ties go to the lower
    test_by_seed: Dict[int, float] = field(default_factory=dict)
    runs: Dict[int, str] = field(default_factory=dict)         # seed -> confirmation trial id
    unfinished: int = 0            # seeds whose run did not reach the end of its schedule
    own: Optional[int] = None      # the seed of its own search run, where that counts (add_search_run)
    step: float = 0.0              # the metric's resolution (step_of), which floors the spread

    def _new(self, values: Dict[int, float]) -> List[float]:
        """The new seeds' values: those no selection has read (the search's run chose the finalists)."""
        return [v for s, v in values.items() if s != self.own] or list(values.values())

    @property
    def new_mean(self) -> float:
        """The new seeds' mean, shown beside the mean of every seed: the search's own run made it a
        finalist, so it may read high."""
        return mean_sd(self._new(self.by_seed))[0]

    @property
    def mean(self) -> float:
        return mean_sd(list(self.by_seed.values()))[0]

    @property
    def sd(self) -> float:
        return mean_sd(list(self.by_seed.values()))[1]

    @property
    def half(self) -> float:
        return t_half_width(floored(self.sd, self.step), len(self.by_seed))

    @property
    def test(self) -> float:
        return mean_sd(list(self.test_by_seed.values()))[0]

    @property
    def loss(self) -> float:
        return mean_sd(list(self.loss_by_seed.values()))[0]


@dataclass
class Verdict:
    finalists: List[Finalist]      # best mean first
    metric: str
    mode: str
    seeds: List[int]
    diff: float = math.nan         # first minus second, paired, in the metric's direction
    half: float = math.nan
    paired_n: int = 0
    search_seeds: List[int] = field(default_factory=list)   # seeds whose runs are the search's own
    spread_floored: bool = False   # the paired differences' spread was below the metric's rounding
    by: str = ""                   # what ranked them and what the verdict compares: val_loss, or the metric ("")
    metric_diff: float = math.nan  # where ``by`` ranked them: the metric's paired difference, first minus second

    @property
    def ranked(self) -> str:
        return self.by or self.metric

    def seeds_text(self) -> str:
        """``seeds 7 (the search's own runs) and 1007 (new)``."""
        return seeds_phrase(self.seeds, self.search_seeds)

    def basis(self) -> str:
        """What ranked the finalists, in words (the last lines and smith's report say it)."""
        what = f"ranked by the mean {self.ranked}" + (" (val_loss over each run's second half)"
                                                     if self.by == LATE else "")
        if not self.search_seeds:
            return f"{what} over the new seeds"
        if all(f.own is not None for f in self.finalists if f.by_seed):
            return f"{what} over the seeds they share, the search's own runs among them"
        return f"{what} over the seeds they share (not every finalist's search run trained its whole schedule)"

    @property
    def winner(self) -> Optional[Finalist]:
        return self.finalists[0] if self.finalists and self.finalists[0].by_seed else None

    @property
    def separated(self) -> bool:
        return self.paired_n >= 2 and math.isfinite(self.half) and self.diff - self.half > 0

    def to_dict(self) -> dict:
        """For the manifest and smith's report: plain numbers (NaN as None)."""
        def num(v):
            return None if v is None or not math.isfinite(v) else round(float(v), 6)
        return {"metric": self.metric, "ranked_by": self.ranked, "seeds": list(self.seeds), "search_seeds": list(self.search_seeds),
                "seeds_text": self.seeds_text(), "basis": self.basis(), "separated": self.separated,
                "difference": num(self.diff), "half_width": num(self.half), "paired_seeds": self.paired_n,
                "metric_difference": num(self.metric_diff),
                "verdict": self.text(),
                "finalists": [{"trial": f.trial_id, "search": num(f.search_value), "mean": num(f.mean),
                               "new_mean": num(f.new_mean), "mean_val_loss": num(f.loss),
                               "sd": num(f.sd), "half_width": num(f.half), "test": num(f.test),
                               "by_seed": {str(k): num(v) for k, v in f.by_seed.items()},
                               "test_by_seed": {str(k): num(v) for k, v in f.test_by_seed.items()}}
                              for f in self.finalists]}

    def scale(self, name: str = "") -> Tuple[float, str]:
        """What a difference in ``name`` (default: the metric) is multiplied by, and its unit."""
        name = name or self.metric
        return (100.0, " points") if name.endswith("_acc") else (1.0, "" if name == self.metric else f" {name}")

    def figure(self, value: float, name: str = "", signed: bool = True, unit: bool = True) -> str:
        """A difference in ``name`` (default: the metric) as the verdict writes it: points of an
        accuracy to two places, anything else to four, and its unit."""
        name = name or self.metric
        k, label = self.scale(name)
        return f"{value * k:{'+' if signed else ''}.{2 if name.endswith('_acc') else 4}f}{label if unit else ''}"

    def text(self) -> str:
        """The last lines' verdict between the first two finalists."""
        if len(self.finalists) >= 2 and not self.finalists[1].by_seed and self.finalists[1].unfinished:
            return (f"verdict: nothing to compare {self.finalists[0].trial_id} with: the runs of "
                    f"{self.finalists[1].trial_id} were cut short")
        if len(self.finalists) < 2 or not self.finalists[1].by_seed:
            return "verdict: one finalist confirmed; nothing to compare it with"
        first, second = self.finalists[0].trial_id, self.finalists[1].trial_id
        if self.paired_n < 2:
            return (f"verdict: cannot tell {first} and {second} apart: {self.paired_n} shared seed "
                    "(confirm.seeds of 2 or more gives an interval)")
        lo, hi = within_range(self.diff - self.half, self.diff + self.half, self.ranked, difference=True)
        by = self.ranked
        band = f"95% interval {self.figure(lo, by, unit=False)} to {self.figure(hi, by)}, paired over {self.paired_n} seeds" + \
            ("; the seeds agree to within one validation image, whose rounding sets the spread"
             if self.spread_floored else "")
        if self.by and math.isfinite(self.metric_diff):   # the metric's own paired difference, beside
            band += f"; {self.metric} {self.figure(self.metric_diff)} on the same seeds"
        if self.separated:
            return f"verdict: {first} is better than {second} by {self.figure(self.diff, by, signed=False)} ({band})"
        return (f"verdict: cannot tell {first} and {second} apart at this budget: {self.figure(self.diff, by)} ({band}); "
                "they lie within the noise floor, and more seeds (confirm.seeds) would narrow it")


def seeds_phrase(seeds: Sequence[int], search_seeds: Sequence[int] = ()) -> str:
    own = [s for s in seeds if s in set(search_seeds)]
    new = [s for s in seeds if s not in set(search_seeds)]
    parts = ([f"{', '.join(map(str, own))} (the search's own runs)"] if own else []) \
        + ([f"{', '.join(map(str, new))} (new)"] if new else [])
    return f"seed{'s' if len(seeds) > 1 else ''} " + " and ".join(parts)


def add_run(f: Finalist, seed: int, status: str, value: Optional[float], loss: Optional[float],
            test: Optional[float], mode: str, trial_id: str = "") -> None:
    """One confirmation run of finalist ``f``: its final value counts where it trained its whole
    schedule; a diverged seed counts as the worst value (it is that configuration's result too);
    one cut short (the time budget, an interrupt) is left out and counted."""
    seed = int(seed)
    if trial_id:
        f.runs[seed] = trial_id
    if status == "diverged":
        f.by_seed[seed] = -math.inf if mode == "max" else math.inf
        f.loss_by_seed[seed] = math.inf
        return
    if status != "completed" or value is None or not math.isfinite(value):
        f.unfinished += 1
        return
    f.by_seed[seed] = value
    f.loss_by_seed[seed] = loss if loss is not None and math.isfinite(loss) else math.inf
    if test is not None and math.isfinite(test):
        f.test_by_seed[seed] = test


def add_search_run(f: Finalist, status: str, stop_reason: str, seed: int, value: Optional[float],
                   loss: Optional[float], mode: str) -> None:
    """Finalist ``f``'s own search run as one more seed's, where it trained its whole schedule
    (``whole_run``): it joins the mean, the ranking, the spread, the interval and the pairing, but
    not the test figure or the checkpoint kept; ``f.own`` says whether it counted."""
    if not whole_run(status, stop_reason) or value is None or not math.isfinite(value):
        return
    add_run(f, seed, "completed", value, loss, None, mode)
    f.own = int(seed)


def verdict_of(finals: Sequence[Finalist], metric: str, mode: str, seeds: Sequence[int],
               by: str = "") -> Verdict:
    """The finalists ranked by their mean over the seeds every one of them finished, and any seed
    they diverged on, so that the ranking is the paired comparison; and the paired difference of
    the first two over the seeds both finished, the search's own whole runs among them
    (``add_search_run``). What is averaged: ``by`` "late_val_loss" or "val_loss" (each run's loss
    as ``add_run`` was given it: ``late_mean`` of its epochs, or its final epoch's; ties to the
    metric), or the metric ("metric" or "", as confirm.rank_by; ties to the lower loss). Every
    validation image's loss moves where an accuracy moves by whole images, and the late epochs'
    mean carries less of one epoch's luck: over twenty-five sweeps of bench/confirm.py, each truth
    seed in turn as the new seed, the late loss left 0.29 pp of regret, the final loss 0.34, the
    final accuracy 0.38 (single-run selection 0.48; 0.29, 0.33, 0.37 and 0.45 on the ten of them
    run after the choice; docs/benchmarks.md, "... and the late epochs' loss")."""
    search_seeds = {f.own for f in finals if f.own is not None}
    by = "" if by in ("", "metric", metric) else by
    sign = -1.0 if mode == "max" else 1.0
    done = [set(f.by_seed) for f in finals if f.by_seed]
    common = set.intersection(*done) if done else set()

    def over_common(values: Dict[int, float]) -> float:
        """The mean over the shared seeds, and any seed it diverged on (that counts against it always)."""
        shared = [v for s, v in sorted(values.items()) if s in common or not math.isfinite(v)]
        return mean_sd(shared or list(values.values()))[0]

    def key(f: Finalist):
        if not f.by_seed:
            return (True, 0.0, 0.0)
        value = sign * over_common(f.by_seed)
        loss = over_common(f.loss_by_seed) if f.loss_by_seed else 0.0
        return (False, loss, value) if by else (False, value, loss)

    def paired(va: Dict[int, float], vb: Dict[int, float], better: float) -> List[float]:
        """The first's advantage on each seed both finished (``better``: -1 where more is better)."""
        return [d for d in (-better * (va[s] - vb[s]) for s in sorted(set(va) & set(vb))) if math.isfinite(d)]

    ranked = sorted(finals, key=key)
    verdict = Verdict(list(ranked), metric, mode, sorted(set(seeds) | search_seeds),
                      search_seeds=sorted(search_seeds), by=by)
    step = step_of([v for f in finals for v in f.by_seed.values()], metric)
    for f in finals:
        f.step = step
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        diffs, pair_step = (paired(a.loss_by_seed, b.loss_by_seed, 1.0), 0.0) if by \
            else (paired(a.by_seed, b.by_seed, sign), step)
        verdict.paired_n = len(diffs)
        if diffs:
            verdict.diff, sd = mean_sd(diffs)
            verdict.half = t_half_width(floored(sd, pair_step, pair=True), len(diffs))
            verdict.spread_floored = len(diffs) > 1 and floored(sd, pair_step, pair=True) > sd
        if by:
            metric_diffs = paired(a.by_seed, b.by_seed, sign)
            verdict.metric_diff = mean_sd(metric_diffs)[0] if metric_diffs else math.nan
    return verdict


def test_metric(metric: str) -> str:
    return "test_loss" if metric.endswith("_loss") else "test_acc"
