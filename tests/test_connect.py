"""Joining a cluster that is not there fails in seconds with one line, before Ray is asked."""
import socket
import time

import pytest

from tunesmith.cluster import connect as connect_mod
from tunesmith.orchestrator.cli import main

SPEC = "name: c\ndataset: {name: digits}\nresults_dir: RESULTS\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again when the block ends: nothing listens


@pytest.mark.parametrize("scheme,what", [("", "Ray cluster"), ("ray://", "Ray Client server")])
def test_address_where_nothing_listens_is_one_line_exit_2_in_seconds(tmp_path, capsys, spec_file, scheme, what):
    """ray:// went straight to ray.init, which waited 30 s and ended in a traceback."""
    port = _closed_port()
    began = time.monotonic()
    assert main(["run", spec_file(SPEC), "--address", f"{scheme}127.0.0.1:{port}"]) == 2
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--address = '{scheme}127.0.0.1:{port}'" in err, err
    assert f"no {what} answers there (connection refused)" in err
    assert not (tmp_path / "results").exists()


def test_a_port_that_answers_but_is_no_ray_client_server_is_one_line(tmp_path, capsys, spec_file, monkeypatch):
    """Something listens, but Ray Client's handshake times out: Ray's ConnectionError, in one line."""
    import ray

    def times_out(*a, **k):
        raise ConnectionError("ray client connection timeout")
    monkeypatch.setattr(connect_mod, "_init", times_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)   # this worker may hold the suite's Ray
    # joining a cluster turns token authentication on in the environment where `ray start` left a
    # token: here, for this test alone (the suite's Ray, started later in this worker, failed on it)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert main(["run", spec_file(SPEC), "--address", f"ray://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray could not connect (ray client connection timeout)" in err
    assert "Ray Client port (10001 by default)" in err and not (tmp_path / "results").exists()


