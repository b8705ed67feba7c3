"""Per-trial overhead of a tunesmith sweep against plain Ray Tune defaults.

Runs N trivial trials (each reports one result) through tunesmith's own Tuner assembly,
results writers included, and M through plain `Tuner` defaults, side by side on one Ray
instance, and prints ms per trial for each and their ratio. Target: <= 50 ms per trial.

    .venv/bin/python bench/overhead.py [--trials 100] [--baseline-trials 20]
"""
from __future__ import annotations

import argparse
import os
import time

from common import start, timed_sweep


def trivial(config):
    from ray import tune
    tune.report({"val_acc": config["lr"], "val_loss": 1 - config["lr"]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--baseline-trials", type=int, default=20)
    args = ap.parse_args()

    cluster, root = start()
    from ray import tune

    def ours(n: int, name: str) -> float:
        raw = {"name": name, "trainer": {"epochs": 1},
               "search": {"algorithm": "random", "num_samples": n, "space": {"lr": {"uniform": [0.01, 1.0]}}}}
        return timed_sweep(raw, cluster, root, trainable=trivial) / n * 1000

    def plain(n: int) -> float:
        saved = os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
        try:
            tuner = tune.Tuner(trivial, param_space={"lr": tune.uniform(0.01, 1.0)},
                               tune_config=tune.TuneConfig(num_samples=n, metric="val_acc", mode="max"),
                               run_config=tune.RunConfig(storage_path=root, name="plain", verbose=0))
            began = time.perf_counter()
            tuner.fit()
            return (time.perf_counter() - began) / n * 1000
        finally:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = saved

    ours(10, "warmup")   # worker start-up and imports are paid once per sweep, not per trial
    ms_ours = ours(args.trials, "ours")
    ms_plain = plain(args.baseline_trials)
    print(f"tunesmith:          {ms_ours:7.1f} ms per trial ({args.trials} trivial trials, writers on)")
    print(f"plain Tune defaults: {ms_plain:7.1f} ms per trial ({args.baseline_trials} trivial trials)")
    print(f"ratio: plain / tunesmith = {ms_plain / ms_ours:.1f}x; target <= 50 ms per trial: "
          f"{'met' if ms_ours <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
