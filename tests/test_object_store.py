"""Results in an object store: a sweep, lr-find and analyze against an S3 API served on
127.0.0.1 by moto's standalone server, through pyarrow's S3 filesystem."""
import os
import socket
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tunesmith.orchestrator.cli import main

pytestmark = [pytest.mark.slow]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = _free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                fs.create_dir("sweeps")   # the bucket
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield f"s3://sweeps/results?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", fs
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SPEC = """
name: remote
dataset: {name: digits}
model: {width: 8}
trainer: {epochs: 2, per_gpu_batch_size: 128, preview_every: 1}
search:
  num_samples: 2
  space: {lr: {loguniform: [0.05, 0.2]}}
asha: {enabled: false}
confirm: {top: 0}
"""


@pytest.mark.ray
def test_sweep_writes_to_the_object_store(ray_session, s3, spec_file, capsys):
    uri, fs = s3
    assert main(["run", spec_file(SPEC), "--results-dir", uri]) == 0
    with fs.open_input_file("sweeps/results/remote/trials.parquet") as fh:
        trials = pq.read_table(fh).to_pandas()
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    parts = fs.get_file_info(pafs.FileSelector("sweeps/results/remote/epochs"))
    rows = sum(pq.read_table(fs.open_input_file(p.path)).num_rows for p in parts if p.path.endswith(".parquet"))
    assert rows == 4
    events = fs.get_file_info(pafs.FileSelector("sweeps/results/remote/tensorboard", recursive=True))
    assert len([e for e in events if "tfevents" in e.path]) >= 2
    assert fs.get_file_info("sweeps/results/remote/manifest.json").type == pafs.FileType.File
    capsys.readouterr()
    assert main(["analyze", uri, "--format", "json", "--no-plots"]) == 0
    assert '"sweep": "remote"' in capsys.readouterr().out
    # a second run under the same name is refused, and nothing of the first is lost
    assert main(["run", spec_file(SPEC), "--results-dir", uri]) == 2
    assert "already holds a sweep" in capsys.readouterr().err


def test_lr_find_writes_to_the_object_store(s3, spec_file):
    uri, fs = s3
    assert main(["lr-find", spec_file(SPEC.replace("name: remote", "name: lrf")), "--results-dir", uri,
                 "--steps", "40"]) == 0
    for name in ("curve.parquet", "lr_find.png", "decision.json"):
        assert fs.get_file_info(f"sweeps/results/lrf/lr_find/{name}").type == pafs.FileType.File
    events = fs.get_file_info(pafs.FileSelector("sweeps/results/lrf/tensorboard/lr_find"))
    assert any("tfevents" in e.path for e in events)


@pytest.mark.ray
def test_credentials_in_the_uri_are_written_nowhere(ray_session, s3, spec_file, capsys):
    """s3://KEY:SECRET@bucket/... once left the secret in spec.yaml, manifest.json, Tune's
    tuner.pkl and its search state. The credentials go to the process's environment instead;
    every object the sweep wrote, and everything it printed, is read for the secret."""
    uri, fs = s3
    secret = "TopSecret0123456789abcdef"
    with_creds = uri.replace("s3://", f"s3://AKIDEXAMPLE:{secret}@")
    assert main(["run", spec_file(SPEC.replace("name: remote", "name: secret")), "--results-dir", with_creds]) == 0
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    written = [i.path for i in fs.get_file_info(pafs.FileSelector("sweeps/results/secret", recursive=True))
               if i.type == pafs.FileType.File]
    assert any(p.endswith("tuner.pkl") for p in written) and any(p.endswith("spec.yaml") for p in written)
    leaks = [p for p in written if secret.encode() in fs.open_input_stream(p).readall()]
    assert leaks == []
    spec_yaml = fs.open_input_stream("sweeps/results/secret/spec.yaml").readall().decode()
    assert "s3://***@sweeps/results" in spec_yaml


CLAIM_AT = """
import sys, time
from tunesmith.cluster.storage import Storage
from tunesmith.trainables.config import ConfigError
storage = Storage(sys.argv[1])
storage.exists("warm")   # the store's client made and connected before the agreed instant
at = float(sys.argv[3])
while time.time() < at:
    pass
try:
    storage.claim(sys.argv[2])
    print("won", flush=True)
except ConfigError as exc:
    print(exc, flush=True)
"""


def test_two_commands_claiming_one_sweep_name_on_an_object_store_at_once_one_wins(s3):
    """An object store has no exclusive create through pyarrow: a check then a write let two
    commands started in the same instant both claim a name. The claim is read back after a
    settle time; exactly one of the two wins."""
    import subprocess
    uri, fs = s3
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for round_ in range(2):
        at = time.time() + 4
        procs = [subprocess.Popen([sys.executable, "-c", CLAIM_AT, uri, f"race{round_}", str(at)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert results[1] == "won" and "being written by another tunesmith command" in results[0], results
