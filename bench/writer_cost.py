"""What writing results costs: the same real sweep with tunesmith's Parquet and TensorBoard
writers on and off, alternated (off, on, off, on, ...) on one Ray instance. Prints each wall
time, the difference by median and by minimum, and, since run-to-run noise on a 2-core machine
is of the same size as the effect, the time the writer's hooks themselves took in the driver
(LedgerCallback.busy_seconds). Target: at most 5% of the sweep's wall time.

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
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    cluster, root = start()

    busy = []

    def sweep(name: str, write: bool) -> float:
        return timed_sweep({
            "name": name, "seed": 0, "model": {"width": 16},
            "trainer": {"epochs": args.epochs, "preview_every": 4},
            "search": {"algorithm": "random", "num_samples": args.trials,
                       "space": {"lr": {"loguniform": [0.01, 0.5]}, "weight_decay": {"choice": [0, 1e-4]}}},
            "asha": {"enabled": False}}, cluster, root, write_results=write,
            on_writer=lambda w: busy.append(w.busy_seconds) if write else None)

    # Warm-up with writers on: it pays the one-time tensorboardX/torch import in the driver,
    # which `tunesmith run` overlaps with Ray's start-up (orchestrator.tb_events.preload).
    sweep("warmup", True)
    off, on = [], []
    for r in range(args.rounds):
        off.append(sweep(f"off{r}", False))
        on.append(sweep(f"on{r}", True))
    busy = busy[1:]   # the warm-up's
    t_off, t_on = statistics.median(off), statistics.median(on)
    ab = (t_on - t_off) / t_on * 100
    ab_min = (min(on) - min(off)) / min(on) * 100
    own = statistics.median(busy) / t_on * 100
    print(f"writers off: {' '.join(f'{t:.2f}s' for t in off)}  (median {t_off:.2f}s, min {min(off):.2f}s)")
    print(f"writers on:  {' '.join(f'{t:.2f}s' for t in on)}  (median {t_on:.2f}s, min {min(on):.2f}s)")
    print(f"side by side: writers add {ab:+.1f}% by median, {ab_min:+.1f}% by minimum "
          f"(run-to-run spread of the 'off' runs alone: {(max(off) - min(off)) / t_off * 100:.1f}%)")
    print(f"measured inside the driver: the writers' hooks took {statistics.median(busy):.3f}s per sweep, "
          f"{own:.1f}% of its wall time ({args.trials} trials x {args.epochs} epochs, {args.trials * args.epochs} "
          f"reports); target <= 5%: {'met' if own <= 5 and ab_min <= 5 else 'NOT met'}")

if __name__ == "__main__":
    main()
