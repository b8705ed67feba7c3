"""The Tune schedulers, and what Tune keeps of an ended trial, driven by hand: no Ray instance."""
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


def test_a_trial_at_the_floor_is_pruned_at_a_rung_even_first_there():
    """ASHA passes the first trial to reach a rung whatever it scored; asha.floor (smith: chance)
    prunes one no better than it there, and only at a rung, and never at its last epoch."""
    asha = RecordingASHA(time_attr="training_iteration", metric="val_acc", mode="max", max_t=9,
                         grace_period=1, reduction_factor=3, rungs=[3], floor=0.104)
    dead, good, late = (SimpleNamespace(trial_id=t) for t in ("dead", "good", "late"))
    for t in (dead, good, late):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, dead, {"training_iteration": 2, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, dead, {"training_iteration": 3, "val_acc": 0.104}) == TrialScheduler.STOP
    assert asha.pruned["dead"] == "pruned by ASHA at epoch 3 (val_acc=0.104, no better than asha.floor 0.104)"
    assert asha.on_trial_result(None, good, {"training_iteration": 3, "val_acc": 0.2}) == TrialScheduler.CONTINUE
    assert "good" not in asha.pruned
    asha.on_trial_result(None, late, {"training_iteration": 9, "val_acc": 0.1, "done": True})
    assert "late" not in asha.pruned   # its end (Ray's ASHA stops it there), not pruned
    # a loss, where lower is better: at or above the floor is no better
    loss = RecordingASHA(time_attr="training_iteration", metric="val_loss", mode="min", max_t=9,
                         grace_period=1, reduction_factor=3, rungs=[3], floor=2.3)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    loss.on_trial_add(None, a)
    loss.on_trial_add(None, b)
    assert loss.on_trial_result(None, a, {"training_iteration": 3, "val_loss": 2.31}) == TrialScheduler.STOP
    assert loss.on_trial_result(None, b, {"training_iteration": 3, "val_loss": 1.0}) == TrialScheduler.CONTINUE
    # without a floor, the first at the rung goes on, as in Ray's ASHA
    plain, (first, *_) = _asha()
    assert plain.on_trial_result(None, first, {"training_iteration": 3, "val_acc": 0.01}) == TrialScheduler.CONTINUE


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
            + ("from tunesmith.orchestrator.tune_parts import light_usage_tagging; light_usage_tagging(); " if light else "")
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


def test_the_stopper_tunes_controller_restores_shares_the_resumed_ones_state():
    """`tunesmith resume` takes its stopper from tuner.pkl (pickled at the sweep's start), while
    Tune's controller restores its own from its latest snapshot: the resume's hold-back, Ctrl-C
    and keeper never reached the stopper Tune asked, and the budget read was the whole one. Now
    one state: the snapshot's time left, and what the resume set on its own."""
    import pickle
    import time
    from tunesmith.orchestrator.stopper import SweepStopper
    at_start = pickle.dumps(SweepStopper(time.time() + 60))   # tuner.pkl
    at_snapshot = pickle.dumps(SweepStopper(time.time() + 20))  # the controller's runner_data
    mine = pickle.loads(at_start)
    assert mine.deadline - time.time() == pytest.approx(60, abs=1)
    mine.hold_back = lambda: 5.0
    SweepStopper.resumed = mine
    try:
        tunes = pickle.loads(at_snapshot)
    finally:
        SweepStopper.resumed = None
    assert mine.deadline - time.time() == pytest.approx(20, abs=1) and tunes.deadline == mine.deadline
    assert tunes.hold_back() == 5.0 and not tunes.stop_all()
    mine.event.set()   # Ctrl-C, on the resume's own
    assert tunes.stop_all()
    assert pickle.loads(at_snapshot) is not mine and pickle.loads(at_snapshot).hold_back is None   # no resume: its own

