"""bench/gpu_check.py cannot rot: --smoke runs every case on the CPU in tiny sizes, as the GPU
machine will run them at full size, and its table and JSON carry every case's figures."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.ray
def test_gpu_check_smoke_runs_every_case(ray_session, tmp_path, capsys):
    """In this process, on the suite's Ray instance, as `python bench/gpu_check.py --smoke` runs."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    out = tmp_path / "check.json"
    code = gpu_check.main(["--smoke", "--out", str(out)])
    run = capsys.readouterr()
    assert code == 0, run.out[-3000:] + run.err[-3000:]
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
    assert [r["trials"] for r in share] == [1, 2] and all(r["total_img_s"] > 0 for r in share)
    smith = next(r for c, r in rows.items() if c.startswith("smith on"))
    assert smith["first_epoch_s"] > 0 and smith["best_val_acc"] > 0.5
    assert "throughput small_cnn" in run.out and "smith on digits" in run.out   # the printed table
