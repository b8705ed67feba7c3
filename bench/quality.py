"""The quality benchmark: does tunesmith find a good model sooner than the alternatives, on more
than digits?

For each dataset (digits, and the generated glyphs, shapes and letters; CIFAR-10 too when
``--cifar10 DIR`` names a local copy), every contender gets the same wall-clock budget on this
machine, one after the other in the same run, each as a fresh process started the way a user
starts it:

- ``smith``:  ``tunesmith smith SPEC`` with ``time_budget_s`` = budget (all stages);
- ``smith-range``: the same with ``--range`` set by ``--smith-range BELOW ABOVE`` (default 0.5 1.0):
  another stage-2 LR range around the range test's pick, against the default in the same run;
- ``smith-coupled``: the same with ``--coupling effective``: stage 2's LR scaled by each trial's
  momentum, (1-m)/(1-trainer.momentum), so the effective step lr/(1-m) is spread over the range,
  against the default (drawn apart) in the same run;
- ``smith-steepest``: the same with ``--pick steepest``: stage 2's range around the steepest
  fall of the range test's curve instead of the default rule's pick;
- ``smith-lr``: the same with ``--search lr``: stage 2 draws the LR alone, momentum and weight
  decay held, however many trials the budget affords, against the default (joint where it
  affords 4 or more) in the same run;
- ``smith-nopilot``: the same with ``--no-pilot``: no 10-s pilot at stage 2's centre in smith's
  own process, every stage-2 trial a Tune trial, against the default in the same run;
- ``random``: ``tunesmith run SPEC``, random search, lr log-uniform in [1e-4, 1];
- ``random-ba``: the same random search under the previous ASHA default, budget-aware 1cycle
  judged from epoch 1 (``asha: {budget_aware: true, grace_period: 1}``): the evidence for
  today's default, one schedule with the first rung at a third of the run;
- ``tpe``:    ``tunesmith run SPEC``, TPE over the same range;
- ``optuna``: an in-process Optuna study (TPE sampler, median pruner) over the PyTorch
  tutorial's small CNN (LeNet), lr, momentum and batch size 4 to 64, constant LR: the
  60-line script a user would write (optuna is a bench-only extra: ``pip install -e .[bench]``).

The spec is the README's defaults plus the dataset: nothing tuned per dataset. The table gives
the best validation accuracy each reached and the seconds (from the process's start) to the
dataset's target accuracy. With ``--repeats N`` each contender runs N times per dataset, run r
with seed r (plus --first-seed; the search's draws, the initialisation and the batch order all change), and the
table shows medians (a run that never reached the target counts as never). The last lines check
the issue's bars: smith within 0.5 pp of the best contender everywhere, and on digits smith at 98%
in at most half of Optuna's time, beside Ray Tune's own floor measured in the same run (a plain
Ray Tune script's first report: no contender built on Ray Tune can be sooner) and smith's method
without Ray (its range test, then one 1cycle run in the same process: what the method itself
costs). With two or more
seeds, smith's gap to each contender is also given paired by seed (mean, standard error, 95%
interval), with a verdict on bar 1 that says "cannot tell" when the interval spans the bar: a
median of three moves by more than 0.5 pp between runs. ``--folder NAME=DIR[@TARGET]`` adds an
image folder of your own (or a held-out one) as a dataset.

    .venv/bin/python bench/quality.py [--datasets digits glyphs shapes letters] [--budget 120]
                                      [--folder NAME=DIR[@TARGET]]
                                      [--budget-digits 45] [--repeats 1] [--repeats-digits 3]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGETS = {"digits": 0.98, "glyphs": 0.90, "shapes": 0.60, "letters": 0.75, "cifar10": 0.70,
           "objects": 0.40, "materials": 0.40, "small": 0.90, "transfer": 0.40}
CONTENDERS = ("smith", "smith-range", "smith-coupled", "smith-steepest", "smith-lr", "smith-nopilot", "random", "random-ba", "tpe", "optuna",
              "smith-scratch")
# Tasks beyond a dataset by name: the spec's dataset and model sections.
# small: real handwritten digits cut to 30 training images a class (the issue's own case: 300
# images, where smith from scratch trailed an Optuna study; shapes at 30 a class left every
# contender near chance, and told nothing). transfer: ten object kinds never seen in
# pretraining, 30 images a class, fine-tuning weights that tunesmith itself trained on the ten
# kinds of ``objects`` (pretrained()); smith-scratch is smith on the same data from random weights.
TASKS = {
    "small": ({"name": "digits", "train_per_class": 30}, {}),
    "transfer": ({"name": "novel_objects", "train_per_class": 30}, {"weights": "PRETRAINED"}),
}
PRETRAIN = {"dataset": {"name": "objects", "augment": "flip_crop"},
            "trainer": {"epochs": 30, "lr": 0.05, "schedule": "one_cycle"},
            "search": {"algorithm": "random", "num_samples": 1}}
# smith-range: smith with stage 2's LR range set by --smith-range (decades below and above the
# range test's pick), to weigh a change of the default against it in one run.
# random-ba: the same random search under the previous ASHA default, budget-aware 1cycle judged
# from epoch 1, to keep the evidence for today's default (one schedule, first rung at a third of
# the run) in every run of this benchmark.
BUDGET_AWARE_ASHA = {"budget_aware": True, "grace_period": 1}
WIDE = {"loguniform": [1.0e-4, 1.0]}


def _dataset(label: str, data_dir: str = None) -> dict:
    """The spec's dataset section for a benchmark dataset: a named one, a task (TASKS), or
    (``--folder``) an image folder under the user's label."""
    from tunesmith.trainables.config import DATASETS
    if label in TASKS:
        return dict(TASKS[label][0])
    ds = {"name": label if label in DATASETS else "imagefolder"}
    if data_dir:
        ds["data_dir"] = data_dir
    return ds


