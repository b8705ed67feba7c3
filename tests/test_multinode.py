"""A two-node Ray cluster started the way users start one (`ray start`), each node in a
network namespace this test creates, and `tunesmith run --address` from the head node.
Checks that trials ran on both nodes and that the driver wrote every result. The namespaces
share the filesystem, so an absolute path stands in for shared storage. Needs root (ip netns).
"""
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    """Names and a subnet unique to this run, so parallel runs do not collide."""
    tag = os.getpid() % 200 + 20
    a, b, br = f"tsA{tag}", f"tsB{tag}", f"tsbr{tag}"
    made = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            made.append(("netns", ns))
        _ip("link", "add", br, "type", "bridge")
        made.append(("link", br))
        _ip("link", "set", br, "up")
        for k, ns in enumerate((a, b), 1):
            veth = f"v{ns}"
            _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _ip("link", "set", f"{veth}p", "master", br)
            _ip("link", "set", f"{veth}p", "up")
            _ip("link", "set", veth, "netns", ns)
            _ip("-n", ns, "addr", "add", f"10.77.{tag}.{k}/24", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b, f"10.77.{tag}.1", f"10.77.{tag}.2"
    finally:
        for ns in (a, b):   # only the processes inside our own namespaces
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 20
        while time.time() < deadline and any(
                subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.strip()
                for ns in (a, b) if ("netns", ns) in made):
            time.sleep(0.2)
        for kind, name in reversed(made):
            subprocess.run(["ip", kind, "del", name], capture_output=True)


def _start_node(ns, args, log):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token"}
    return subprocess.Popen(["ip", "netns", "exec", ns, os.path.join(BIN, "ray"), "start", *args,
                             "--num-cpus=1", "--disable-usage-stats", "--block"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_sweep_runs_trials_on_both_nodes(two_namespaces, tmp_path):
    a, b, head_ip, worker_ip = two_namespaces
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "nodes.log", "w")
    procs = [_start_node(a, ["--head", f"--node-ip-address={head_ip}", "--port=6379", "--include-dashboard=false"], log)]
    try:
        check = ("import ray; ray.init(address='%s:6379'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))" % head_ip)
        deadline, started_worker, alive = time.time() + 120, False, "0"
        while time.time() < deadline:
            probe = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", check],
                                   capture_output=True, text=True, env=env, timeout=60)
            alive = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "0"
            if alive == "1" and not started_worker:
                procs.append(_start_node(b, [f"--address={head_ip}:6379", f"--node-ip-address={worker_ip}"], log))
                started_worker = True
            if alive == "2":
                break
            time.sleep(2)
        assert alive == "2", (tmp_path / "nodes.log").read_text()[-3000:]

        results = tmp_path / "shared"
        run = subprocess.run(["ip", "netns", "exec", a, os.path.join(BIN, "tunesmith"), "run",
                              os.path.join(ROOT, "examples", "digits.yaml"), "--address", f"{head_ip}:6379",
                              "--results-dir", str(results), "--num-samples", "6", "--set", "trainer.epochs=3",
                              "--set", "asha.enabled=false"],
                             capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        trials = pq.read_table(results / "digits" / "trials.parquet").to_pandas()
        assert len(trials) == 6 and set(trials.status) == {"completed"}
        assert set(trials.node_ip) == {head_ip, worker_ip}
        epochs = pq.read_table(results / "digits" / "epochs").to_pandas()
        assert len(epochs) == 18 and set(epochs.node_ip) == {head_ip, worker_ip}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        log.close()
