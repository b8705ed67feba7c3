"""Do ASHA's rungs judge trials by what they will become? Spearman rank correlation between each
trial's validation accuracy at each rung and its final accuracy, for three designs:

- 1cycle planned over the whole run, rungs from grace 1 (plain epoch-rung ASHA: epochs 1, 3);
- budget-aware 1cycle (segments that end at those rungs, trainables/schedules.py);
- 1cycle over the whole run, rungs from a grace period of a third of the run (epochs 3, 9 of
  10): the same curves as the first, read later.

Every trial runs to the end (no pruning), so each has a final value to rank against. The same
configurations (lr log-uniform in [1e-3, 1], momentum bound from Smith's grid) and seeds are
used for both schedules.

    .venv/bin/python bench/rung_correlation.py [--datasets digits glyphs] [--trials 10] [--epochs 10]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def curve(dataset: str, epochs: int, lr: float, momentum: float, milestones: tuple) -> list:
    import torch
    torch.set_num_threads(1)
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    cfg = TrainConfig.from_dict({"dataset": {"name": dataset}, "trainer": {
        "epochs": epochs, "lr": lr, "max_momentum": momentum, "milestones": list(milestones)}})
    # a diverged run (NaN) ranks below every other, and keeps that value to the end
    out = [m["val_acc"] if m["val_acc"] == m["val_acc"] else 0.0 for m in Trainer(cfg, cpu_threads=1).run()]
    return out + [out[-1]] * (epochs - len(out))


def spearman(a, b) -> float:
    """nan when every trial reads the same at the rung: the rung ranks nothing."""
    from scipy.stats import spearmanr
    if len(set(a)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "glyphs"])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    from tunesmith.trainables.schedules import rung_milestones
    ms = rung_milestones(args.epochs, 1, 3)
    rungs = list(ms[:-1])
    rng = random.Random(0)
    configs = [(10 ** rng.uniform(-3, 0), rng.choice([0.99, 0.97, 0.95, 0.9])) for _ in range(args.trials)]
    print(f"{args.trials} trials, {args.epochs} epochs, rungs at epochs {rungs} (ASHA grace 1, reduction 3)")
    with ProcessPoolExecutor(2) as pool:
        for ds in args.datasets:
            whole = None
            third = max(1, args.epochs // 3)
            late = [third * 3 ** k for k in range(8) if third * 3 ** k < args.epochs]   # Tune's ASHA rungs
            for label, milestones, at in (("1cycle over the whole run", (), rungs), ("budget-aware 1cycle", ms, rungs),
                                          ("1cycle, grace a third", None, late)):
                if milestones is None:
                    curves = whole   # the same runs, judged at later rungs
                else:
                    curves = list(pool.map(curve, [ds] * len(configs), [args.epochs] * len(configs),
                                           [c[0] for c in configs], [c[1] for c in configs],
                                           [milestones] * len(configs)))
                if milestones == ():
                    whole = curves
                final = [c[-1] for c in curves]
                rhos = [spearman([c[r - 1] for c in curves], final) for r in at]
                print(f"{ds:<8} {label:<27} " + "  ".join(f"epoch {r}: rho {x:+.2f}" if x == x else f"epoch {r}: all tied"
                                               for r, x in zip(at, rhos))
                      + f"   best final {max(final):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