def test_auto_with_a_stale_cluster_file_names_the_address_it_found(tmp_path, capsys, spec_file, monkeypatch):
    stale = tmp_path / "ray_current_cluster"
    port = _closed_port()
    stale.write_text(f"127.0.0.1:{port}\n")
    monkeypatch.setattr(connect_mod, "CURRENT_CLUSTER", str(stale))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["run", spec_file(SPEC), "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port} (from auto)" in err


def test_auto_with_no_cluster_ever_started(tmp_path, capsys, spec_file, monkeypatch):
    monkeypatch.setattr(connect_mod, "CURRENT_CLUSTER", str(tmp_path / "missing"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["smith", spec_file(SPEC), "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ray start --head" in err


@pytest.mark.parametrize("address", ["headnode", "10.0.0.1:port"])
def test_malformed_address(tmp_path, capsys, spec_file, address):
    assert main(["run", spec_file(SPEC), "--address", address]) == 2
    assert "must be auto, HOST:PORT" in capsys.readouterr().err


def test_a_job_server_url_in_ray_address_with_auto_is_one_line(tmp_path, capsys, spec_file, monkeypatch):
    """RAY_ADDRESS=http://head:8265 is what `submit` takes; `run --address auto` once read it as a
    GCS address and died in a traceback."""
    monkeypatch.setenv("RAY_ADDRESS", "http://10.77.0.1:8265")
    assert main(["run", spec_file("dataset: {name: digits}\nresults_dir: RESULTS\n"), "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "job server's URL" in err and "HEAD:6379" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("address,warn", [("http://10.77.0.1:8265", True), ("http://head.example:8265", True),
                                          ("http://127.0.0.1:8265", False), ("http://localhost:8265", False),
                                          ("http://[::1]:8265", False), ("https://10.77.0.1:8265", False)])
def test_the_token_over_plain_http_to_another_host_is_warned_about(address, warn):
    from tunesmith.cluster.submit import plain_http_elsewhere
    assert plain_http_elsewhere(address) is warn


def test_a_results_location_that_takes_no_writes_is_refused_before_ray(tmp_path, capsys, spec_file):
    """A read-only mount (here a file where a folder should be, which no user can write under)
    was a traceback after Ray had started."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    began = time.time()
    assert main(["run", spec_file(f"dataset: {{name: digits}}\nresults_dir: {blocker}/results\n")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "results_dir" in err and "cannot write there" in err
    assert time.time() - began < 5   # refused before Ray's start


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    from tunesmith.cluster.storage import Storage
    Storage(str(tmp_path / "a" / "b")).probe()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c").mkdir()
    Storage(str(tmp_path / "c")).probe()
    assert list((tmp_path / "c").iterdir()) == []


def _claim_in_a_process(root, name, start, out):
    from tunesmith.cluster.storage import Storage
    from tunesmith.trainables.config import ConfigError
    start.wait()
    try:
        Storage(root).claim(name)
        out.put("won")
    except ConfigError as exc:
        out.put(str(exc))


def test_two_commands_claiming_one_sweep_name_at_once_one_wins(tmp_path):
    """Two sweeps started with the same name at once could both pass the freshness check, and
    then overwrite each other's files. The claim is an exclusive create: exactly one wins."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    for round_ in range(8):
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_claim_in_a_process, args=(str(tmp_path), f"s{round_}", start, out))
                 for _ in range(2)]
        for p in procs:
            p.start()
        start.set()
        results = sorted(out.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert results[1] == "won" and "being written by another tunesmith command" in results[0], results


def test_a_claim_of_a_killed_command_is_taken_over(tmp_path):
    import socket
    from tunesmith.cluster.storage import CLAIM, Storage
    (tmp_path / "s").mkdir()
    dead = subprocess_pid_that_exited()
    (tmp_path / "s" / CLAIM).write_text(f"{socket.gethostname()} {dead} abc")
    st = Storage(str(tmp_path))
    st.claim("s")
    assert st.is_ours("s")
    st.release("s")
    assert not (tmp_path / "s").exists()


def subprocess_pid_that_exited() -> int:
    import subprocess
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _sent_again(handler, frame) -> None:
    """``handler``, given SIGUSR1 as landing in ``frame``, raises nothing and sends it again."""
    import signal
    import threading
    again = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *a: again.set())
    try:
        handler(signal.SIGUSR1, frame)
        assert again.wait(2), "the signal was not sent again"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigterm_during_ray_init_exits_except_inside_loggings_lock_functions():
    """Ray's handler raised sys.exit(15) wherever the signal landed. Landing in logging's fork
    hook (Ray spawning its processes), the exit was swallowed with logging's lock still held, and
    the command hung. The handler used during ray.init exits elsewhere, and there sends the signal
    again a moment later, once out of logging."""
    import logging
    import signal
    import sys
    frames = []
    logger = logging.getLogger("tunesmith-test-frame")
    logger.addFilter(lambda record: frames.append(sys._getframe(1)) or False)   # called from logging's Filterer
    logger.warning("x")
    assert frames and frames[0].f_code.co_filename == logging.__file__
    _sent_again(connect_mod._exit_outside_locks, frames[0])   # no exit here
    with pytest.raises(SystemExit) as exc:
        connect_mod._exit_outside_locks(signal.SIGTERM, sys._getframe())
    assert exc.value.code == signal.SIGTERM


def test_an_interrupt_landing_in_the_import_systems_frames_waits_until_out_of_them():
    """The import system's module-lock callback holds the global import lock: a KeyboardInterrupt
    raised there was swallowed (CI: the command ran on) or left the lock held (CI, once the
    signal was sent again: the next import from another thread hung). There the signal is sent
    again 50 ms later; in ordinary code it raises at once."""
    import signal
    import sys
    frames = []

    class Finder:   # called from importlib's own _find_spec
        def find_spec(self, name, path, target=None):
            frames.append(sys._getframe(1))
    sys.meta_path.insert(0, Finder())
    try:
        with pytest.raises(ImportError):
            import tunesmith_no_such_module  # noqa: F401
    finally:
        sys.meta_path.pop(0)
    assert frames[0].f_code.co_filename == "<frozen importlib._bootstrap>"
    _sent_again(connect_mod.interrupt, frames[0])   # no interrupt here
    with pytest.raises(KeyboardInterrupt):
        connect_mod.interrupt(signal.SIGTERM, sys._getframe())


IN_SET_NAME = """
import os, signal, time
from tunesmith.cluster.connect import terminate_as_interrupt
terminate_as_interrupt()

class Field:
    def __set_name__(self, owner, name):   # the handler runs in here, as the class is made
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100000))

try:
    class Owner:
        field = Field()
    print("made", end=" ")
    time.sleep(3)
    print("ran on")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_sigterm_landing_in_a_set_name_interrupts_once_the_class_is_made():
    """SIGTERM while a class is made (stage 2's import of Ray Tune, where ray.data's dataclass
    fields run __set_name__): raised there, Python 3.11 turned the interrupt into "RuntimeError:
    Error calling __set_name__", and smith ended with exit 1 and a traceback (CI, under load).
    The signal is sent again once out of it."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", IN_SET_NAME], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "made interrupted\n", (proc.stdout, proc.stderr)


SWALLOWED = """
import os, signal, sys, time
from tunesmith.cluster.connect import terminate_as_interrupt
terminate_as_interrupt()

class Swallows:
    def __del__(self):   # the handler runs in here; its exception is "ignored" on the way out
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100000))

start = time.monotonic()
try:
    Swallows()
    time.sleep(3)
    print("ran on")
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - start:.2f}s")
"""


def test_sigterm_swallowed_where_python_ignores_exceptions_is_sent_again():
    """A SIGTERM whose KeyboardInterrupt Python swallowed (a __del__ here; importlib's weakref
    callback in CI, where smith then ran stage 2 to the end) still interrupts the command, a
    moment later, and nothing says "Exception ignored"."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=30)
    assert proc.stdout.startswith("interrupted after"), (proc.stdout, proc.stderr)
    assert float(proc.stdout.split()[-1].rstrip("s")) < 1.0
    assert "Exception ignored" not in proc.stderr
