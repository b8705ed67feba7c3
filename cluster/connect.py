"""Starting or joining Ray.

Local sweeps start a private single-node instance bound to 127.0.0.1: with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before Ray starts, the node takes the loopback
address and refuses other nodes, the safe default on a laptop or a shared box. Joining a
cluster (``--address``) ships the trainer package to the workers through the runtime env,
so nothing assumes the trials run on the driver's host.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import warnings
from dataclasses import dataclass
from typing import Optional

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_FILE = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


@dataclass
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool
    dashboard_url: Optional[str] = None
    node_cpus: Optional[float] = None   # the largest single node's: a trial runs on one node
    node_gpus: Optional[float] = None


def prepare_environment() -> None:
    """Variables that must be set before Ray (or Tune) reads them."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    # Our sinks (orchestrator/sinks/) cover Tune's per-trial CSV/JSON/TensorBoard
    # loggers, which cost a directory and three files per trial.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Every epoch checkpoints (the default) triggers Tune's "snapshotting ... may become a
    # bottleneck" warning; 0 switches that warning off.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A trial that the time budget ends before its first epoch returns without a report. Tune
    # means to let such a trial pass, but its check counts the trial's config as reported keys
    # and fails the whole sweep ("Trial returned a result which did not include the specified
    # metric") once a search has two dimensions. tunesmith's trainable always reports the
    # metric with each epoch, and its searchers take a trial without one as no result
    # (search_spaces/tpe.py).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def _bind_loopback_if_imported() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when ray_constants is imported. If
    something imported Ray before prepare_environment() ran, carry the variable's value over,
    or the node would bind to the machine's outward address."""
    import sys
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ.get(LOOPBACK_ENV) == "0":
        constants.ENABLE_RAY_CLUSTER = False


CURRENT_CLUSTER = "/tmp/ray/ray_current_cluster"   # where `ray start` leaves the last head's address
REACH_TIMEOUT_S = 3.0
CLIENT_PORT = 10001   # Ray Client's port on the head, where a ray:// address names none


