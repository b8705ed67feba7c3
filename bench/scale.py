"""The writers at scale: trivial trials (one report each) through tunesmith's own Tuner
assembly, writers on, at 1,000 and 10,000 trials, each size in a fresh process; the same through a
bare Tune `Tuner` (reused actors, no loggers or callbacks), to tell tunesmith's growth from
Tune's own. Prints the ms per trial at each size, their ratio (target: within 1.1x), the
driver's peak RSS and its growth from the small sweep to the large one (target: under 250 MB),
and how long `tunesmith analyze` takes on the large sweep (target: under 10 s).

    .venv/bin/python bench/scale.py [--small 1000] [--large 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def trivial(config):
    from ray import tune
    tune.report({"val_acc": config["lr"], "val_loss": 1 - config["lr"]})


def one(kind: str, n: int, root: str) -> dict:
    """One sweep of ``n`` trivial trials in this process: its wall seconds and peak RSS."""
    sys.path.insert(0, HERE)
    from common import start
    cluster, _ = start()
    from ray import tune
    if kind == "tunesmith":
        from tunesmith.cluster.storage import Storage
        from tunesmith.orchestrator import spec as spec_mod
        from tunesmith.orchestrator.sweep import build_tuner
        spec = spec_mod.from_dict({"name": f"scale{n}", "results_dir": root, "trainer": {"epochs": 1},
                                   "search": {"algorithm": "random", "num_samples": n,
                                              "space": {"lr": {"uniform": [0.01, 1.0]}}}})
        tuner, callback, _ = build_tuner(spec, Storage(root), cluster, trainable=trivial)
    else:
        callback = None
        tuner = tune.Tuner(trivial, param_space={"lr": tune.uniform(0.01, 1.0)},
                           tune_config=tune.TuneConfig(num_samples=n, metric="val_acc", mode="max", reuse_actors=True,
                                                       max_concurrent_trials=2),
                           run_config=tune.RunConfig(storage_path=root, name=f"bare{n}", verbose=0))
    began = time.perf_counter()
    tuner.fit()
    if callback is not None:
        callback.close()
    seconds = time.perf_counter() - began
    return {"kind": kind, "trials": n, "seconds": seconds, "ms_per_trial": 1000 * seconds / n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(kind: str, n: int, root: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n), root], capture_output=True, text=True,
                         env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{kind} {n}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--kinds", nargs="+", default=["tunesmith", "bare"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunesmith-scale-") as root:
        rows = {}
        for kind in args.kinds:
            for n in (args.small, args.large):
                rows[kind, n] = r = run_child(kind, n, root)
                print(f"{kind:<10} {n:>6} trials: {r['ms_per_trial']:6.1f} ms per trial, "
                      f"peak RSS {r['peak_rss_mb']:7.1f} MB", flush=True)
        began = time.perf_counter()
        out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tunesmith"), "analyze", root,
                              "--sweep", f"scale{args.large}", "--no-plots"], capture_output=True, text=True)
        analyze_s = time.perf_counter() - began
        if out.returncode != 0:
            raise SystemExit(f"analyze: {out.stderr[-2000:]}")
    for kind in args.kinds:
        s, l = rows[kind, args.small], rows[kind, args.large]
        print(f"{kind}: {l['ms_per_trial'] / s['ms_per_trial']:.2f}x the ms per trial at {args.large:,} against "
              f"{args.small:,}; peak RSS grew {l['peak_rss_mb'] - s['peak_rss_mb']:+.0f} MB")
    if "tunesmith" in args.kinds:
        s, l = rows["tunesmith", args.small], rows["tunesmith", args.large]
        ratio, growth = l["ms_per_trial"] / s["ms_per_trial"], l["peak_rss_mb"] - s["peak_rss_mb"]
        print(f"targets: ms per trial within 1.1x: {ratio:.2f}x {'met' if ratio <= 1.1 else 'NOT met'}; "
              f"memory growth under 250 MB: {growth:+.0f} MB {'met' if growth < 250 else 'NOT met'}; "
              f"analyze on {args.large:,} trials under 10 s: {analyze_s:.1f}s {'met' if analyze_s < 10 else 'NOT met'}")
        if "bare" in args.kinds:
            b = rows["bare", args.large]["peak_rss_mb"] - rows["bare", args.small]["peak_rss_mb"]
            print(f"of the growth, Tune's own (bare Tuner) is {b:+.0f} MB and tunesmith's {growth - b:+.0f} MB")


if __name__ == "__main__":
    main()
