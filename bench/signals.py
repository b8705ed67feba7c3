"""SIGTERM (what Kubernetes and `ray job stop` send) at four phases of `run` and `smith`, as a
user's command gets it: how long the command takes to exit after the signal (target: within
10 s), its exit code (130), what the manifest says, how many processes of its group are still
running half a second later (zombies waiting for their parent count as gone), and how many
temporary files are left (none).

    .venv/bin/python bench/signals.py
"""
from __future__ import annotations

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
        print(f"{label:<36} signal at {sent - began:5.1f}s: exit {proc.returncode} after {took:4.1f}s; manifest "
              f"{status}; {left} of its processes running; {len(temporary)} temporary files", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    def exists(*parts):
        return lambda t, folder: os.path.exists(os.path.join(folder, *parts))
    case("run, while Ray starts", ["run"], lambda t, folder: t > 2.0)
    case("run, once trials.parquet is written", ["run"], exists("trials.parquet"))
    case("smith, in its range test", ["smith"], lambda t, folder: t > 4.0)
    case("smith, between stage 1 and stage 2", ["smith"], exists("lr_find", "decision.json"))


if __name__ == "__main__":
    main()
