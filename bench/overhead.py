"""Per-trial overhead of a tunesmith sweep against plain Ray Tune defaults.

Runs trivial trials (each reports one result) through tunesmith's own Tuner assembly, results
writers included; the same through a bare `Tuner` with reuse_actors and the auto loggers off
(Tune's own floor on this machine); and --baseline-trials through plain `Tuner` defaults, side
by side on one Ray instance. Each round runs a sweep of --small trials and one of --trials, for
both; a sweep's wall time is a start-up (the first actors' worker processes, Tune's set-up) plus
a cost per trial, and the two sizes separate them: the per-trial cost is the slope between them,
the start-up what is left of the small sweep. Rounds alternate and their medians are compared:
Tune's timing varies by a third from one sweep to the next here. Target (#7): at most 25 ms per
trial with the writers on.

    .venv/bin/python bench/overhead.py [--trials 400] [--small 10] [--rounds 3] [--baseline-trials 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from common import start, timed_sweep


def trivial(config):
    from ray import tune
    tune.report({"val_acc": config["lr"], "val_loss": 1 - config["lr"]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--baseline-trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not 0 < args.small < args.trials:
        ap.error(f"--small = {args.small}: must be above 0 and below --trials ({args.trials})")

    cluster, root = start()
    from ray import tune

    def ours(n: int, name: str) -> float:
        raw = {"name": name, "trainer": {"epochs": 1},
               "search": {"algorithm": "random", "num_samples": n, "space": {"lr": {"uniform": [0.01, 1.0]}}}}
        return timed_sweep(raw, cluster, root, trainable=trivial)

    def plain(n: int, name: str, bare: bool = False) -> float:
        saved = os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
        if bare:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        try:
            tuner = tune.Tuner(trivial, param_space={"lr": tune.uniform(0.01, 1.0)},
                               tune_config=tune.TuneConfig(num_samples=n, metric="val_acc", mode="max",
                                                           reuse_actors=bare, max_concurrent_trials=2 if bare else None),
                               run_config=tune.RunConfig(storage_path=root, name=name, verbose=0))
            began = time.perf_counter()
            tuner.fit()
            return time.perf_counter() - began
        finally:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = saved

    def split(small_s: float, large_s: float):
        """(ms per trial, start-up seconds) of a sweep, from a small and a large one."""
        per_trial = (large_s - small_s) / (args.trials - args.small)
        return per_trial * 1000, small_s - args.small * per_trial

    ours(10, "warmup")   # the driver's first imports are paid once per process, not per sweep
    plain(10, "warmup-bare", bare=True)
    rows = {"tunesmith": [], "bare Tune": []}
    for r in range(args.rounds):
        for who, sweep in (("tunesmith", ours), ("bare Tune", lambda n, name: plain(n, name, bare=True))):
            small, large = sweep(args.small, f"{who[0]}{r}s"), sweep(args.trials, f"{who[0]}{r}l")
            ms, startup = split(small, large)
            rows[who].append((ms, startup, large / args.trials * 1000))
        print(f"round {r + 1}: " + "; ".join(
            f"{who} {v[-1][0]:.1f} ms per trial + {v[-1][1]:.2f} s start-up ({v[-1][2]:.1f} ms per trial "
            f"over {args.trials})" for who, v in rows.items()), flush=True)
    med = {who: [statistics.median(x[i] for x in v) for i in range(3)] for who, v in rows.items()}
    ms_plain = plain(args.baseline_trials, "plain") / args.baseline_trials * 1000
    for who, (ms, startup, whole) in med.items():
        print(f"{who + ':':<20} {ms:6.1f} ms per trial, {startup:5.2f} s start-up per sweep; {whole:6.1f} ms per trial "
              f"with the start-up spread over {args.trials} (medians of {args.rounds} rounds)")
    print(f"plain Tune defaults: {ms_plain:6.1f} ms per trial over {args.baseline_trials} trivial trials, start-up "
          "included")
    ms_ours, ms_floor = med["tunesmith"][0], med["bare Tune"][0]
    ours_at_baseline = ms_ours + med["tunesmith"][1] * 1000 / args.baseline_trials   # the same sweep size
    print(f"tunesmith adds {ms_ours - ms_floor:+.1f} ms per trial to Tune's floor; over {args.baseline_trials} "
          f"trials, start-up included, plain defaults take {ms_plain / ours_at_baseline:.1f}x tunesmith's "
          f"{ours_at_baseline:.1f} ms per trial; target <= 25 ms per trial: {'met' if ms_ours <= 25 else 'NOT met'}")


if __name__ == "__main__":
    main()
