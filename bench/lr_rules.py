"""Which LR range-test rule should set the 1cycle max LR by default? The evidence, per dataset.

For each dataset of the quality benchmark: the range test at its default length, then one
1cycle run of the default model at each rule's suggested max LR, beside an oracle grid of max
LRs (half-decade steps). Prints, per dataset, each rule's LR and best validation accuracy, and
each rule's shortfall from the grid's best; the rule with the smallest worst-case shortfall is
the one to make lr-find's default (trainables/lr_range_test.py DEFAULT_PICK; smith's, SMITH_PICK, is
chosen on bench/quality.py, where the rule anchors a two-decade search).

    .venv/bin/python bench/lr_rules.py [--datasets digits glyphs shapes letters] [--epochs 6]
                                       [--folder NAME=DIR]

Runs two trainings at a time, one thread each, as a sweep on 2 cores would.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID = [10 ** (e / 2) for e in range(-7, 1)]   # 3e-4 ... 1


def _cfg(dataset: dict, epochs: int, lr: float = 0.05):
    """``dataset``: the spec's dataset section."""
    from tunesmith.trainables.config import TrainConfig
    return TrainConfig.from_dict({"dataset": dataset, "trainer": {"epochs": epochs, "lr": lr}})


def train(dataset: dict, epochs: int, lr: float) -> float:
    import torch
    torch.set_num_threads(1)
    from tunesmith.trainables.trainer import Trainer
    best = 0.0
    for m in Trainer(_cfg(dataset, epochs, lr), cpu_threads=1).run():
        if m["val_acc"] == m["val_acc"]:
            best = max(best, m["val_acc"])
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["digits", "glyphs", "shapes", "letters"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folder", action="append", default=[], metavar="NAME=DIR",
                    help="an image folder of your own as one more dataset (repeatable)")
    args = ap.parse_args(argv)
    sections = {ds: {"name": ds} for ds in args.datasets}
    for item in args.folder:
        name, sep, folder = item.partition("=")
        if not sep or not os.path.isdir(folder):
            ap.error(f"--folder {item!r}: NAME=DIR, with DIR an image folder")
        sections[name] = {"name": "imagefolder", "data_dir": os.path.abspath(folder)}
    from tunesmith.trainables.lr_range_test import range_test
    shortfall = {}
    with ProcessPoolExecutor(2) as pool:
        for ds, section in sections.items():
            curve = range_test(_cfg(section, args.epochs), cpu_threads=2)
            if curve.problem:
                print(f"{ds}: range test uninformative: {curve.problem}", flush=True)
                continue
            rules = curve.suggest()
            lrs = sorted(set(GRID) | set(rules.values()))
            acc = dict(zip(lrs, pool.map(train, [section] * len(lrs), [args.epochs] * len(lrs), lrs)))
            top = max(acc[lr] for lr in GRID)
            print(f"\n{ds}: range test {len(curve.lrs)} steps, {curve.seconds:.1f}s; grid best {top:.4f} at "
                  f"lr {max(GRID, key=acc.get):.3g}", flush=True)
            print("  grid: " + "  ".join(f"{lr:.2g}:{acc[lr]:.3f}" for lr in GRID))
            for name, lr in rules.items():
                shortfall.setdefault(name, []).append(top - acc[lr])
                gap = 100 * (top - acc[lr])
                print(f"  {name:<9} lr {lr:<9.3g} val_acc {acc[lr]:.4f}  ({abs(gap):.1f} pp "
                      f"{'below' if gap >= 0 else 'above'} the grid's best)", flush=True)
    print("\nrule       worst shortfall  mean shortfall (percentage points below each dataset's grid best)")
    for name, xs in sorted(shortfall.items(), key=lambda kv: max(kv[1])):
        print(f"{name:<10} {100 * max(xs):>14.1f}  {100 * sum(xs) / len(xs):>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
