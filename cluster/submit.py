"""Submitting sweeps to a Ray cluster through the Jobs API, and managing them.

`tunesmith submit` validates the spec here, then submits `tunesmith run` on the resolved spec as
a Ray job: the runtime environment carries tunesmith's packages and the spec, and the job's
driver runs on the head node (`--address auto`), where it checks that every node reaches the
results storage before any trial starts. `tunesmith jobs stop` ends the sweep as Ctrl-C does:
the job is submitted with RAY_JOB_STOP_SIGNAL=SIGINT, so trials are stopped and marked, and the
results kept.

Token authentication stays on: the client presents RAY_AUTH_TOKEN, or the token `ray start`
keeps in ~/.ray/auth_token, as an Authorization header. RAY_ADDRESS in the environment would
silently override the address given to the client (and RAY_API_SERVER_ADDRESS too), so an
explicit --address takes their place for this process.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Optional, Sequence

import yaml

from tunesmith.trainables.config import ConfigError

STOP_WAIT_S = 60   # Tune needs a moment to stop trials and close the writers after SIGINT
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _token() -> Optional[str]:
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if not token and os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    return token or None


def plain_http_elsewhere(address: str) -> bool:
    """A job server reached over plain http at an address that is not this machine's loopback."""
    from urllib.parse import urlsplit
    import ipaddress
    parts = urlsplit(address)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True   # a host name: it may resolve anywhere


def warn_plain_token(c, address: str) -> None:
    """Once, after the job server accepted a request (bad input stays one line): the token went
    over plain http to another machine."""
    if getattr(c, "tunesmith_plain_token", False):
        c.tunesmith_plain_token = False
        print(f"tunesmith: warning: the cluster's token went in clear text to {address}; use https:// for a head "
              "that is not on this machine", file=sys.stderr, flush=True)