@pytest.mark.parametrize("asha", [False, True])
def test_the_next_trial_comes_from_the_live_ones_in_the_order_tune_added_them(asha):
    """Tune asks at every step of its controller; walking the whole sweep's trials made the cost
    per trial grow with the sweep. The controller here offers only the live trials: a scheduler
    that asked for every trial would fail."""
    from tunesmith.orchestrator.asha import LiveQueue
    sched = _asha()[0] if asha else LiveQueue()
    class Trial(SimpleNamespace):
        __hash__ = object.__hash__   # Tune keeps its live trials in a set

    trials = [Trial(trial_id=f"q{i}", status="PENDING", init_local_path=lambda: None) for i in range(5)]
    live = set()
    stopped = []

    def stop_trial(trial):
        stopped.append(trial)
        trial.status = "TERMINATED"

    controller = SimpleNamespace(get_live_trials=lambda: set(live), stop_trial=stop_trial)
    for t in trials:
        sched.on_trial_add(controller, t)
        live.add(t)
    assert sched.choose_trial_to_run(controller) is trials[0]
    trials[0].status = trials[1].status = "RUNNING"
    assert sched.choose_trial_to_run(controller) is trials[2]
    # a trial that failed and is requeued goes last, as Tune moves it to the end of its list
    sched.on_trial_add(controller, trials[2])
    assert sched.choose_trial_to_run(controller) is trials[3]
    for t in trials[2:]:
        t.status = "PAUSED"
    assert sched.choose_trial_to_run(controller) is trials[3]   # no pending one: the first paused
    sched.on_trial_complete(controller, trials[0], {"training_iteration": 9, "val_acc": 0.5})
    live.discard(trials[0])
    assert trials[0].trial_id not in sched._order   # the queue holds only what may still run
    for t in trials:
        t.status = "TERMINATED"
    assert sched.choose_trial_to_run(controller) is None
    # on resume, a waiting trial the files record as ended is stopped, not started
    sched.restore_ended({"q4": "completed"})
    trials[4].status = "PENDING"
    assert sched.choose_trial_to_run(controller) is None and stopped == [trials[4]]


def test_an_ended_trial_keeps_only_the_sweeps_metric_in_tunes_history():
    from ray.tune.experiment import Trial
    from tunesmith.orchestrator.pilot import DriverTrial
    from tunesmith.orchestrator.tune_parts import forget_metric_history
    trial = Trial("trivial", stub=True, config={"lr": 0.1})
    for epoch in (1, 2):
        trial.update_last_result({"val_acc": 0.5 * epoch, "val_loss": 1.0 / epoch, "train_loss": 1.0,
                                  "throughput": 900.0, "training_iteration": epoch})
    before = len(trial.run_metadata.get_json_state())
    forget_metric_history(trial, "val_acc")
    assert set(trial.metric_analysis) == set(trial.metric_n_steps) == {"val_acc"}
    assert trial.metric_analysis["val_acc"]["max"] == 1.0   # Tune's best-trial lookup still reads it
    assert len(trial.run_metadata.get_json_state()) < before / 2   # the copy Tune snapshots shrinks too
    assert trial.last_result["val_loss"] == 0.5
    forget_metric_history(DriverTrial({"lr": 0.1}), "val_acc")   # smith's pilot has no Tune history


def test_a_rungs_cutoff_is_numpys_percentile_kept_as_values_arrive():
    """Ray's bracket took np.nanpercentile over the whole rung at every arrival; the rung keeps
    its values in order instead, and gives the same cutoff."""
    import pickle
    import random
    import numpy as np
    from tunesmith.orchestrator.asha import Rung, rung_cutoff
    rng = random.Random(0)
    rung, plain = Rung(), {}
    assert rung_cutoff(2 / 3, rung) is None
    for i in range(300):
        value = math.nan if i % 37 == 0 else rng.choice([rng.random(), round(rng.random(), 1)])
        key = f"t{rng.randrange(250)}"   # some trials arrive again: the value is replaced
        rung[key] = plain[key] = value
        for share in (2 / 3, 1 / 2, 3 / 4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # numpy's, while only NaN arrived
                want = np.nanpercentile(list(plain.values()), 100 * share)
            assert rung_cutoff(share, rung) == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert len(rung.ordered) == sum(not math.isnan(v) for v in plain.values())
    again = pickle.loads(pickle.dumps(rung))
    assert type(again) is Rung and again.keys() == rung.keys() and again.ordered == rung.ordered
    assert math.isnan(rung_cutoff(0.5, Rung({"a": math.nan})))   # nothing to rank: Ray's compare says go on
    assert rung_cutoff(0.5, {"a": 0.2, "b": 0.4}) == pytest.approx(0.3)   # a rung pickled before Rung existed


def test_asha_judges_at_every_rung_from_the_kept_order():
    asha = RecordingASHA(time_attr="training_iteration", metric="val_acc", mode="max", max_t=9,
                         grace_period=1, reduction_factor=3)   # Ray's own milestones
    (bracket,) = asha._brackets
    assert [m for m, _ in bracket._rungs] == [9, 3, 1]
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(6)]
    for t in trials:
        asha.on_trial_add(None, t)
    acts = [asha.on_trial_result(None, t, {"training_iteration": 1, "val_acc": v})
            for t, v in zip(trials, [0.5, 0.6, 0.1, 0.9, 0.2, 0.95])]
    # the cutoff is the rung's 67th percentile of those before: the 3rd (0.1) and 5th (0.2) stop
    assert acts == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP,
                    TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE]
