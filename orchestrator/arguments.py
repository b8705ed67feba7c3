"""The command line's options, one function per group, shared by the subcommands that take
them (cli.py's COMMANDS table)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from tunesmith.trainables.config import ConfigError


def confirm_seeds(value: str):
    """--seeds: auto, or a whole number of new seeds from 1 to 100 (confirm.seeds' own range)."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 100:
        raise ConfigError("--seeds", value, "must be auto or a whole number from 1 to 100")
    return n


def spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set trainer.lr=0.1 (repeatable)")
    p.add_argument("--name", help="sweep name (default: the spec's name or file name)")
    p.add_argument("--results-dir", help="results location: a path or a URI such as s3://bucket/sweeps")

def cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join this Ray cluster (e.g. auto or HEAD:6379) instead of starting "
                                     "a private local instance bound to 127.0.0.1")
    p.add_argument("--mlflow", metavar="URI", help="also track in MLflow at this tracking URI "
                                                  "(tracking.mlflow in the spec)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local instance (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs for the local instance (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1")
    p.add_argument("--worker-logs", action="store_true", help="show the trials' own output")

def lr_find_args(p: argparse.ArgumentParser, default_pick: Optional[str] = None) -> None:
    p.add_argument("--start", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--steps", type=int, default=None,
                   help="mini-batches (default: one epoch or 300, whichever is larger, within --max-seconds; "
                        "extended when the curve does not fall)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap of a default-length test (default 60)")
    p.add_argument("--linear", action="store_true", help="raise the LR linearly instead of exponentially")
    p.add_argument("--val-loss", action="store_true", help="measure the loss on a fixed held-out subset (512 samples)")
    from tunesmith.trainables.lr_range_test import DEFAULT_PICK, SUGGESTERS
    first = default_pick or DEFAULT_PICK
    p.add_argument("--pick", default=None, help=f"suggestion that sets the max LR: {first} (default), "
                                                + ", ".join(r for r in SUGGESTERS if r != first))

def smith_args(p: argparse.ArgumentParser) -> None:
    from tunesmith.trainables.lr_range_test import SMITH_PICK
    lr_find_args(p, SMITH_PICK)
    p.add_argument("--short-epochs", type=int, help="epochs of stage 2's runs (default: trainer.epochs; ASHA's "
                                                    "budget-aware rungs make most of them short)")
    p.add_argument("--samples", type=int, help="stage-2 trials (default 16; with time_budget_s, as many as fit)")
    p.add_argument("--weight-decay", choices=("auto", "deep", "shallow"), default="auto",
                   help="Smith's grid for deep (ResNets) or shallow networks (default: by model)")
    p.add_argument("--final", action="store_true", help="stage 3: train the best configuration full length")
    p.add_argument("--range", nargs=2, type=float, metavar=("BELOW", "ABOVE"),
                   help="stage 2's LR range in decades below and above the range test's max LR (default 0.5 1.5)")
    p.add_argument("--coupling", choices=("independent", "effective"), default="independent",
                   help="stage 2's LR and momentum: 'independent' (default) draws the two apart; 'effective' "
                        "spreads the effective step lr/(1-m) over the range, each trial's LR scaled by "
                        "(1-m)/(1-trainer.momentum)")
    p.add_argument("--search", choices=("auto", "lr", "joint"), default="auto",
                   help="what stage 2 draws: 'lr' the LR alone (1cycle's momentum and trainer.weight_decay "
                        "held), 'joint' the LR with momentum's bound and weight decay, 'auto' (default) the "
                        "LR alone where the time budget affords few trials")
    p.add_argument("--no-pilot", action="store_true",
                   help="on one machine, do not train stage 2's centre point in this process while Ray starts "
                        "its trial workers (the pilot)")

def analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a results directory (or URI), or one sweep's folder in it")
    p.add_argument("--sweep", action="append", help="only this sweep (repeatable; default: all)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--top", type=int, default=5, help="how many best trials to list and plot")
    p.add_argument("--plots", help="folder for the PNG plots (default: RESULTS/_analysis)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    p.add_argument("--mlflow", metavar="URI", help="log the plots (and the page) to each sweep's MLflow parent run")
    p.add_argument("--mlflow-experiment", default="tunesmith", help="the MLflow experiment (default tunesmith)")
    p.add_argument("--confirm", type=int, metavar="K", help="train the sweep's K best configurations again with "
                   "--seeds new seeds each, into its folder, and give the verdict over all its confirmation runs")
    p.add_argument("--seeds", default="auto", metavar="S", help="--confirm: new seeds per "
                   "configuration, 1 to 100, beside the search's own whole run of each; auto (the default), as "
                   "confirm.seeds: two where they fit in one round of the workers or in 30%% of the search's wall "
                   "time, else one")
    p.add_argument("--address", help="--confirm: train on this Ray cluster instead of a private local instance")


def models_args(p) -> None:
    p.add_argument("pattern", nargs="?", default="", help="a part of the name, or a glob: resnet, 'timm:convnext*'")


def cmd_models(args) -> int:
    from tunesmith.orchestrator.catalogue import cmd_models as run
    return run(args)


def cmd_spaces(args) -> int:
    from tunesmith.search_spaces.presets import PRESETS
    for name in sorted(PRESETS):
        p = PRESETS[name]
        print(f"{name}\n  {p.summary}\n  source: {p.source}")
        for key, dim in p.space.items():
            (kind, vals), = dim.items()
            print(f"  search {key}: {kind} {'search.lr_band' if vals == 'band' else vals}")
        for key, value in p.settings.items():
            print(f"  sets trainer.{key}: {value}")
        print()
    print("use: search: {presets: [momentum, weight_decay_deep]}; a search.space entry of the same name overrides")
    return 0


def cmd_schema(args) -> int:
    import json
    from tunesmith.orchestrator.spec import json_schema
    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return 0
    tmp = args.output + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:   # whole or not at all
            fh.write(text)
        os.replace(tmp, args.output)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConfigError("--output", args.output, exc.strerror or str(exc)) from None
    print(f"wrote {args.output}; start a spec with: # yaml-language-server: $schema={args.output}")
    return 0
