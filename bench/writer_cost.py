"""What writing results costs: the same real sweep with tunesmith's Parquet and TensorBoard
writers on and off, alternated (off, on, off, on) on one Ray instance; prints each wall time
and the writers' share. Target: at most 5% of the sweep's wall time.

    .venv/bin/python bench/writer_cost.py [--trials 12] [--epochs 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics

from common import start, timed_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    cluster, root = start()

    def sweep(name: str, write: bool) -> float:
        return timed_sweep({
            "name": name, "seed": 0, "model": {"width": 16},
            "trainer": {"epochs": args.epochs, "preview_every": 4},
            "search": {"algorithm": "random", "num_samples": args.trials,
                       "space": {"lr": {"loguniform": [0.01, 0.5]}, "weight_decay": {"choice": [0, 1e-4]}}},
            "asha": {"enabled": False}}, cluster, root, write_results=write)

    # Warm-up with writers on: it pays the one-time tensorboardX/torch import in the driver,
    # which `tunesmith run` overlaps with Ray's start-up (orchestrator.tensorboard.preload).
    sweep("warmup", True)
    off, on = [], []
    for r in range(args.rounds):
        off.append(sweep(f"off{r}", False))
        on.append(sweep(f"on{r}", True))
    t_off, t_on = statistics.median(off), statistics.median(on)
    share = (t_on - t_off) / t_on * 100
    print(f"writers off: {' '.join(f'{t:.2f}s' for t in off)}  (median {t_off:.2f}s)")
    print(f"writers on:  {' '.join(f'{t:.2f}s' for t in on)}  (median {t_on:.2f}s)")
    print(f"writers' share of wall time: {share:+.1f}% ({args.trials} trials x {args.epochs} epochs, "
          f"{args.trials * args.epochs} reports); target <= 5%: {'met' if share <= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
