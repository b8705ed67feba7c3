"""Per-trial overhead of a tunesmith sweep against plain Ray Tune defaults.

Runs N trivial trials (each reports one result) through tunesmith's own Tuner assembly,
results writers included; the same through a bare `Tuner` with reuse_actors and the auto
loggers off (Tune's own floor on this machine); and M through plain `Tuner` defaults, side by
side on one Ray instance. The first two alternate for --rounds rounds and their medians are
compared: Tune's timing varies by a third from one sweep to the next here. Target (#7): at
most 25 ms per trial with the writers on.

    .venv/bin/python bench/overhead.py [--trials 100] [--rounds 3] [--baseline-trials 20]
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
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--baseline-trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    cluster, root = start()
    from ray import tune

    def ours(n: int, name: str) -> float:
        raw = {"name": name, "trainer": {"epochs": 1},
               "search": {"algorithm": "random", "num_samples": n, "space": {"lr": {"uniform": [0.01, 1.0]}}}}
        return timed_sweep(raw, cluster, root, trainable=trivial) / n * 1000

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
            return (time.perf_counter() - began) / n * 1000
        finally:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = saved

    ours(10, "warmup")   # worker start-up and imports are paid once per sweep, not per trial
    plain(10, "warmup-bare", bare=True)
    mine, floor = [], []
    for r in range(args.rounds):
        mine.append(ours(args.trials, f"ours{r}"))
        floor.append(plain(args.trials, f"bare{r}", bare=True))
        print(f"round {r + 1}: tunesmith {mine[-1]:.1f} ms, bare Tune {floor[-1]:.1f} ms per trial", flush=True)
    ms_ours, ms_floor = statistics.median(mine), statistics.median(floor)
    ms_plain = plain(args.baseline_trials, "plain")
    print(f"tunesmith:           {ms_ours:7.1f} ms per trial (median of {args.rounds} x {args.trials} trivial "
          "trials, writers on)")
    print(f"bare Tune:           {ms_floor:7.1f} ms per trial (reuse_actors, auto loggers off, no callbacks)")
    print(f"plain Tune defaults: {ms_plain:7.1f} ms per trial ({args.baseline_trials} trivial trials)")
    print(f"tunesmith adds {ms_ours - ms_floor:+.1f} ms per trial to Tune's floor; plain / tunesmith = "
          f"{ms_plain / ms_ours:.1f}x; target <= 25 ms per trial: {'met' if ms_ours <= 25 else 'NOT met'}")


if __name__ == "__main__":
    main()