def _model(label: str, contender: str = "") -> dict:
    """The spec's model section: a transfer task's weights (made once by pretrained()), except
    for smith-scratch."""
    model = dict(TASKS[label][1]) if label in TASKS else {}
    if model.get("weights") == "PRETRAINED":
        if contender == "smith-scratch":
            return {}
        model["weights"] = pretrained()
    return model


def pretrained() -> str:
    """The transfer task's weights: tunesmith's own sweep of one trial (PRETRAIN) on ``objects``,
    run once and kept in tunesmith's cache; the path is the sweep's folder, as a user would give
    model.weights (its kept checkpoint is found there)."""
    import yaml
    from tunesmith.trainables import generated
    import hashlib
    key = f"bench-pretrained-{hashlib.sha256(json.dumps(PRETRAIN, sort_keys=True).encode()).hexdigest()[:10]}"
    sweep = os.path.join(generated.cache_dir(), key, "pre")
    if os.path.exists(os.path.join(sweep, "trials.parquet")):
        return sweep
    shutil.rmtree(os.path.dirname(sweep), ignore_errors=True)
    os.makedirs(os.path.dirname(sweep))
    path = os.path.join(os.path.dirname(sweep), "spec.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump({**PRETRAIN, "results_dir": os.path.dirname(sweep)}, fh)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": ROOT}
    began = time.time()
    subprocess.run([sys.executable, "-m", "tunesmith.orchestrator", "run", path, "--name", "pre"], env=env,
                   cwd=ROOT, check=True, capture_output=True)
    import pyarrow.parquet as pq
    best = pq.read_table(os.path.join(sweep, "trials.parquet")).column("best_val_acc").to_pylist()
    print(f"transfer: pretrained on objects with tunesmith in {time.time() - began:.0f} s, val_acc {max(best):.3f} "
          f"({sweep})", flush=True)
    return sweep


def _spec(dataset: str, root: str, budget: float, data_dir: str = None, seed: int = 0, contender: str = "") -> dict:
    spec = {"dataset": _dataset(dataset, data_dir), "results_dir": root, "time_budget_s": budget, "seed": seed}
    model = _model(dataset, contender)
    return {**spec, "model": model} if model else spec


SMITH_RANGE = ("0.5", "1.0")   # the smith-range contender's default


