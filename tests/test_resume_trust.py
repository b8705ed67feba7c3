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
