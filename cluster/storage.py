"""Where results go: a local path or any URI pyarrow has a filesystem for (s3://, gs://,
hdfs://, file://). Every file is written whole under a hidden temporary name and then
renamed, so a reader never sees half a file and a crash leaves no partial one."""
from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import List, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tunesmith.trainables.config import ConfigError, redact


CLAIM = ".tunesmith-claim"   # a sweep folder's marker: which command is writing it
CLAIM_SETTLE_S = 1.0         # on an object store: how long a claim waits before reading itself back, far
                             # longer than another command's gap between its own check and its write
_CLAIMS: dict = {}            # (location, name) -> this process's claim token


_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)([^/@?#\s:]*):([^/@?#\s]*)@")


def take_credentials(location: str) -> str:
    """``s3://KEY:SECRET@bucket/p`` -> ``s3://bucket/p``, with KEY and SECRET moved to this
    process's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), where pyarrow reads them
    and where neither Tune's pickled state nor any file tunesmith writes holds them. A redacted
    ``***`` in their place (a spec.yaml read back) leaves the environment's own."""
    if re.match(r"^[A-Za-z][\w+.-]*://\*\*\*@", location):   # as tunesmith wrote it down
        scheme, _, rest = location.partition("://***@")
        return f"{scheme}://{rest}"
    m = _USERINFO.match(location)
    if not m:
        return location
    scheme, key, secret = m.groups()
    if scheme.lower().startswith("s3") and key != "***":
        from urllib.parse import unquote
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = unquote(key), unquote(secret)
    return scheme + location[m.end():]


def is_uri(path: str) -> bool:
    return "://" in path


class Storage:
    def __init__(self, location: str):
        if is_uri(location):
            location = take_credentials(location)
            self.location = redact(location)   # what is shown and written: never a secret
            try:
                self.fs, root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise ConfigError("results_dir", self.location, f"no filesystem for it: {exc}") from None
            self.root = root.rstrip("/")
        else:
            self.location = location
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(os.path.expanduser(location))

    def parent(self) -> "Storage":
        """The same filesystem, one folder up."""
        up = Storage.__new__(Storage)
        up.location, up.fs, up.root = self.location, self.fs, posixpath.dirname(self.root.rstrip("/"))
        return up

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri(self, *parts: str) -> str:
        """For people and readers: a local path, or the URI with its query (endpoint and such)."""
        if self.is_local:
            return self.path(*parts)
        scheme = self.location.split("://", 1)[0]
        query = self.location.split("?", 1)[1] if "?" in self.location else ""
        return f"{scheme}://{self.path(*parts).lstrip('/')}" + (f"?{query}" if query else "")

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def is_dir(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.Directory

    def listdir(self, *parts: str) -> List[str]:
        if not self.is_dir(*parts):
            return []
        sel = pafs.FileSelector(self.path(*parts), recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel))

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def _tmp(self, final: str) -> str:
        head, tail = posixpath.split(final)
        return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")

    def _write(self, rel: str, fill) -> None:
        """``fill(stream)`` writes the file under a hidden temporary name, which is then renamed:
        whole or not at all. A failed write (a full disk, an object store's error) removes the
        temporary file and raises."""
        final = self.path(rel)
        tmp = self._tmp(final)
        try:
            with self.fs.open_output_stream(tmp) as out:
                fill(out)
            self.fs.move(tmp, final)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except Exception:   # noqa: BLE001 - never made, or the store is gone: the first error is the one to tell
                pass
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._write(rel, lambda out: out.write(data))

    def write_table(self, rel: str, table: pa.Table) -> None:
        self._write(rel, lambda out: pq.write_table(table, out, compression="zstd"))

    def _first_missing(self) -> Optional[str]:
        """The outermost folder of the root that does not exist yet, or None."""
        path, missing = self.root, None
        while path and not os.path.exists(path):
            missing, path = path, os.path.dirname(path)
        return missing

    def probe(self, field: str = "results_dir") -> None:
        """Write and remove a small file here, before anything slow starts: a read-only mount, a
        full disk, a missing bucket or refused credentials are bad input (one line, exit 2)."""
        marker = f".tunesmith-probe-{uuid.uuid4().hex[:8]}"
        made = self._first_missing() if self.is_local else None
        try:
            self.makedirs()
            self.write_bytes(marker, b"tunesmith")
            self.fs.delete_file(self.path(marker))
            if made is not None:   # leave no folder behind that this check alone made
                self.fs.delete_dir(made)
        except (OSError, pa.ArrowException) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(field, self.location, f"cannot write there ({first})") from None

    def read_table(self, rel: str) -> pa.Table:
        """Read through one open file: trials.parquet is replaced (renamed over) while a sweep
        runs, and a reader that opens the path twice, as pq.read_table(path) does, can take the
        footer of one version and the pages of the next."""
        with self.fs.open_input_file(self.path(rel)) as fh:
            return pq.read_table(fh)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.readall()

    def upload_dir(self, local_dir: str, rel: str, sent: Optional[dict] = None) -> None:
        """Mirror a local staging folder (TensorBoard's event files) to the store. With ``sent``
        (path -> (size, mtime) of what went up before), only new and changed files go up: a
        10,000-trial sweep does not send every trial's events again at each flush."""
        if self.is_local:
            return
        if sent is None:
            pafs.copy_files(local_dir, self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
            return
        for folder, _, names in os.walk(local_dir):
            for name in names:
                src = os.path.join(folder, name)
                st = os.stat(src)
                stamp = (st.st_size, st.st_mtime_ns)
                if sent.get(src) == stamp:
                    continue
                dst = self.path(rel, os.path.relpath(src, local_dir).replace(os.sep, "/"))
                self.fs.create_dir(posixpath.dirname(dst), recursive=True)
                pafs.copy_files(src, dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
                sent[src] = stamp

    def local_path(self, *parts: str) -> Optional[str]:
        return self.path(*parts) if self.is_local else None

    # --- one command per sweep folder ------------------------------------------------------
    def claim(self, name: str) -> None:
        """Claim the sweep folder ``name`` for this command, before anything slow starts: two
        commands started with the same name at once cannot both write it. On a local or shared
        filesystem the claim is an exclusive create. An object store has no such create through
        pyarrow, but its writes are whole and its reads see the latest (S3's strong
        read-after-write): the claim is written in one PUT, and read back CLAIM_SETTLE_S later;
        of two commands that both found the name free, the one whose claim was overwritten in
        that time is refused, and the last writer wins. A claim whose process is gone (same
        host) is taken over. A folder that holds nothing but this command's claim is removed at
        exit."""
        import atexit
        import socket
        if self.is_ours(name):
            return
        token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex[:8]}"
        rel = f"{name}/{CLAIM}"
        made = None
        if self.is_local:
            made = self._first_missing()
            self.makedirs(name)
            try:
                fd = os.open(self.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(rel):
                    raise self._claimed(name, rel) from None
                os.remove(self.path(rel))
                return self.claim(name)
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
        else:
            import time
            if self.exists(rel) and not self._stale(rel):
                raise self._claimed(name, rel)
            with self.fs.open_output_stream(self.path(rel)) as out:   # one PUT: no rename's gap
                out.write(token.encode())
            time.sleep(CLAIM_SETTLE_S)
            if self._holder(rel) != token:
                raise self._claimed(name, rel)
        _CLAIMS[(self.location, name)] = (token, made)
        atexit.register(self.release, name)

    def is_ours(self, name: str) -> bool:
        held = _CLAIMS.get((self.location, name))
        return held is not None and self.exists(name, CLAIM) and self.read_bytes(f"{name}/{CLAIM}").decode() == held[0]

    def release(self, name: str) -> None:
        """Remove this command's claim where the folder holds nothing else (the command ended
        before it wrote anything); a sweep's folder keeps it."""
        try:
            if self.is_ours(name) and self.listdir(name) == [CLAIM]:
                self.fs.delete_dir(self.path(name))
                made = _CLAIMS[(self.location, name)][1]
                if made is not None and os.path.isdir(made) and not os.listdir(made):
                    self.fs.delete_dir(made)   # and the folders the claim alone made
        except Exception:   # noqa: BLE001 - at exit, on a store that may be gone: a marker is left at worst
            pass
        _CLAIMS.pop((self.location, name), None)

    def _holder(self, rel: str) -> str:
        try:
            return self.read_bytes(rel).decode(errors="replace")
        except Exception:   # noqa: BLE001
            return ""

    def _stale(self, rel: str) -> bool:
        """The claim of a process on this host that no longer runs (a killed command)."""
        import socket
        host, _, rest = self._holder(rel).partition(" ")
        pid = rest.split(" ")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _claimed(self, name: str, rel: str) -> ConfigError:
        host, _, rest = self._holder(rel).partition(" ")
        who = f" (process {rest.split(' ')[0]} on {host})" if host else ""
        return ConfigError("name", name, f"{self.uri(name)} is being written by another tunesmith command{who}; "
                           "pick another --name")


def release_claims() -> None:
    """Every claim this process holds on a folder it wrote nothing else to (a command that
    ended early, bad input found after the claim)."""
    for location, name in reversed(list(_CLAIMS)):   # the last made first: a folder the first made empties last
        Storage(location).release(name)


def refused(exc_or_text) -> str:
    """Why a write failed, where the storage refused it (full, over quota, read-only): an
    OSError, or a trial's error text (a checkpoint Tune could not persist). '' otherwise."""
    import errno
    codes = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    code = getattr(exc_or_text, "errno", None)
    if code not in codes:
        text = str(exc_or_text).lower()
        code = next((c for c in codes if f"[errno {c}]" in text or os.strerror(c).lower() in text), None)
    return os.strerror(code) if code else ""