def _tunesmith(contender: str, dataset: str, budget: float, data_dir=None, seed: int = 0,
               smith_range=SMITH_RANGE):
    """(best val_acc, seconds to target or None, wall seconds) of one CLI run."""
    import pyarrow.dataset as pds
    import yaml
    root = tempfile.mkdtemp(prefix=f"tunesmith-quality-{dataset}-")
    spec = _spec(dataset, root, budget, data_dir, seed, contender)
    if contender in ("random", "tpe", "random-ba"):
        spec["search"] = {"algorithm": contender.split("-")[0], "num_samples": 1000, "space": {"lr": WIDE}}
    if contender == "random-ba":
        spec["asha"] = dict(BUDGET_AWARE_ASHA)
    path = os.path.join(root, "spec.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(spec, fh)
    smith = contender.startswith("smith")
    cmd = [sys.executable, "-m", "tunesmith.orchestrator", "smith" if smith else "run", path, "--name", "q"]
    if contender == "smith-range":
        cmd += ["--range", *smith_range]
    if contender == "smith-coupled":
        cmd += ["--coupling", "effective"]
    if contender == "smith-steepest":
        cmd += ["--pick", "steepest"]
    if contender == "smith-lr":
        cmd += ["--search", "lr"]
    if contender == "smith-nopilot":
        cmd += ["--no-pilot"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": ROOT}
    began = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - began
    if proc.returncode != 0:
        print(f"  {contender} on {dataset} exited {proc.returncode} (its results kept in {root}):\n"
              f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    best, first = 0.0, None
    for folder in glob.glob(os.path.join(root, "q*", "epochs")):
        epochs = pds.dataset(folder)
        if "val_acc" not in epochs.schema.names:   # no trial finished an epoch within the budget
            continue
        t = epochs.to_table(columns=["val_acc", "timestamp"]).to_pandas().dropna()
        # what was reached within the budget, as Optuna's study counts it: an epoch reported later
        # counts no further (each row's time is the trial's report, to the ms)
        t = t[t.timestamp.map(lambda x: x.timestamp()) - began <= budget]
        if t.empty:
            continue
        best = max(best, float(t.val_acc.max()))
        hit = t[t.val_acc >= TARGETS[dataset]]
        if len(hit):
            s = hit.timestamp.min().timestamp() - began
            first = s if first is None else min(first, s)
    trials = _trials(root)
    trials["test"] = _confirmed_test(root)
    if proc.returncode == 0:   # read; a run's results are ~10 MB, and runs are many
        shutil.rmtree(root, ignore_errors=True)
    return best, first, wall, trials


def _confirmed_test(root: str):
    """The test figure the run reported for its pick: its confirmation's winner, the mean test_acc
    of its seeds' final models (smith: stage 2's sweep), or where the budget afforded no
    confirmation the kept model's; None where neither was read."""
    path = os.path.join(root, "q", "manifest.json")
    if not os.path.exists(path):
        return None
    man = json.load(open(path))
    found = ((man.get("confirm") or {}).get("finalists") or [{}])[0].get("test")
    return found if found is not None else (man.get("kept_test") or {}).get("test_acc")


def _no_trials(started: int = 0) -> dict:
    """The evidence of a run that read no trial's settings (Optuna's, or a failed run)."""
    return {"trials": [], "max_lr": None, "settings": [], "started": started}


def _trials(root: str) -> dict:
    """Every trial's peak LR and best val_acc, and for smith the range test's max LR (its rule's
    pick): the evidence for where stage 2 should search."""
    import pyarrow.parquet as pq
    out = _no_trials()
    for path in glob.glob(os.path.join(root, "q*", "trials.parquet")):
        t = pq.read_table(path).to_pandas()
        out["started"] += len(t)
        t = t.dropna(subset=["hp_lr", "best_val_acc"])
        out["trials"] += [(float(a), float(b)) for a, b in zip(t.hp_lr, t.best_val_acc)]
        for key in ("hp_max_momentum", "hp_weight_decay"):   # smith's stage 2 searches these too
            if key in t:
                out["settings"] += [(key[3:], float(v), float(b)) for v, b in zip(t[key], t.best_val_acc)]
    smith = os.path.join(root, "q", "smith.json")
    if os.path.exists(smith):
        stage1 = json.load(open(smith))["stage1"]
        out["max_lr"], out["stage1_s"] = stage1["max_lr"], stage1.get("seconds")
        out["stage1_end_s"] = stage1.get("ended_s")   # from the command's start
    return out


def optuna_study(dataset: str, budget: float, began: float, data_dir=None, seed: int = 0,
                 target: float = None) -> dict:
    """The in-process study, run in its own process (``--optuna-worker``)."""
    import optuna
    import torch
    from torch import nn
    from tunesmith.trainables import data as data_mod
    from tunesmith.trainables.config import DatasetConfig, ModelConfig
    from tunesmith.trainables.models import build_model
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)
    d = data_mod.load(DatasetConfig(**_dataset(dataset, data_dir)))
    state = {"best": 0.0, "first": None, "model": None}   # model: the best epoch's weights, the study's pick
    tuned = _model(dataset)   # a transfer task: the recipe a user writes to fine-tune the same weights

    def objective(trial):
        if tuned:
            lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
            kind = trial.suggest_categorical("optimizer", ["sgd", "adam"])
            momentum = 0.9
            bs = trial.suggest_categorical("batch_size", [16, 32, 64])
        else:
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            momentum = trial.suggest_float("momentum", 0.8, 0.99)
            bs = trial.suggest_categorical("batch_size", [4, 8, 16, 32, 64])
        torch.manual_seed(1000 * seed + trial.number)
        net = build_model(ModelConfig(**tuned) if tuned else ModelConfig(name="lenet"), d.shape, d.num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=lr) if tuned and kind == "adam" else \
            torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
        loss_fn = nn.CrossEntropyLoss()
        acc = 0.0
        for epoch in range(5 if tuned else 10):
            net.train()
            perm = torch.randperm(len(d.train_y))
            for i in range(0, len(perm), bs):
                idx = perm[i:i + bs]
                opt.zero_grad()
                loss = loss_fn(net(d.normalise(d.train_x[idx])), d.train_y[idx])
                if not torch.isfinite(loss):
                    raise optuna.TrialPruned()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                acc = (net(d.normalise(d.val_x)).argmax(1) == d.val_y).float().mean().item()
            if time.time() - began > budget:   # a trial in flight when time ran out counts no further
                trial.study.stop()
                raise optuna.TrialPruned()
            if acc > state["best"]:
                state["model"] = (net, {k: v.clone() for k, v in net.state_dict().items()})
            state["best"] = max(state["best"], acc)
            if acc >= target and state["first"] is None:
                state["first"] = time.time() - began
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2))
    study.optimize(objective, timeout=max(1.0, budget - (time.time() - began)), catch=(RuntimeError,))
    test = None
    if state["model"] is not None and d.test_size:   # the study's pick, read on the test split once (#28)
        net, weights = state["model"]
        net.load_state_dict(weights)
        net.eval()
        with torch.no_grad():
            test = (net(d.normalise(d.test_x)).argmax(1) == d.test_y).float().mean().item()
    return {"best": state["best"], "first": state["first"], "trials": len(study.trials), "test": test}


