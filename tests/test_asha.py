"""ASHA's bookkeeping, driven by hand: no Ray instance."""
import math
import warnings
from types import SimpleNamespace

import pytest

from ray.tune.schedulers import TrialScheduler

from tunesmith.orchestrator.asha import RecordingASHA


def _asha():
    asha = RecordingASHA(time_attr="training_iteration", metric="val_acc", mode="max", max_t=9,
                         grace_period=1, reduction_factor=3, rungs=[3])
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    return asha, trials


def _rung(asha) -> dict:
    (bracket,) = asha._brackets
    return dict(bracket._rungs[-1][1])


def test_a_diverged_trial_joins_no_rung_and_the_first_at_a_rung_makes_no_warning():
    asha, (bad, a, b, c) = _asha()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy's "All-NaN slice encountered" fails the test
        nan = {"training_iteration": 3, "val_acc": math.nan, "diverged": True}
        assert asha.on_trial_result(None, bad, nan) == TrialScheduler.CONTINUE
        asha.on_trial_complete(None, bad, nan)
        assert _rung(asha) == {}
        assert "t0" not in asha.pruned
        # the rung still judges the trials that have a value: the worst of three is pruned
        assert asha.on_trial_result(None, a, {"training_iteration": 3, "val_acc": 0.9}) == TrialScheduler.CONTINUE
        assert asha.on_trial_result(None, b, {"training_iteration": 3, "val_acc": 0.8}) == TrialScheduler.STOP
        assert asha.on_trial_result(None, c, {"training_iteration": 3, "val_acc": 0.95}) == TrialScheduler.CONTINUE
    assert set(_rung(asha)) == {"t1", "t2", "t3"}
    assert asha.pruned["t2"].startswith("pruned by ASHA at epoch 3 (val_acc=0.8")


def test_sweep_stopper_stops_at_its_deadline_and_a_restored_one_gets_what_was_left():
    import pickle
    import time
    from tunesmith.orchestrator.stopper import SweepStopper
    assert not SweepStopper().stop_all() and not SweepStopper(time.time() + 60).stop_all()
    late = SweepStopper(time.time() - 0.01)
    assert late.stop_all() and late.timed_out.is_set() and not late.event.is_set()
    # tuner.pkl: `tunesmith resume` gets the budget that was left when Tune pickled the stopper,
    # counted from the restore, not a deadline that passed while the driver was dead
    restored = pickle.loads(pickle.dumps(SweepStopper(time.time() + 30)))
    assert 29 < restored.deadline - time.time() <= 30 and not restored.stop_all()
    assert pickle.loads(pickle.dumps(SweepStopper())).deadline is None


@pytest.mark.parametrize("light", [False, True])
def test_tunes_callback_telemetry_imports_no_tracking_library(light):
    """Tune's fit tags its callbacks for Ray's usage statistics; Ray's own tagging imports mlflow
    (1.4 s, installed with tunesmith[mlflow]) to compare classes. tunesmith's records the tag
    without it. Without the replacement, the same check sees mlflow imported: the test can fail."""
    import subprocess
    import sys
    code = ("import sys; from ray.tune import Callback; from ray.air._internal import usage; "
            "from tunesmith.orchestrator.callback import LedgerCallback; "
            + ("from tunesmith.orchestrator.sweep import light_usage_tagging; light_usage_tagging(); " if light else "")
            + "usage.tag_callbacks([Callback(), LedgerCallback.__new__(LedgerCallback)]); "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(not light)], out.stdout


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_sigterm_stops_the_sweep_as_the_first_ctrl_c_does(sig, capsys):
    """Kubernetes and `ray job stop` send SIGTERM: the stopper takes it as Ctrl-C (every trial
    stopped, results kept), and a second of either aborts; its handlers go when it is done."""
    import os
    import signal
    from tunesmith.orchestrator.stopper import SweepStopper
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopper = SweepStopper()
    stopper.install()
    try:
        os.kill(os.getpid(), getattr(signal, sig))
        assert stopper.event.is_set() and stopper.stop_all()
        assert ("terminated" if sig == "SIGTERM" else "interrupt") in capsys.readouterr().out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stopper.uninstall()
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
