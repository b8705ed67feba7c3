"""bench/gpu_check.py cannot rot: --smoke runs every case on the CPU in tiny sizes, as the GPU
machine will run them at full size, and its table and JSON carry every case's figures."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_case(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path,
                         env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["case"]: r for r in result["rows"]}
    assert not [r for r in result["rows"] if "error" in r]
    through = [r for c, r in rows.items() if c.startswith("throughput ") and "bare_img_s" in r]
    assert len(through) == 2 and all(r["bare_img_s"] > 0 and r["trainer_img_s"] > 0 and r["per_step_sync_img_s"] > 0
                                     for r in through)
    assert any(c.startswith("batch finder") and r["per_gpu_batch_size"] >= 8 for c, r in rows.items())
    prec = next(r for c, r in rows.items() if c.startswith("bf16 vs fp32"))
    assert 0 <= prec["bf16_val_acc"] <= 1 and 0 <= prec["fp32_val_acc"] <= 1
    share = [r for c, r in rows.items() if "trial(s)" in c]
    assert [r["trials"] for r in share] == [1, 4] and all(r["total_img_s"] > 0 for r in share)
    smith = next(r for c, r in rows.items() if c.startswith("smith on"))
    assert smith["first_epoch_s"] > 0 and smith["best_val_acc"] > 0.5
    assert "throughput small_cnn" in run.stdout and "smith on digits" in run.stdout   # the printed table