def _optuna(dataset: str, budget: float, data_dir=None, seed: int = 0):
    began = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), "--optuna-worker", dataset, str(budget), str(began), str(seed),
           str(TARGETS[dataset])]
    if data_dir:
        cmd.append(data_dir)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - began
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"  optuna on {dataset} failed:\n{proc.stderr[-1500:]}")
        return 0.0, None, wall, _no_trials()
    return out["best"], out["first"], wall, {**_no_trials(started=out["trials"]), "test": out.get("test")}


def tune_floor(began: float) -> float:
    """Ray Tune's own floor on this machine (``--floor-worker``): seconds from the process's start
    until the first report of a plain Ray Tune script whose one trial imports torch and reports at
    once (no data, no model), on a fresh local instance. No contender that runs its trials through
    Ray Tune can have a result sooner."""
    import tempfile as tf
    import ray
    from ray import tune
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")

    def trainable(config):
        import torch  # noqa: F401  (every CNN trial does)
        tune.report({"at": time.time()})
    storage = tf.mkdtemp(prefix="tunesmith-floor-")
    grid = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    shutil.rmtree(storage, ignore_errors=True)
    return grid[0].metrics["at"] - began


def method_floor(began: float, target: float) -> "float | None":
    """smith's method without Ray (``--method-floor-worker``): seconds from the process's start
    until a 1cycle run at the middle of stage 2's LR range (10^0.5 times the range test's pick),
    trained in this process right after smith's range test, first reaches ``target`` on digits;
    None if it does not within its epochs. What smith could reach if its trials did not start Ray
    workers: the range test alone, and no search."""
    from tunesmith.orchestrator import lr_find
    from tunesmith.orchestrator.smith import search_range
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    cfg = TrainConfig.from_dict({"dataset": {"name": "digits"}})
    decision = lr_find.decide(cfg, 1e-7, 10.0, None, "exp", False, cpu_threads=os.cpu_count(),
                             default=lr_find.SMITH_PICK)
    lr = math.sqrt(math.prod(search_range(decision.max_lr))) if decision.informative else 0.1   # log-middle
    for m in Trainer(cfg.with_overrides({"lr": lr}), cpu_threads=os.cpu_count()).run():
        if m["val_acc"] >= target:
            return time.time() - began
    return None


