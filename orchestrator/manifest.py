"""Provenance saved beside every result: the resolved spec, versions, commit, seed, times."""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Dict, Optional

PACKAGES = ("tunesmith", "ray", "torch", "torchvision", "hyperopt", "tensorboardX", "pyarrow", "numpy")


def versions() -> Dict[str, Optional[str]]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str = ".") -> Optional[Dict[str, Any]]:
    try:
        commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build(spec_dict: Dict[str, Any], command: str, cluster: Dict[str, Any]) -> Dict[str, Any]:
    from tunesmith.orchestrator.schema import SCHEMA_VERSION
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    return {"schema_version": SCHEMA_VERSION, "sweep": spec_dict.get("name"), "command": command,
            "argv": sys.argv, "seed": spec_dict.get("seed"), "started_at": now_iso(), "ended_at": None,
            "status": "running", "host": socket.gethostname(), "platform": platform.platform(),
            "versions": versions(), "git": git_commit(here), "cluster": cluster}


def read_sweep(storage, name: str, field: str, target: str):
    """(manifest, spec) of a sweep's folder, as `resume` and `analyze --confirm` read them. A
    manifest.json or spec.yaml cut short or edited by hand is a one-line error naming ``field``
    and ``target``; it was a traceback from json or yaml."""
    import yaml
    from tunesmith.orchestrator.spec import from_dict
    from tunesmith.trainables.config import ConfigError
    try:
        man = json.loads(storage.read_bytes(f"{name}/manifest.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(field, target, f"its manifest.json is not JSON ({str(exc)[:120]})") from None
    try:
        raw = yaml.safe_load(storage.read_bytes(f"{name}/spec.yaml"))
    except yaml.YAMLError as exc:
        raise ConfigError(field, target, f"its spec.yaml is not YAML ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(man, dict) or not isinstance(raw, dict):
        raise ConfigError(field, target, "its manifest.json or spec.yaml holds no mapping")
    confirm = raw.get("confirm", {})
    if isinstance(confirm, dict):
        raw = {**raw, "confirm": {**confirm, "rank_by": written_rank_by(raw)}}
    return man, from_dict(raw, default_name=name)


def written_rank_by(raw: Dict[str, Any]) -> str:
    """confirm.rank_by of a sweep's spec.yaml as tunesmith wrote it (every key, defaults too): one
    written before the key ranked its finalists by the metric, and its later confirmations, and
    `analyze` reading them back, go on doing so."""
    confirm = raw.get("confirm")
    return (confirm.get("rank_by") if isinstance(confirm, dict) else None) or "metric"


def dumps(manifest: Dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()


def save(storage, name: str, manifest: Dict[str, Any]) -> None:
    """Write ``manifest`` as the sweep ``name``'s manifest.json in ``storage``."""
    storage.write_bytes(f"{name}/manifest.json", dumps(manifest))


def save_or_say(storage, name: str, manifest: Dict[str, Any], failure) -> None:
    """``save``, where the sweep may have stopped because its storage failed (``failure``): then
    the manifest's own write failing too is said on stderr, not raised."""
    import pyarrow as pa
    try:
        save(storage, name, manifest)
    except (OSError, pa.ArrowException) as exc:
        if not failure:
            raise
        print(f"tunesmith: the manifest could not say so either ({str(exc).splitlines()[0][:200]})",
              file=sys.stderr, flush=True)


def write_interrupted(storage, name: str, manifest: Dict[str, Any]) -> None:
    """Say in ``manifest`` that its command was interrupted, and save it; a storage error is said
    on stderr, as the interrupt goes on."""
    manifest.update(status="interrupted", ended_at=now_iso())
    try:
        save(storage, name, manifest)
    except OSError as exc:
        print(f"tunesmith: the manifest could not say the sweep was interrupted "
              f"({str(exc).splitlines()[0][:200]})", file=sys.stderr)


@contextmanager
def interrupted_if_stopped(storage, name: str, manifest: Dict[str, Any]):
    """Ctrl-C or SIGTERM inside the block (after ``manifest`` was written as running, before the
    code that closes it took over) rewrites it as interrupted and re-raises."""
    try:
        yield
    except KeyboardInterrupt:
        write_interrupted(storage, name, manifest)
        raise
