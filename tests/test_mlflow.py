"""MLflow as a tracking sink, against a real `mlflow server` on 127.0.0.1 (SQLite backend, local
artifact root), read back with MlflowClient."""
import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
mlflow = pytest.importorskip("mlflow", reason="the test extra installs mlflow")   # noqa: F841


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
           "--default-artifact-root", str(root / "artifacts"), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError((root / "server.log").read_text()[-2000:])
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


SPEC = """
name: {name}
dataset: {{name: digits}}
model: {{width: 8}}
trainer: {{epochs: 4, per_gpu_batch_size: 64}}
search:
  num_samples: 5
  points_to_evaluate: [{{lr: 40.0, weight_decay: 0.0}}]
  space: {{lr: {{loguniform: [0.01, 50.0]}}, weight_decay: {{choice: [0.0, 1.0e-4]}}}}
asha: {{grace_period: 1, reduction_factor: 2}}
confirm: {{top: 1, seeds: 1}}
results_dir: {results}
"""


def test_a_sweep_is_tracked_as_a_parent_run_with_nested_trials(ray_session, server, tmp_path):
    from mlflow.tracking import MlflowClient
    import pyarrow.parquet as pq
    from tunesmith.orchestrator.cli import main
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(name="mlf", results=tmp_path / "results"))
    assert main(["run", str(spec), "--mlflow", server]) == 0
    trials = pq.read_table(tmp_path / "results" / "mlf" / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(tmp_path / "results" / "mlf" / "epochs").to_pandas()
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("tunesmith")
    runs = client.search_runs([exp.experiment_id], "tags.`tunesmith.sweep` = 'mlf'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(trials) == 6   # 5 searched, 1 confirmed
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"spec.json", "manifest.json"}
    want = {"completed": "FINISHED", "pruned": "KILLED", "diverged": "FAILED", "errored": "FAILED"}
    for run in children:
        tid = run.data.tags["tunesmith.trial_id"]
        row = trials.loc[tid]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["status"] == row.status and run.data.tags["stop_reason"] == row.stop_reason
        assert run.info.status == want[row.status]
        assert set(run.data.params) == {"lr", "weight_decay"}
        assert run.data.tags["tunesmith.phase"] == row.phase
        if row.phase == "confirm":   # nested like the others, the finalist and seed named, the test figure logged
            assert run.data.tags["tunesmith.confirms"] == row.confirms and run.data.tags["tunesmith.seed"] == "1000"
            assert run.data.metrics["test_acc"] == pytest.approx(row.test_acc)
        else:
            assert "test_acc" not in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "val_loss")
        mine = epochs[(epochs.trial_id == tid) & epochs.val_loss.notna()].sort_values("epoch")
        assert [m.step for m in history] == list(mine.epoch)   # step = epoch; NaN is left out, as in Parquet
        assert [m.value for m in history] == pytest.approx(list(mine.val_loss))
    assert "diverged" in set(trials.status)   # lr 40 diverges: a FAILED run, checked above


def test_a_server_that_is_down_is_bad_input(tmp_path, capsys):
    from tunesmith.orchestrator.cli import main
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(name="down", results=tmp_path / "results"))
    assert main(["run", str(spec), "--mlflow", f"http://127.0.0.1:{_free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tracking.mlflow.uri" in err and "does not answer" in err
    assert not (tmp_path / "results").exists()


def test_a_store_mlflow_will_not_open_is_bad_input_and_a_database_file_works(tmp_path, capsys, monkeypatch):
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: `--mlflow
    file:///...` was a traceback from MlflowClient's constructor, outside the check."""
    from tunesmith.orchestrator.cli import main
    from tunesmith.orchestrator.sinks.mlflow import connect
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(name="filestore", results=tmp_path / "results"))
    assert main(["run", str(spec), "--mlflow", f"file://{tmp_path}/mlruns"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tracking.mlflow.uri" in err and "sqlite:///" in err, err
    assert not (tmp_path / "results").exists()
    client, exp = connect(f"sqlite:///{tmp_path}/mlflow.db", "e")   # a database file, no server
    assert client.get_experiment(exp).name == "e"


def test_without_mlflow_installed_the_error_says_how_to_install(tmp_path, capsys, monkeypatch):
    import builtins
    from tunesmith.orchestrator.cli import main
    real = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(name="none", results=tmp_path / "results"))
    assert main(["run", str(spec), "--mlflow", "http://127.0.0.1:5000"]) == 2
    assert "pip install 'tunesmith[mlflow]'" in capsys.readouterr().err