def resolve_address(address: str) -> str:
    """``auto`` -> the address Ray would use (RAY_ADDRESS, else the last cluster started on this
    machine); ``ray://`` and ``http://`` prefixes are kept out of the reachability check."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS")
    if env and env.startswith(("http://", "https://")):   # a job server's URL, where a GCS address is wanted
        from tunesmith.trainables.config import ConfigError
        raise ConfigError("--address", f"auto (RAY_ADDRESS={env})", "RAY_ADDRESS holds a job server's URL, which "
                          "`submit` and `jobs` take; `run`, `smith` and `resume` join a cluster at its GCS address, "
                          "HEAD:6379: unset RAY_ADDRESS or give --address HEAD:6379")
    if env and env != "auto":
        return env
    try:
        with open(CURRENT_CLUSTER, encoding="utf-8") as fh:
            found = fh.read().strip()
    except OSError:
        found = ""
    if not found:
        from tunesmith.trainables.config import ConfigError
        raise ConfigError("--address", "auto", f"no Ray cluster was started on this machine ({CURRENT_CLUSTER} "
                          "is missing); start one with `ray start --head`, or give HEAD:6379")
    return found


def check_reachable(address: str) -> str:
    """The cluster's GCS answers a TCP connection within a few seconds, or a one-line error
    naming the address: Ray itself retries for a minute and more, printing GCS warnings."""
    import socket
    from tunesmith.trainables.config import ConfigError
    resolved = resolve_address(address)
    client = resolved.startswith("ray://")   # Ray Client: ray.init waits 30 s, then a traceback
    target = resolved.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = target.rpartition(":")
    if client and not sep:
        host, sep, port = target, ":", str(CLIENT_PORT)
    if not sep or not port.isdigit():
        raise ConfigError("--address", address, "must be auto, HOST:PORT (the head's GCS port, 6379 by default) "
                          f"or ray://HOST:PORT (its Ray Client port, {CLIENT_PORT} by default)")
    shown = resolved if resolved == address else f"{resolved} (from {address})"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (
            f"no answer in {REACH_TIMEOUT_S:g}s" if isinstance(exc, socket.timeout) else str(exc))
        what = "Ray Client server" if client else "Ray cluster"
        raise ConfigError("--address", shown, f"no {what} answers there ({why}); check that the head is up "
                          "(`ray status` on it) and that this machine can reach its port") from None
    return resolved


_STAGED: list = []   # the temporary folders shipped_package staged, to remove once Ray has them


@functools.lru_cache(maxsize=1)
def shipped_package() -> str:
    """A folder named ``tunesmith`` holding tunesmith's packages, to ship to every node as a Ray
    ``py_modules`` entry: trials import trainables, and the tasks that load shared data or probe
    storage import orchestrator. An installed wheel already has that folder; an editable install
    maps each subpackage to the repository's top level, so a copy is staged (Ray uploads it by
    content hash, once)."""
    import tunesmith
    names = ("orchestrator", "trainables", "search_spaces", "cluster")
    for base in tunesmith.__path__:
        if all(os.path.isfile(os.path.join(base, n, "__init__.py")) for n in names):
            return base
    import atexit
    import shutil
    import tempfile
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # cluster/ is one of them
    parent = tempfile.mkdtemp(prefix="tunesmith-ship-")
    _STAGED.append(parent)
    atexit.register(shutil.rmtree, parent, True)   # Ray has its own copy once it has uploaded it
    stage = os.path.join(parent, "tunesmith")
    for n in names:
        shutil.copytree(os.path.join(repo, n), os.path.join(stage, n),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return stage


def unstage() -> None:
    """Remove the staged copy now that Ray has uploaded it (ray.init does so before it returns),
    rather than at exit: a driver killed mid-sweep (SIGKILL, a lost host) leaves no copy behind."""
    import shutil
    while _STAGED:
        shutil.rmtree(_STAGED.pop(), ignore_errors=True)
    shipped_package.cache_clear()


# Where a handler's exception would leave a lock held: logging's lock functions (Ray spawns its
# processes there, and logging's fork hook releases its module lock after each fork) and the
# import system's own frames (its module-lock callback holds the global import lock, and an
# exception raised there was swallowed, in CI, as the signal's: the command ran on, or, sent
# again, left the lock held and hung at the next import from another thread).
_FRAGILE = {logging.__file__, "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"}
_LAST_SIGNAL = [signal.SIGINT]   # the signal whose handler raised last: the one sent again


def _later(signum: int) -> None:
    import threading
    again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    again.daemon = True
    again.start()


def _in_set_name(frame) -> bool:
    """Whether ``frame`` runs inside a ``__set_name__``: Python 3.11 turns what leaves one, as a
    class is made, into "RuntimeError: Error calling __set_name__" (CI: SIGTERM while stage 2
    imported Ray Tune, whose ray.data classes have dataclass fields, ended smith with exit 1)."""
    while frame is not None:
        if frame.f_code.co_name == "__set_name__":
            return True
        frame = frame.f_back
    return False


def raise_outside_locks(signum: int, frame, exc: BaseException) -> None:
    """Raise ``exc`` for ``signum``, except where the signal landed in code that holds a lock
    (``_FRAGILE``) or that would turn it into another error (``_in_set_name``): there the signal
    is sent again 50 ms later, out of it."""
    if frame is not None and (frame.f_code.co_filename in _FRAGILE or _in_set_name(frame)):
        _later(signum)
        return
    _LAST_SIGNAL[0] = signum
    raise exc


def _exit_outside_locks(signum, frame) -> None:
    """SIGTERM while ray.init runs, in place of Ray's own handler (sys.exit): the same exit,
    except where the signal lands in a lock's code (``raise_outside_locks``); once in the suite,
    an exit swallowed in logging's fork hook left its lock held and the command hung 90 s."""
    raise_outside_locks(signum, frame, SystemExit(signum))


def _init(ray, address, num_cpus, num_gpus, dashboard, log_to_driver) -> None:
    from ray._private import utils as ray_utils
    own = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda _handler: own(_exit_outside_locks)
    try:
        _start(ray, address, num_cpus, num_gpus, dashboard, log_to_driver)
    finally:
        ray_utils.set_sigterm_handler = own