def _worker_seconds(flag: str, *extra: str) -> float:
    """Run this file as ``flag`` in a new interpreter; the seconds it printed (nan if none)."""
    began = time.time()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), flag, str(began), *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    try:
        out = proc.stdout.strip().splitlines()[-1]
        return math.nan if out == "None" else float(out)
    except (IndexError, ValueError):
        print(f"  {flag} failed:\n{proc.stderr[-1500:]}")
        return math.nan


def _floor() -> float:
    return _worker_seconds("--floor-worker")


def _print_lr_evidence(evidence) -> None:
    """Where the good LRs lay against the range test's pick: every trial of the tunesmith
    contenders, its LR as a multiple of the median max LR smith's range tests chose on that
    dataset, in half-decade bins, with the median best val_acc as a share of the dataset's best."""
    pooled: dict = {}
    lines = []
    for ds, res in evidence:
        picks = [o[3]["max_lr"] for c in res for o in res[c] if len(o) > 3 and o[3]["max_lr"]]
        trials = [t for c in res for o in res[c] if len(o) > 3 for t in o[3]["trials"]]
        if not picks or not trials:
            continue
        ref = statistics.median(picks)
        top = max(acc for _, acc in trials)
        bins: dict = {}
        for lr, acc in trials:
            b = round(2 * math.log10(lr / ref)) / 2
            bins.setdefault(b, []).append(acc / top)
            pooled.setdefault(b, []).append(acc / top)
        best_bin = max(bins, key=lambda b: statistics.median(bins[b]))
        lines.append(f"  {ds:<8} pick {ref:.3g}: best median at LR = pick x 10^{best_bin:+.1f}; "
                     + ", ".join(f"10^{b:+.1f}: {statistics.median(v):.2f} ({len(v)})" for b, v in sorted(bins.items())))
    if not lines:
        return
    print("\nLR evidence: each trial's LR over the median max LR of smith's range tests on that dataset "
          "(half-decade bins), median best val_acc as a share of the dataset's best (trials):")
    print("\n".join(lines))
    print("  pooled   " + ", ".join(f"10^{b:+.1f}: {statistics.median(v):.2f} ({len(v)})" for b, v in sorted(pooled.items())))


def _print_setting_evidence(evidence) -> None:
    """How many trials each contender started per run (what its budget bought), and for
    smith's stage 2 each momentum bound and weight decay's median best val_acc as a share of
    the dataset's best trial."""
    lines = []
    for ds, res in evidence:
        runs = {c: [o[3] for o in res[c] if len(o) > 3] for c in res}
        top = max((acc for c in runs for o in runs[c] for _, acc in o["trials"]), default=0) or 1
        lines.append(f"  {ds:<8} trials started per run: " + ", ".join(
            f"{c} {statistics.median([o['started'] for o in rs]):g}" for c, rs in runs.items() if rs))
        stage1 = [o["stage1_s"] for rs in runs.values() for o in rs if o.get("stage1_s")]
        if stage1:
            lines[-1] += f"; smith's range test {statistics.median(stage1):.1f}s"
        groups: dict = {}
        for rs in runs.values():
            for o in rs:
                for key, value, acc in o["settings"]:
                    groups.setdefault((key, value), []).append(acc / top)
        for key in sorted({k for k, _ in groups}):
            lines.append(f"  {ds:<8} {key}: " + ", ".join(
                f"{v:g}: {statistics.median(xs):.2f} ({len(xs)})" for (k, v), xs in sorted(groups.items()) if k == key))
    if lines:
        print("\nBudget and settings: trials per run, and smith's stage-2 settings by median best val_acc as a "
              "share of the dataset's best (trials):")
        print("\n".join(lines))


