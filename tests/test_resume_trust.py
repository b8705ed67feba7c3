"""`resume` unpickles Tune's state, which runs code: as ssh does with keys, it refuses a state
file that another user owns or that others can write, unless --trust is given."""
import json
import os

import pytest

from tunesmith.orchestrator import resume
from tunesmith.orchestrator.cli import main
from tunesmith.trainables.config import ConfigError


def _sweep(tmp_path):
    root = tmp_path / "results" / "sw"
    (root / "_tune").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"status": "running", "trials": {"running": 1}}))
    (root / "spec.yaml").write_text("name: sw\ndataset: {name: digits}\n")
    (root / "_tune" / "tuner.pkl").write_bytes(b"not read in this test")
    os.chmod(root / "_tune", 0o755)
    os.chmod(root / "_tune" / "tuner.pkl", 0o644)
    return root


def test_state_others_can_write_is_refused_in_one_line(tmp_path, capsys):
    root = _sweep(tmp_path)
    os.chmod(root / "_tune" / "tuner.pkl", 0o666)
    assert main(["resume", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tuner.pkl" in err and "writable by others" in err and "--trust" in err


def test_a_state_folder_others_can_write_is_refused_too(tmp_path):
    root = _sweep(tmp_path)
    os.chmod(root / "_tune", 0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        resume.load(str(root))


def test_own_state_passes_and_trust_overrides(tmp_path):
    root = _sweep(tmp_path)
    assert resume.load(str(root))[1] == "sw"
    os.chmod(root / "_tune" / "tuner.pkl", 0o666)
    assert resume.load(str(root), trust=True)[1] == "sw"


@pytest.mark.parametrize("file,text,says", [("manifest.json", "{cut sh", "its manifest.json is not JSON"),
                                             ("spec.yaml", "name: [sw", "its spec.yaml is not YAML")])
def test_a_manifest_or_spec_cut_short_is_one_line_for_resume_and_confirm(tmp_path, capsys, file, text, says):
    """A file cut short, or edited by hand, was a traceback from json or yaml."""
    root = _sweep(tmp_path)
    (root / "trials.parquet").write_bytes(b"")   # `analyze --confirm` looks for it first
    (root / file).write_text(text)
    assert main(["resume", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"tunesmith: error: resume = '{root}': {says}"), err
    assert main(["analyze", str(root), "--confirm", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--confirm = '{root}': {says}" in err, err


def test_a_renamed_sweep_folder_is_refused_in_one_line(tmp_path, capsys):
    root = _sweep(tmp_path)
    moved = root.parent / "other-name"
    root.rename(moved)
    assert main(["resume", str(moved)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds sweep 'sw'" in err


def test_a_moved_sweep_is_written_where_it_is_now(tmp_path):
    """The ledger's callback, pickled by Tune with the old results root, follows the folder that
    `resume` was given: it reads the rows there and writes there, never at the old place."""
    import pickle
    import pyarrow.dataset as pds
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator.callback import LedgerCallback
    old, new = tmp_path / "old", tmp_path / "new"
    cb = LedgerCallback(Storage(str(old)), "sw", ["lr"], {"lr": []}, epochs=3, metric="val_acc", mode="max")
    cb.start("a", {"lr": 0.1})
    cb.record("a", {"training_iteration": 1, "val_acc": 0.5, "val_loss": 0.9})
    cb.flush()
    state = pickle.dumps(cb)          # what Tune keeps in tuner.pkl
    old.rename(new)                   # the user moves the results folder
    restored = pickle.loads(state)
    restored.relocate(Storage(str(new)))
    restored.set_state({})            # Tune's restore: the ledger is read back from the files
    assert restored.trials["a"].epochs == 1
    restored.record("a", {"training_iteration": 2, "val_acc": 0.6, "val_loss": 0.8})
    restored.close()
    assert not old.exists()
    rows = pds.dataset(str(new / "sw" / "epochs"), format="parquet").to_table().to_pylist()
    assert sorted(r["epoch"] for r in rows) == [1, 2]
    assert (new / "sw" / "tensorboard" / "a").is_dir()