def _start(ray, address, num_cpus, num_gpus, dashboard, log_to_driver) -> None:
    common = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING, include_dashboard=dashboard)
    if address:
        # A submitted job's driver already has tunesmith in the job's runtime env; Ray refuses
        # a second one given to ray.init.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(address=address, runtime_env=None if in_job else {"py_modules": [shipped_package()]}, **common)
        unstage()
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, dashboard_host="127.0.0.1", **common)


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None,
            num_gpus: Optional[int] = None, dashboard: bool = False,
            log_to_driver: bool = False) -> ClusterInfo:
    prepare_environment()
    if address:
        address = check_reachable(address)
    if not address:
        _bind_loopback_if_imported()
    elif "RAY_AUTH_MODE" not in os.environ and os.path.exists(TOKEN_FILE):
        # `ray start` turns token authentication on by default and keeps the token here; a
        # driver joining that cluster must present it.
        os.environ["RAY_AUTH_MODE"] = "token"
    # Ray announces that token authentication is on at every start: good news, not a warning.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import ray
    started = False
    if not ray.is_initialized():
        try:
            with warnings.catch_warnings():   # said in the error below, in one line
                warnings.filterwarnings("ignore", message="Ray Client connection timed out")
                _init(ray, address, num_cpus, num_gpus, dashboard, log_to_driver)
        except ConnectionError as exc:   # a port that answers but is no Ray Client server (ray.init waited 30 s)
            from tunesmith.trainables.config import ConfigError
            raise ConfigError("--address", address, f"Ray could not connect ({str(exc).splitlines()[0][:160]}): is "
                              f"that the head's Ray Client port ({CLIENT_PORT} by default)?") from None
        except SystemExit as exc:
            # ray.init's own SIGTERM handler (sys.exit(15)) fired while Ray was starting: what was
            # started goes, and the command ends as on Ctrl-C
            if exc.code != signal.SIGTERM:
                raise
            ray.shutdown()
            raise KeyboardInterrupt from None
        started = True
        terminate_as_interrupt()   # ray.init replaced it with its own sys.exit(15)
    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    gcs = getattr(ctx, "gcs_address", None) or address or "local"
    url = None
    if dashboard:
        try:
            url = ray.worker.get_dashboard_url()
        except Exception:  # dashboard extras missing: not fatal
            url = None
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(address=gcs, cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
                       nodes=len(alive), started_here=started, dashboard_url=url,
                       node_cpus=max((float(n["Resources"].get("CPU", 0)) for n in alive), default=None),
                       node_gpus=max((float(n["Resources"].get("GPU", 0)) for n in alive), default=None))


def interrupt(signum, frame) -> None:
    """Ctrl-C's own handler, for SIGTERM too: a KeyboardInterrupt, outside a lock's code."""
    raise_outside_locks(signum, frame, KeyboardInterrupt())


def _resend_swallowed(unraisable) -> None:
    """Python runs a signal's handler at the next bytecode, wherever it is; where that is a
    weakref callback, a __del__ or a fork hook (importlib's module-lock callback, once in CI), the
    handler's KeyboardInterrupt or exit is printed as "Exception ignored" and lost, and the
    command ran on as if never signalled. The signal is sent again 50 ms later, out of there."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == signal.SIGTERM):
        _later(_LAST_SIGNAL[0])
        return
    _resend_swallowed.previous(unraisable)


def terminate_as_interrupt() -> None:
    """SIGTERM (Kubernetes, `ray job stop`, `kill`) handled as the first Ctrl-C: a
    KeyboardInterrupt wherever the command is, which each phase already cleans up after, and
    never lost where Python swallows exceptions (``_resend_swallowed``). Set from the main thread
    only (Python's rule); the sweep's stopper takes both signals while Tune runs."""
    import sys
    import threading
    if sys.unraisablehook is not _resend_swallowed:
        _resend_swallowed.previous = sys.unraisablehook
        sys.unraisablehook = _resend_swallowed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)


def disconnect(info: ClusterInfo) -> None:
    import ray
    if info.started_here and ray.is_initialized():
        ray.shutdown()
