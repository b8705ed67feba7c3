"""The real `tunesmith` command in its own process, started the way users start it."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, NamedTuple, Optional

import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNESMITH = os.path.join(os.path.dirname(sys.executable), "tunesmith")


def _env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def _run(args, **kw):
    return subprocess.run([TUNESMITH, *args], capture_output=True, text=True, env=_env(), cwd=ROOT, **kw)


class Quick(NamedTuple):
    code: int
    output: str                     # what it printed: in a terminal, the last screen
    screens: Optional[List[str]]    # the screens seen while it ran, in a terminal (tmux)
    folder: Path


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    """The README's sweep, shortened, run once from the command line as users run it: in a real
    pseudo-terminal (tmux) where there is one, so its live display is seen too."""
    import shutil
    root = tmp_path_factory.mktemp("quick")
    args = ["run", "examples/digits.yaml", "--results-dir", str(root), "--name", "quick",
            "--num-samples", "6", "--set", "trainer.epochs=6"]
    if not shutil.which("tmux"):
        proc = _run(args, timeout=240)
        return Quick(proc.returncode, proc.stdout + proc.stderr, None, root / "quick")
    session = f"ts{os.getpid()}"
    cmd = f"cd {shlex.quote(ROOT)} && {shlex.join([TUNESMITH, *args])}; echo EXIT=$?; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd], check=True,
                   env={**_env(), "TERM": "xterm-256color"})
    try:
        frames, deadline = [], time.time() + 240
        while time.time() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            frames.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.25)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    (root / "screens.txt").write_text("\n=====\n".join(frames))
    last = frames[-1]
    code = int(last.split("EXIT=", 1)[1].split()[0]) if "EXIT=" in last else -1
    return Quick(code, last, frames, root / "quick")


def test_default_example_runs_from_the_command_line_on_loopback(quick_sweep):
    """A private Ray bound to 127.0.0.1, results on disk."""
    q = quick_sweep
    assert q.code == 0, q.output[-2000:]
    assert "rank" in q.output and "results:" in q.output
    manifest = json.loads((q.folder / "manifest.json").read_text())
    assert manifest["cluster"]["address"].startswith("127.0.0.1:")
    table = pq.read_table(q.folder / "trials.parquet").to_pandas()
    trials, confirmed = table[table.phase == "search"], table[table.phase == "confirm"]
    assert len(trials) == 6 and trials.best_val_acc.max() > 0.9
    # the default confirms: the two best settings with new seeds (auto: one, or two where they fit
    # in 30% of the search's time), beside their own search runs, and says which it took and why;
    # its last lines give the test figure and the verdict between the first two
    c = manifest["confirm"]
    new = sorted(set(c["seeds"]) - set(c["search_seeds"]))
    seen = "\n".join([*(q.screens or []), q.output])   # the line, while it was on the screen
    assert new in ([1000], [1000, 1001]) and f"; auto: {len(new)}" in seen, q.output[-3000:]
    assert len(confirmed) == 2 * len(new) and sorted(set(confirmed.seed)) == new
    assert confirmed.test_acc.notna().all() and confirmed.test_acc.min() > 0.9
    assert "verdict: " in q.output and "test: test_acc 0." in q.output and "mean test_acc" in q.output
    # the finalists as confirm.rank_by late_val_loss chooses them, read back from the files: six
    # trials leave no pool wider than the two (the search's top fifth), so the metric's two best
    from tunesmith.orchestrator.verdict import pool_size
    assert pool_size(len(trials), 2) == 2
    ranked = trials.sort_values(["best_val_acc", "best_val_loss"], ascending=[False, True])
    assert set(confirmed.confirms) == set(ranked.trial_id[:2])
    assert "thelowestlateval_loss" not in "".join(seen.split()), q.output[-3000:]   # wrapped anywhere


def test_live_display_in_a_terminal(quick_sweep):
    """In a real pseudo-terminal (tmux), `run` shows the live display: counts, best, running
    trials; it updates, and leaves a clean final table."""
    if quick_sweep.screens is None:
        pytest.skip("tmux is not installed")
    live = [f for f in quick_sweep.screens if "done" in f and "elapsed" in f]
    assert live, quick_sweep.output
    assert any("running" in f and "epoch" in f for f in live)          # a line per running trial
    assert len({f for f in live}) > 2                                   # it updates
    final = quick_sweep.output
    assert "EXIT=0" in final and "6/6 done" in final and "best val_acc" in final
    assert "rank  trial" in final                                       # the clean final table


def test_bad_spec_from_the_command_line(tmp_path):
    proc = _run(["run", "examples/digits.yaml", "--results-dir", str(tmp_path), "--set", "model.name=vgg"], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.name = 'vgg'" in proc.stderr
    assert os.listdir(tmp_path) == []


def _trials(path):
    """trials.parquet of a live sweep, read from one open file (see README, Results)."""
    with open(path, "rb") as f:
        return pq.read_table(f).to_pandas()


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_server_serves_scalars_and_hparams(quick_sweep):
    """A real `tensorboard --logdir` on 127.0.0.1, read over its HTTP API."""
    folder = quick_sweep.folder
    assert quick_sweep.code == 0, quick_sweep.output[-2000:]
    logdir = folder / "tensorboard"
    trials = pq.read_table(folder / "trials.parquet").to_pandas().set_index("trial_id")
    port = _free_port()
    tb = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", str(logdir),
                           "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def runs():
            try:
                with urllib.request.urlopen(f"{base}/data/runs", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                return []
        _wait_for(lambda: len(runs()) == len(trials) == 8, 60, "tensorboard runs")   # 6 searched, 2 confirming
        run = sorted(runs())[0]
        with urllib.request.urlopen(f"{base}/data/plugin/scalars/scalars?run={run}&tag=val_acc", timeout=10) as r:
            points = json.loads(r.read())
        assert [p[1] for p in points] == list(range(1, trials.loc[run, "epochs"] + 1))
        assert all(0 <= p[2] <= 1 for p in points)
        req = urllib.request.Request(f"{base}/data/plugin/hparams/experiment", data=b'{"experimentName": ""}',
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            exp = json.loads(r.read())
        names = {h["name"] for h in exp["hparamInfos"]}
        assert {"lr", "weight_decay", "model.width"} <= names
        assert {"val_acc", "test_acc"} <= {m["name"]["tag"] for m in exp["metricInfos"]}   # the test figure beside
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def _group_gone(pgid: int, within: float) -> bool:
    """No process of the command's process group (Ray's among them) is left after ``within`` s."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _group_size(pgid: int) -> int:
    """Processes in a process group, from /proc."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getpgid(int(pid)) == pgid:
                    count += 1
            except (ProcessLookupError, PermissionError):
                pass
    return count


def _signal_when(proc, ready, what: str, sig):
    """Send ``sig`` to the command once ``ready()``: (its stdout, stderr, seconds from the signal
    to its exit), once no process of its group is left; whatever is left is killed."""
    try:
        _wait_for(ready, 180, what)
        sent = time.time()
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=90)
        took = time.time() - sent
        assert _group_gone(proc.pid, 10), "processes of the command's group outlived it"
        return out, err, took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _temporary_files(root: Path) -> List[str]:
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name]


@pytest.mark.serial
def test_ctrl_c_stops_cleanly_and_keeps_results(tmp_path):
    """SIGINT (what Ctrl-C sends) to the driver: trials stop, results stay, exit code 130, within
    10 s, nothing left running or half written. SIGTERM takes the same handler (test_asha.py),
    and SIGTERM while Ray starts is tested below."""
    sig = signal.SIGINT
    proc = subprocess.Popen([TUNESMITH, "run", "examples/digits.yaml", "--results-dir", str(tmp_path),
                             "--name", "int", "--num-samples", "40", "--set", "trainer.epochs=30",
                             "--set", "asha.enabled=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
                            start_new_session=True)
    epochs = tmp_path / "int" / "epochs"
    out, err, took = _signal_when(proc, lambda: epochs.exists() and any(p.suffix == ".parquet" for p in epochs.iterdir()),
                                  "results", sig)
    assert proc.returncode == 130, err[-2000:]
    assert took < 10, f"ended {took:.1f}s after the signal"
    assert "interrupt" in out
    trials = pq.read_table(tmp_path / "int" / "trials.parquet").to_pandas()
    assert len(trials) < 40
    assert "running" not in set(trials.status)
    stopped = trials[trials.status == "stopped"]
    assert len(stopped) >= 1 and (stopped.stop_reason == "sweep interrupted").all()
    manifest = json.loads((tmp_path / "int" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["ended_at"]
    assert pq.read_table(epochs).num_rows >= 1
    assert _temporary_files(tmp_path) == []


@pytest.mark.serial
def test_sigterm_while_ray_starts_ends_in_seconds_and_leaves_nothing(tmp_path):
    """SIGTERM once Ray's first processes are up, while Ray starts: once an exit with 15 that left
    two of its processes running, once 40 s alive with defunct gcs_server and raylet children."""
    proc = subprocess.Popen([TUNESMITH, "run", "examples/digits.yaml", "--results-dir", str(tmp_path),
                             "--name", "early"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT, start_new_session=True)
    out, err, took = _signal_when(proc, lambda: _group_size(proc.pid) > 1, "Ray's first processes", signal.SIGTERM)
    assert proc.returncode == 130 and took < 10, (proc.returncode, took, err[-2000:])
    assert "Traceback" not in err
    assert _temporary_files(tmp_path) == []


@pytest.mark.serial
def test_smith_stopped_between_its_stages_says_so_in_its_manifest(tmp_path):
    """SIGTERM once stage 1's files are written, as stage 2 starts (its pilot, the sweep's
    assembly): exit 130 within 10 s, nothing of the command left, and a manifest that says
    interrupted, whether stage 2's sweep had written its own or not (it had not, before)."""
    proc = subprocess.Popen([TUNESMITH, "smith", "examples/digits.yaml", "--results-dir", str(tmp_path),
                             "--name", "sm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT, start_new_session=True)
    decision = tmp_path / "sm" / "lr_find" / "decision.json"
    out, err, took = _signal_when(proc, decision.exists, "stage 1's decision", signal.SIGTERM)
    assert proc.returncode == 130 and took < 10, (proc.returncode, took, err[-2000:])
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "sm" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["ended_at"] and manifest["command"] == "smith"
    assert json.loads(decision.read_text())   # stage 1's files are kept
    assert _temporary_files(tmp_path) == []


def _resume_spec(tmp_path: Path, name: str, search: str) -> Path:
    """The resume tests' sweep: digits, 12-epoch trials over the LR, no ASHA, no confirmation;
    ``search``: the rest of its search section."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"""
name: {name}
dataset: {{name: digits}}
model: {{width: 8}}
trainer: {{epochs: 12, per_gpu_batch_size: 16}}
search: {{{search}, space: {{lr: {{loguniform: [0.01, 0.3]}}}}}}
asha: {{enabled: false}}
confirm: {{top: 0}}
results_dir: {tmp_path / 'results'}
""")
    return spec

def test_a_sweep_stopped_by_sigterm_resumes_where_it_stopped(tmp_path):
    """SIGTERM (a preempted pod, `ray job stop`), then `tunesmith resume`: the trials it stopped
    continue from their checkpoints and the search draws the rest. Tune's state once recorded
    them ended and the search finished: the resume went straight to the confirmation, on trials
    trained 5 of 12 epochs, and called the sweep finished."""
    spec = _resume_spec(tmp_path, "t", "num_samples: 5")
    proc = subprocess.Popen([TUNESMITH, "run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT, start_new_session=True)
    epochs_dir = tmp_path / "results" / "t" / "epochs"

    def begun():   # the first epochs written
        return epochs_dir.exists() and any(p.suffix == ".parquet" for p in epochs_dir.iterdir())
    out, err, _ = _signal_when(proc, begun, "the first epochs", signal.SIGTERM)
    assert proc.returncode == 130, err[-2000:]
    trials_file = tmp_path / "results" / "t" / "trials.parquet"
    before = _trials(trials_file).set_index("trial_id")
    stopped = before.index[before.status == "stopped"]
    assert len(before) < 5 and len(stopped) >= 1 and (before.loc[stopped, "epochs"] < 12).all(), before

    out = _run(["resume", str(tmp_path / "results" / "t")], timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    after = _trials(trials_file).set_index("trial_id")
    assert len(after) == 5 and set(after.status) == {"completed"}, after[["status", "epochs"]]
    assert (after.epochs == 12).all()
    for tid in stopped:   # continued, not started again
        assert after.loc[tid, "started_at"] == before.loc[tid, "started_at"]
    epochs = pq.read_table(epochs_dir).to_pandas()
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 5 * 12
    assert json.loads((tmp_path / "results" / "t" / "manifest.json").read_text())["status"] == "finished"


def test_resume_after_the_driver_is_killed(tmp_path):
    """SIGKILL the driver (and its Ray) mid-sweep: what it wrote reads back whole. Then `tunesmith
    resume`: every trial ends, no completed trial runs again, and each (trial, epoch) is in the
    Parquet files once. Killed, where the poll catches it, while a new trial's rows are on disk
    and trials.parquet does not list it yet: the resumed run must not write those epochs again.
    One trial at a time: two at once finished together, and a reused actor ran the last two in
    under a second, too fast to be caught between the second and the last (CI met that once). Eight
    trials: with five, on a quiet machine the last three ended within the poll's 3 s (met here once)."""
    spec = _resume_spec(tmp_path, "r", "num_samples: 8, max_concurrent: 1")
    proc = subprocess.Popen([TUNESMITH, "run", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), cwd=ROOT, start_new_session=True)
    trials_file = tmp_path / "results" / "r" / "trials.parquet"

    def two_done():
        return trials_file.exists() and (_trials(trials_file).status == "completed").sum() >= 2

    def unlisted_rows():   # a trial's epoch rows on disk before trials.parquet lists it (CI met this)
        rows = pds.dataset(trials_file.parent / "epochs").to_table(columns=["trial_id"]).column(0).to_pylist()
        return bool(set(rows) - set(_trials(trials_file).trial_id))
    try:
        _wait_for(two_done, 180, "two completed trials")
        deadline = time.time() + 3   # the next trials' first second (each runs in about 1.7 s)
        while time.time() < deadline and not unlisted_rows():
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = time.time()
    # SIGKILL mid-sweep: every part file already written reads back whole, none empty
    parts = [p for p in (tmp_path / "results" / "r" / "epochs").iterdir() if p.suffix == ".parquet"]
    assert parts and not [p for p in parts if p.stat().st_size == 0]
    assert sum(pq.read_table(p).num_rows for p in parts) >= 24   # two trials' 12 epochs
    before = _trials(trials_file).set_index("trial_id")
    done_before = set(before.index[before.status == "completed"])
    assert len(done_before) < 8, "the sweep ended before it could be killed"

    out = _run(["resume", str(tmp_path / "results" / "r")], timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resumed r" in out.stdout
    after = _trials(trials_file).set_index("trial_id")
    assert len(after) == 8 and set(after.status) == {"completed"}
    epochs = pq.read_table(tmp_path / "results" / "r" / "epochs").to_pandas()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.groupby("trial_id").epoch.apply(sorted) .map(lambda e: e == list(range(1, 13)))).all()
    for tid in done_before:   # not rerun: no row of theirs was written after the kill
        rows = epochs[epochs.trial_id == tid]
        assert rows.timestamp.max().timestamp() < killed_at
        assert after.loc[tid, "started_at"] == before.loc[tid, "started_at"]
    manifest = json.loads((tmp_path / "results" / "r" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed_at"] and manifest["trials"] == {"completed": 8}
    # checkpoints: only the best trial's final one is kept, and trials.parquet names it
    kept = after.checkpoint.dropna()
    best = after.sort_values(["best_val_acc", "best_val_loss"], ascending=[False, True]).index[0]   # ties: lower loss
    assert len(kept) == 1 and kept.index[0] == best and os.path.isdir(kept.iloc[0])
    assert os.path.exists(os.path.join(kept.iloc[0], "trainer.pt"))


def test_a_sweep_killed_in_its_confirmation_resumes_it(tmp_path):
    """SIGKILL the driver while the finalists are being confirmed: `resume` restores the
    confirmation (not the finished search), ends it, gives the verdict and keeps the confirmed
    winner's checkpoint; no epoch is written twice."""
    spec = tmp_path / "c.yaml"
    spec.write_text(f"""
name: c
dataset: {{name: digits}}
model: {{width: 8}}
trainer: {{epochs: 12, per_gpu_batch_size: 16}}
search: {{num_samples: 2, max_concurrent: 1, space: {{lr: {{loguniform: [0.02, 0.2]}}}}}}
asha: {{enabled: false}}
confirm: {{top: 2, seeds: 1}}
results_dir: {tmp_path / 'results'}
""")
    proc = subprocess.Popen([TUNESMITH, "run", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), cwd=ROOT, start_new_session=True)
    trials_file = tmp_path / "results" / "c" / "trials.parquet"

    def confirming():   # read from the epoch rows: trials.parquet counts a running trial's epochs
        if not trials_file.exists():   # every 5 s, and on a quiet machine both runs ended within that
            return False
        t = _trials(trials_file)
        ids = set(t.trial_id[t.phase == "confirm"]) if "phase" in t else set()
        if not ids or not (trials_file.parent / "epochs").exists():
            return False
        rows = pds.dataset(trials_file.parent / "epochs").to_table(columns=["trial_id", "epoch"]).to_pandas()
        return bool(((rows.trial_id.isin(ids)) & (rows.epoch >= 2)).any())
    try:
        _wait_for(confirming, 240, "a confirmation run's second epoch")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = _trials(trials_file)
    assert (before[before.phase == "search"].status == "completed").all()
    assert not (before[before.phase == "confirm"].status == "completed").all(), "the confirmation ended first"
    out = _run(["resume", str(tmp_path / "results" / "c")], timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "verdict: " in out.stdout and "test: test_acc" in out.stdout
    after = _trials(trials_file).set_index("trial_id")
    confirmed = after[after.phase == "confirm"]
    assert len(after) == 4 and len(confirmed) == 2 and set(after.status) == {"completed"}
    assert confirmed.test_acc.notna().all() and (confirmed.epochs == 12).all()
    epochs = pq.read_table(tmp_path / "results" / "c" / "epochs").to_pandas()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    kept = after.checkpoint.dropna()
    assert len(kept) == 1 and kept.index[0] in confirmed.index and os.path.isdir(kept.iloc[0])
    manifest = json.loads((tmp_path / "results" / "c" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["confirm"]["finalists"][0]["test"] is not None


def test_resume_refuses_a_folder_tunesmith_did_not_write(tmp_path):
    (tmp_path / "x" / "_tune").mkdir(parents=True)
    (tmp_path / "x" / "_tune" / "tuner.pkl").write_bytes(b"not ours")
    out = _run(["resume", str(tmp_path / "x")])
    assert out.returncode == 2 and "no manifest.json" in out.stderr and out.stderr.count("\n") == 1


def test_the_console_entry_flushes_runs_atexit_and_keeps_the_exit_code(tmp_path):
    """entry() ends the process without the interpreter's teardown: what was printed, even
    block-buffered into a pipe, and what atexit had to do still happen; the exit code is main's."""
    code = ("import atexit, sys; atexit.register(print, 'atexit ran'); print('x' * 100000); "
            f"sys.argv = ['tunesmith', 'analyze', {str(tmp_path / 'none')!r}]; "
            "from tunesmith.orchestrator.cli import entry; entry()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.endswith("x" * 100000 + "\natexit ran\n")
    assert proc.stderr.startswith("tunesmith: error:") and proc.stderr.count("\n") == 1, proc.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    """`tunesmith spaces | head -1`: the reader is gone before the output is written. The command
    ends as one that SIGPIPE ended (141), with nothing on stderr; it printed a traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([TUNESMITH, "spaces"], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=_env(), cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", (proc.returncode, proc.stderr[-2000:])


@pytest.mark.serial
def test_smith_whose_budget_ends_before_stage_2_says_so_in_one_line(tmp_path):
    """A budget that Ray's start-up and the range test use up: one line naming the budget (it
    used to be 'time_budget_s = -1.7167384624481201: must be > 0', a value the user never gave),
    exit code 1, and the range test's curve kept."""
    proc = _run(["smith", "examples/digits.yaml", "--results-dir", str(tmp_path), "--name", "short",
                 "--set", "time_budget_s=1"], timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("tunesmith: time_budget_s = 1: Ray's start-up and the range test took"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert (tmp_path / "short" / "lr_find" / "curve.parquet").exists()


def test_resume_never_continues_a_trial_the_files_record_as_ended(tmp_path):
    """Tune snapshots its state every few seconds (here once a minute), so a driver killed just
    after ASHA pruned a trial leaves a snapshot that calls it unfinished, and a plain restore
    trained it on to the end. `resume` stops every trial that trials.parquet records as pruned,
    completed or diverged before it trains again."""
    spec = tmp_path / "p.yaml"
    spec.write_text(f"""
name: p
dataset: {{name: digits}}
model: {{width: 8}}
trainer: {{epochs: 6, per_gpu_batch_size: 16}}
search: {{num_samples: 8, max_concurrent: 2, space: {{lr: {{loguniform: [0.003, 0.3]}}}}}}
asha: {{grace_period: 1, reduction_factor: 2}}
confirm: {{top: 0}}
results_dir: {tmp_path / 'results'}
""")
    env = {**_env(), "TUNE_GLOBAL_CHECKPOINT_S": "60"}
    proc = subprocess.Popen([TUNESMITH, "run", str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=ROOT, start_new_session=True)
    trials_file = tmp_path / "results" / "p" / "trials.parquet"

    def ended_some():   # the first pruning: most of the sweep's eight trials are still to come
        return trials_file.exists() and "pruned" in set(_trials(trials_file).status)
    try:
        _wait_for(ended_some, 180, "a pruned trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = _trials(trials_file).set_index("trial_id")
    ended = before[before.status.isin(["pruned", "completed"])]
    rows_before = pq.read_table(tmp_path / "results" / "p" / "epochs").to_pandas().groupby("trial_id").size()

    out = subprocess.run([TUNESMITH, "resume", str(tmp_path / "results" / "p")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    after = _trials(trials_file).set_index("trial_id")
    rows_after = pq.read_table(tmp_path / "results" / "p" / "epochs").to_pandas().groupby("trial_id").size()
    for tid, row in ended.iterrows():
        assert after.loc[tid, "status"] == row.status and after.loc[tid, "stop_reason"] == row.stop_reason
        assert rows_after[tid] == rows_before[tid], f"{tid} ({row.status}) trained again after the resume"
    assert "running" not in set(after.status)