def paired_gaps(smith, other, bar: float = -0.005):
    """smith minus a contender, seed by seed (the same seed's runs are paired: one draw of the
    machine's pace, one split): (mean, standard error, 95% interval, verdict on bar 1).
    The verdict is 'holds' when the interval lies above the bar, 'fails' when below it, and
    'cannot tell' when it spans it: medians of a few seeds move by more than the bar."""
    diffs = [a - b for a, b in zip(smith, other)]
    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        return mean, math.nan, (math.nan, math.nan), "one seed: no interval"
    se = statistics.stdev(diffs) / math.sqrt(n)
    try:
        from scipy.stats import t
        q = float(t.ppf(0.975, n - 1))
    except ImportError:   # scipy is a bench extra; the normal quantile understates a small n
        q = 1.96
    lo, hi = mean - q * se, mean + q * se
    verdict = "holds" if lo >= bar else "fails" if hi < bar else "cannot tell"
    return mean, se, (lo, hi), verdict


def _print_paired(rows) -> None:
    each = {(r[0], r[3]): r[8] for r in rows}
    lines = []
    for (ds, c), runs in each.items():
        if c == "smith" or (ds, "smith") not in each or len(runs) < 2:
            continue
        lines.append(_paired_line(ds, c, each[(ds, "smith")], runs))
    if lines:
        print("\nPaired by seed, smith minus each contender (mean ± standard error; bar 1 needs the gap above "
              "-0.5 pp):")
        print("\n".join(lines))


def _print_tests(rows, datasets, smith: bool) -> None:
    """Each contender's pick judged on the test split, which no selection read (#28): tunesmith's
    confirmed winner (its new seed's final model), or the kept model where no confirmation fitted;
    Optuna's best trial's best epoch. Then smith minus each, paired by seed, as by validation."""
    print("\njudged by test accuracy (median over seeds; - where the pick has no test figure)")
    gaps, paired = {}, []
    for ds in datasets:
        have = {r[3]: [t for t in r[9] if t is not None] for r in rows if r[0] == ds and r[3] != "smith-scratch"}
        med = {c: statistics.median(t) for c, t in have.items() if t}
        if not med:
            continue
        top = max(med.values())
        for c, t in have.items():
            shown = " ".join(f"{x:.4f}" for x in t) or "-"
            print(f"  {ds:<8} {c:<17} test {med.get(c, float('nan')):.4f}  behind best "
                  f"{100 * (top - med[c]) if c in med else float('nan'):.1f}pp  each seed {shown}")
        if "smith" in med:
            gaps[ds] = top - med["smith"]
        paired += _paired_tests(rows, ds)
    if paired:
        print("paired by seed on the test split, smith minus each contender:")
        print("\n".join(paired))
    if smith and gaps:
        worst = max(gaps.values())
        print(f"bar 1 by test accuracy, smith within 0.5 pp of the best contender on every dataset: worst gap "
              f"{100 * worst:.1f} pp: {'met' if worst <= 0.005 + 1e-9 and len(gaps) == len(datasets) else 'NOT met'}")


def _paired_tests(rows, ds: str) -> list:
    """smith minus each contender on ``ds``, by the test figures of the seeds both have."""
    tests = {r[3]: r[9] for r in rows if r[0] == ds and r[3] != "smith-scratch"}
    mine, lines = tests.pop("smith", None), []
    for c, theirs in tests.items() if mine is not None else ():
        both = [(a, b) for a, b in zip(mine, theirs) if a is not None and b is not None]
        if len(both) < 2:
            continue
        lines.append(_paired_line(ds, c, [a for a, _ in both], [b for _, b in both]))
    return lines