def client(address: Optional[str]):
    """A JobSubmissionClient for ``address`` (http://HEAD:8265), or a one-line error naming it."""
    if not address:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
        if not address or not address.startswith("http"):
            raise ConfigError("--address", address, "give the head's job server, such as http://HEAD:8265")
    if not address.startswith(("http://", "https://")):
        raise ConfigError("--address", address, "must be the job server's URL, such as http://HEAD:8265")
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):   # the explicit address wins
        os.environ.pop(var, None)
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    from ray.job_submission import JobSubmissionClient
    try:
        found = JobSubmissionClient(address, headers=headers)
        found.tunesmith_plain_token = bool(token) and plain_http_elsewhere(address)
        return found
    except ConnectionError as exc:
        raise ConfigError("--address", address, f"no Ray job server answers there ({_first_line(exc)}); check that "
                          "the head is up with its dashboard, and that this machine reaches port 8265") from None
    except Exception as exc:   # noqa: BLE001 - Ray's auth errors have no common base class
        raise ConfigError("--address", address, _auth_hint(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _auth_hint(exc: BaseException) -> str:
    text = str(exc)
    if "401" in text or "403" in text or "uthenticat" in text or "oken" in text:
        return ("the job server refused this client's token" if _token() else "the job server wants a token") + \
               ": set RAY_AUTH_TOKEN, or copy the head's ~/.ray/auth_token to this machine"
    return _first_line(exc)


SPEC_VAR = "TUNESMITH_JOB_SPEC"


def _runtime_env(spec_dict: dict) -> dict:
    """tunesmith's packages and the resolved spec (as YAML in an environment variable) travel
    with the job. No working_dir: a job driver that calls ray.init can see Ray unpack the
    working_dir again under its feet (its cwd vanished mid-import in a test here)."""
    from tunesmith.cluster.connect import shipped_package
    return {"py_modules": [shipped_package()],
            "env_vars": {SPEC_VAR: yaml.safe_dump(spec_dict, sort_keys=False), "RAY_JOB_STOP_SIGNAL": "SIGINT",
                         "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "PYTHONUNBUFFERED": "1"}}


def submit(spec, address: Optional[str], wait: bool, out=sys.stdout, command: str = "run",
           options: Sequence[str] = ()) -> int:
    """Submit the validated ``spec`` as a job that runs ``tunesmith COMMAND`` (run or smith) with
    ``options``; the job's exit code when waiting, else 0 once submitted."""
    from tunesmith.cluster.storage import is_uri
    from tunesmith.trainables.config import redact
    if not is_uri(spec.results_dir) and not os.path.isabs(spec.results_dir):
        raise ConfigError("results_dir", spec.results_dir, "a job runs in a temporary folder on the head: give an "
                          "absolute path every node reaches, or a URI (s3://..., gs://...)")
    c = client(address)
    try:
        c.list_jobs()   # fails fast on a refused token, before anything is submitted
    except Exception as exc:   # noqa: BLE001
        raise ConfigError("--address", address, _auth_hint(exc)) from None
    entrypoint = shlex.join(["python", "-m", "tunesmith.orchestrator", command, f"env:{SPEC_VAR}", "--address",
                             "auto", *options])
    job_id = c.submit_job(entrypoint=entrypoint,
                          runtime_env=_runtime_env(spec.to_dict(secrets=True)),   # the job writes there
                          metadata={"tunesmith_sweep": spec.name, "results_dir": redact(spec.results_dir)})
    print(f"submitted {job_id}: {'smith ' if command == 'smith' else ''}sweep {spec.name} -> {redact(spec.results_dir)}",
          file=out, flush=True)
    warn_plain_token(c, address)
    if not wait:
        print(f"follow it with: tunesmith jobs logs {job_id} --address {address}", file=out)
        return 0
    return follow(c, job_id, out)


def follow(c, job_id: str, out=sys.stdout, poll_s: float = 1.0) -> int:
    """Print the job's log as it grows; the job driver's exit code at the end (130 if stopped)."""
    shown = 0
    while True:
        status = str(c.get_job_status(job_id).value if hasattr(c.get_job_status(job_id), "value")
                     else c.get_job_status(job_id))
        logs = c.get_job_logs(job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    info = c.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if status == "STOPPED":
        return 130
    if code is not None:
        return int(code)
    return 0 if status == "SUCCEEDED" else 1


def jobs(action: str, job_id: Optional[str], address: Optional[str], out=sys.stdout) -> int:
    c = client(address)
    code = _jobs(c, action, job_id, address, out)
    warn_plain_token(c, address)   # after the answer: an error stays one line
    return code


def _jobs(c, action: str, job_id: Optional[str], address: Optional[str], out) -> int:
    try:
        if action == "list":
            rows = [(j.submission_id or j.job_id, str(j.status.value if hasattr(j.status, "value") else j.status),
                     (j.metadata or {}).get("tunesmith_sweep", "-"), j.entrypoint) for j in c.list_jobs()]
            print(f"{'job':<28} {'status':<10} {'sweep':<20} entrypoint", file=out)
            for r in rows:
                print(f"{r[0]:<28} {r[1]:<10} {r[2]:<20} {r[3]}", file=out)
            return 0
        if not job_id:
            raise ConfigError("JOB_ID", None, f"jobs {action} needs a job id (tunesmith jobs list shows them)")
        if action == "status":
            info = c.get_job_info(job_id)
            st = info.status.value if hasattr(info.status, "value") else info.status
            print(f"{job_id}: {st}" + (f" ({info.message})" if info.message else ""), file=out)
            return 0
        if action == "logs":
            out.write(c.get_job_logs(job_id))
            return 0
        if action == "stop":
            c.stop_job(job_id)   # SIGINT to the job's driver: Tune stops the trials, the writers close
            deadline = time.time() + STOP_WAIT_S + 15
            while time.time() < deadline:
                st = c.get_job_status(job_id)
                st = st.value if hasattr(st, "value") else str(st)
                if st in TERMINAL:
                    print(f"{job_id}: {st}", file=out)
                    return 0
                time.sleep(0.5)
            print(f"{job_id}: still stopping", file=out)
            return 1
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise ConfigError("JOB_ID", job_id, "no such job on this cluster") from None
        raise
    raise ConfigError("jobs", action, "choose list, status, logs or stop")
