"""SIGTERM (what Kubernetes and `ray job stop` send) at four phases of `run` and `smith`, as a
user's command gets it: how long the command takes to exit after the signal (target: within
10 s), its exit code (130), what the manifest says, how many processes of its group are still
running half a second later (zombies waiting for their parent count as gone), and how many
temporary files are left (none). ``--repeats N`` runs each case N times and ends with each
case's tally: a signal lost where Python swallows an exception shows only now and then.

    .venv/bin/python bench/signals.py [--repeats 1] [--cases smith]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNESMITH = os.path.join(os.path.dirname(sys.executable), "tunesmith")


def running_in_group(pgid: int) -> int:
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return sum(not stat.startswith("Z") for stat in out)


TALLY = collections.defaultdict(list)   # label: (exit code, seconds to exit, processes left, temporary files)


def case(label: str, command: list, when) -> None:
    root = tempfile.mkdtemp(prefix="tunesmith-signals-")
    try:
        proc = subprocess.Popen([TUNESMITH, *command, "examples/digits.yaml", "--name", "s", "--results-dir", root],
                                cwd=ROOT, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        began = time.monotonic()
        while not when(time.monotonic() - began, os.path.join(root, "s")) and proc.poll() is None:
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        took = time.monotonic() - sent
        time.sleep(0.5)
        left = running_in_group(proc.pid)
        manifest = os.path.join(root, "s", "manifest.json")
        status = json.load(open(manifest))["status"] if os.path.exists(manifest) else "none (nothing written)"
        temporary = [n for _, _, files in os.walk(root) for n in files if ".tmp-" in n]
        TALLY[label].append((proc.returncode, took, left, len(temporary)))
        print(f"{label:<36} signal at {sent - began:5.1f}s: exit {proc.returncode} after {took:4.1f}s; manifest "
              f"{status}; {left} of its processes running; {len(temporary)} temporary files", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="SIGTERM at four phases of run and smith")
    p.add_argument("--repeats", type=int, default=1, help="runs of each case")
    p.add_argument("--cases", nargs="*", default=["run", "smith"], help="the commands whose cases run")

    def exists(*parts):
        return lambda t, folder: os.path.exists(os.path.join(folder, *parts))
    cases = [("run, while Ray starts", ["run"], lambda t, folder: t > 2.0),
             ("run, once trials.parquet is written", ["run"], exists("trials.parquet")),
             ("smith, in its range test", ["smith"], lambda t, folder: t > 4.0),
             ("smith, between stage 1 and stage 2", ["smith"], exists("lr_find", "decision.json"))]
    args = p.parse_args(argv)
    for _ in range(args.repeats):
        for label, command, when in cases:
            if command[0] in args.cases:
                case(label, command, when)
    if args.repeats > 1:
        for label, runs in TALLY.items():
            clean = [r for r in runs if r[0] == 130 and r[1] <= 10 and not r[2] and not r[3]]
            print(f"{label:<36} {len(clean)}/{len(runs)} exit 130 within 10 s and leave nothing; "
                  f"slowest exit {max(r[1] for r in runs):.1f} s", flush=True)


if __name__ == "__main__":
    main()