def _paired_line(ds: str, c: str, smith, other) -> str:
    mean, se, (lo, hi), verdict = paired_gaps(smith, other)
    return (f"  {ds:<8} smith - {c:<15} {100 * mean:+5.1f} pp ± {100 * se:.1f} (95%: {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}) over {len(smith)} seeds: {verdict}")


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _med_time(firsts):
    """Median seconds to the target, a run that never reached it counting as never (inf): the
    median of only the runs that got there would flatter a contender that mostly does not."""
    m = statistics.median([math.inf if f is None else f for f in firsts])
    return None if math.isinf(m) else m


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--optuna-worker":
        ds, budget, began, seed, target = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), \
            float(sys.argv[6])
        print(json.dumps(optuna_study(ds, budget, began, sys.argv[7] if len(sys.argv) > 7 else None, seed, target)))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--floor-worker":
        print(tune_floor(float(sys.argv[2])))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--method-floor-worker":
        print(method_floor(float(sys.argv[2]), float(sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["digits", "glyphs", "shapes", "letters"])
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per contender (default 120)")
    ap.add_argument("--budget-digits", type=float, default=45.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--repeats-digits", type=int, default=3, help="digits: median of this many (default 3)")
    ap.add_argument("--first-seed", type=int, default=0, help="repeat r runs seed first_seed + r (default 0)")
    ap.add_argument("--cifar10", help="a local CIFAR-10 folder: adds the dataset")
    ap.add_argument("--folder", action="append", default=[], metavar="NAME=DIR[@TARGET]",
                    help="adds an image folder (class folders) as dataset NAME, its target accuracy TARGET "
                         "(default 0.5); repeatable: judge the defaults on data of your own")
    ap.add_argument("--smith-range", nargs=2, default=list(SMITH_RANGE), metavar=("BELOW", "ABOVE"),
                    help="the smith-range contender's stage-2 LR range, decades around the pick (default 0.5 1.0)")
    args = ap.parse_args(argv)
    folders = {}
    for item in args.folder:
        name, _, rest = item.partition("=")
        path, _, target = rest.partition("@")
        try:
            share = float(target) if target else 0.5
        except ValueError:
            share = math.nan
        if not name or not os.path.isdir(path) or not 0 < share <= 1:
            ap.error(f"--folder {item}: give NAME=DIR[@TARGET] with DIR an image folder and TARGET in (0, 1]")
        folders[name], TARGETS[name] = os.path.abspath(path), share
    datasets = list(args.datasets) + (["cifar10"] if args.cifar10 else []) + list(folders)
    from tunesmith.trainables import generated
    for ds in datasets:   # made and cached before any clock starts, the transfer task's weights too
        name = TASKS[ds][0]["name"] if ds in TASKS else ds
        if name in generated.GENERATORS:
            generated.load(name)
        if ds in TASKS:
            _model(ds)
    rows, evidence, floors, method = [], [], [], []
    for ds in datasets:
        budget = args.budget_digits if ds == "digits" else args.budget
        repeats = args.repeats_digits if ds == "digits" else args.repeats
        data_dir = args.cifar10 if ds == "cifar10" else folders.get(ds)
        contenders = [c for c in args.contenders if c != "smith-scratch" or ds == "transfer"]
        if ds == "transfer" and "smith" in contenders and "smith-scratch" not in contenders:
            contenders.append("smith-scratch")   # the transfer bar: fine-tuning against training from scratch
        res = {c: [] for c in contenders}
        for r in range(repeats):
            seed = args.first_seed + r
            for c in contenders:   # interleaved, so drift in the machine's speed hits all alike
                # repeat r runs every contender with its seed: its own draws, init and batch order
                out = _optuna(ds, budget, data_dir, seed) if c == "optuna" else \
                    _tunesmith(c, ds, budget, data_dir, seed, args.smith_range)
                res[c].append(out)
                print(f"{ds} run {r + 1}/{repeats} {c:<17} best {out[0]:.4f}  to {TARGETS[ds]:.0%}: "
                      f"{'-' if out[1] is None else f'{out[1]:.1f}s'}  wall {out[2]:.0f}s", flush=True)
        if ds == "digits" and "smith" in args.contenders and "optuna" in args.contenders:
            floors = [_floor() for _ in range(repeats)]   # bar 2's context, measured in the same run
            print("digits: Ray Tune's floor, a plain script's first report: "
                  + ", ".join(f"{f:.1f}s" for f in floors), flush=True)
            method = [_worker_seconds("--method-floor-worker", str(TARGETS[ds])) for _ in range(repeats)]
            print(f"digits: smith's method without Ray, range test then one run in-process, at {TARGETS[ds]:.0%}: "
                  + ", ".join(f"{f:.1f}s" for f in method), flush=True)
        evidence.append((ds, res))
        top = max(_med([o[0] for o in res[c]]) for c in contenders if c != "smith-scratch")
        for c in contenders:
            best = _med([o[0] for o in res[c]])
            firsts = [o[1] for o in res[c]]
            reached = sum(f is not None for f in firsts)
            tests = [o[3].get("test") for o in res[c]]
            rows.append((ds, budget, repeats, c, best, _med_time(firsts), reached, top - best,
                         [o[0] for o in res[c]], tests))
    print(f"\nquality benchmark: same wall-clock budget per contender, run one after another on "
          f"{os.cpu_count()} CPUs; medians over repeats")
    head = f"{'dataset':<8} {'budget':>6} {'n':>2} {'contender':<17} {'best val_acc':>12} {'s to target':>11} " \
           f"{'reached':>7} {'behind best':>11} {'mean ± sd':>15}  each seed"
    print(head + "\n" + "-" * len(head))
    for ds, budget, n, c, best, first, reached, gap, each, _ in rows:
        t = f"{first:.1f}" if first is not None else "-"
        sd = statistics.stdev(each) if len(each) > 1 else 0.0
        print(f"{ds:<8} {budget:>6.0f} {n:>2} {c:<17} {best:>12.4f} {t:>11} {reached:>5}/{n} {100 * gap:>9.1f}pp "
              f"{statistics.mean(each):>7.4f} ± {sd:.4f}  " + " ".join(f"{x:.4f}" for x in each))
    print("targets: " + ", ".join(f"{d} {TARGETS[d]:.0%}" for d in datasets))
    _print_tests(rows, datasets, "smith" in args.contenders)
    _print_lr_evidence(evidence)
    _print_setting_evidence(evidence)
    _print_paired(rows)
    by = {(r[0], r[3]): r for r in rows}
    if ("transfer", "smith-scratch") in by:
        gain = by[("transfer", "smith")][4] - by[("transfer", "smith-scratch")][4]
        print(f"transfer bar, smith fine-tuning beats smith from scratch by at least 5 points: "
              f"{100 * gain:+.1f} points: {'met' if gain >= 0.05 else 'NOT met'}")
    if "smith" in args.contenders:
        worst = max(by[(d, "smith")][7] for d in datasets)
        print(f"bar 1, smith within 0.5 pp of the best contender on every dataset: worst gap {100 * worst:.1f} pp: "
              f"{'met' if worst <= 0.005 + 1e-9 else 'NOT met'}")
        for variant, how in (("smith-range", f"--range {' '.join(args.smith_range)}"),
                             ("smith-coupled", "--coupling effective"),
                             ("smith-steepest", "--pick steepest")):
            if variant in args.contenders:
                alt = max(by[(d, variant)][7] for d in datasets)
                print(f"  {variant} ({how}) against the same contenders: worst gap {100 * alt:.1f} pp")
        if "digits" in datasets and "optuna" in args.contenders:
            s_t, o_t = by[("digits", "smith")][5], by[("digits", "optuna")][5]
            ok = s_t is not None and (o_t is None or s_t <= o_t / 2)
            show = lambda t: "never (median)" if t is None else f"{t:.1f} s"
            print(f"bar 2, digits: smith reaches 98% in {show(s_t)} against Optuna's {show(o_t)} (median of "
                  f"{args.repeats_digits}; at most half): {'met' if ok else 'NOT met'}")
            floor = statistics.median(floors)
            print(f"  Ray Tune's floor here: a plain Ray Tune script's one trial (import torch, report) "
                  f"reports {floor:.1f} s after its process starts (median of {len(floors)}); half of "
                  f"Optuna's time is {show(None if o_t is None else o_t / 2)}")
            m_t = _med_time([None if math.isnan(m) else m for m in method])
            print(f"  smith's method without Ray (its range test, then one 1cycle run in the same process at "
                  f"the middle of stage 2's range) reaches 98% in {show(m_t)} (median of {len(method)})")
            ends = [o[3].get("stage1_end_s") for o in dict(evidence)["digits"]["smith"]]
            ends = [e for e in ends if e is not None]
            if ends:   # stage 2 starts from the range test's pick: no smith trial can start sooner
                print(f"  smith's range test was decided {statistics.median(ends):.1f} s after the command "
                      f"started (median; " + ", ".join(f"{e:.1f}" for e in ends) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
