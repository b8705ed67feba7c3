"""Time until `tunesmith smith` first reaches a target validation accuracy, from a cold start.

Starts `tunesmith smith examples/digits.yaml` as a new process (new interpreter, new Ray
instance), and reads the epoch rows it wrote: the first row at or above the target, minus the
moment the process was spawned. Aim: 98% on digits in under 20 s on 2 CPU cores (an in-process
Optuna study with pruning takes about that here).

    .venv/bin/python bench/smith_time.py [--target 0.98] [--runs 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--spec", default=os.path.join(ROOT, "examples", "digits.yaml"))
    args = ap.parse_args()
    import pyarrow.parquet as pq
    exe = os.path.join(os.path.dirname(sys.executable), "tunesmith")
    for run in range(args.runs):
        out = tempfile.mkdtemp(prefix="tunesmith-smith-")
        spawned = time.time()
        proc = subprocess.run([exe, "smith", args.spec, "--results-dir", out, "--name", "bench"],
                              capture_output=True, text=True, cwd=ROOT)
        wall = time.time() - spawned
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(f"smith failed with exit code {proc.returncode}")
        rows = pq.read_table(os.path.join(out, "bench", "epochs")).to_pandas()
        shutil.rmtree(out, ignore_errors=True)
        hit = rows[rows.val_acc >= args.target].sort_values("timestamp")
        best = rows.val_acc.max()
        if hit.empty:
            print(f"run {run}: never reached {args.target:.0%} (best {best:.4f}); whole command {wall:.1f}s")
            continue
        t = hit.timestamp.iloc[0].timestamp() - spawned
        print(f"run {run}: first {args.target:.0%} at {t:.1f}s after the command started "
              f"(best {best:.4f}; whole command {wall:.1f}s); aim < 20 s: {'met' if t < 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
