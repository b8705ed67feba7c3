"""Sweeps end to end through a real Ray instance (one per test session)."""
import json
import os
import re
import time

import pyarrow.parquet as pq
import pytest

from tunesmith.orchestrator.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """
name: tiny
seed: 3
dataset: {name: digits}
model: {name: small_cnn, width: 8}
trainer: {epochs: 3, lr: 0.1, per_gpu_batch_size: 64}
search:
  algorithm: random
  num_samples: 4
  points_to_evaluate:
    - {lr: 50.0, schedule: constant}      # diverges at once
  space:
    lr: {loguniform: [0.01, 50.0]}
    schedule: {choice: [one_cycle, constant]}
asha: {enabled: false}
confirm: {top: 2, seeds: 1}            # one new seed, beside the search's own runs (auto may take two)
results_dir: RESULTS
"""




def _tb_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _tb_walltimes(path, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.wall_time for e in acc.Scalars(tag)}


def test_cli_sweep_writes_parquet_and_tensorboard(ray_session, tmp_path, capsys, spec_file):
    assert main(["run", spec_file(SPEC)]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "results:" in out
    root = tmp_path / "results" / "tiny"
    table = pq.read_table(root / "trials.parquet").to_pandas().set_index("trial_id")
    trials = table[table.phase == "search"]
    assert len(trials) == 4
    assert set(trials.status) <= {"completed", "diverged"}
    diverged = trials[trials.hp_lr == 50.0]
    assert list(diverged.status) == ["diverged"] and diverged.epochs.iloc[0] == 1
    done = trials[trials.status == "completed"]
    assert (done.epochs == 3).all() and len(done) >= 1

    # the confirmation: the two best settings again with the same new seed, full schedule, beside
    # their own whole search runs (the sweep's seed, 3); only the new final models read the test
    # split, and the winner's checkpoint is the one kept
    confirmed = table[table.phase == "confirm"]
    assert len(confirmed) == 2 and set(confirmed.confirms) <= set(done.index) and confirmed.confirms.nunique() == 2
    assert sorted(confirmed.seed) == [1003, 1003] and (confirmed.status == "completed").all()
    for of, rows in confirmed.groupby("confirms"):
        assert (rows.hp_lr == trials.loc[of, "hp_lr"]).all() and (rows.epochs == 3).all()
    assert confirmed.test_acc.notna().all() and trials.test_acc.isna().all() and trials.test_loss.isna().all()
    assert (confirmed.test_acc > 0.5).all()
    kept = table[table.checkpoint.notna()]
    assert len(kept) == 1 and kept.index[0] in confirmed.index and os.path.isdir(kept.checkpoint.iloc[0])
    last = out[out.index("confirmation:"):]
    assert "verdict: " in last and "test: test_acc" in last and f"kept: {kept.index[0]}" in last
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["confirm"]["seeds"] == [3, 1003] and manifest["confirm"]["search_seeds"] == [3]
    assert len(manifest["confirm"]["finalists"]) == 2 and manifest["confirm"]["paired_seeds"] == 2
    winner = manifest["confirm"]["finalists"][0]
    rows = confirmed[confirmed.confirms == winner["trial"]]
    own = trials.loc[winner["trial"], "last_val_acc"]
    assert winner["mean"] == pytest.approx((rows.last_val_acc.sum() + own) / (len(rows) + 1), abs=1e-6)
    assert winner["by_seed"]["3"] == pytest.approx(own, abs=1e-6)
    assert winner["test"] == pytest.approx(rows.test_acc.mean(), abs=1e-6)
    trials = table

    epochs = pq.read_table(root / "epochs").to_pandas()
    assert len(epochs) == trials.epochs.sum()
    # every reported metric of every trial is in TensorBoard too, with the same value
    for trial_id, rows in epochs.groupby("trial_id"):
        scalars = _tb_scalars(str(root / "tensorboard" / trial_id))
        for _, row in rows.iterrows():
            for m in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "samples_per_second"):
                if row[m] == row[m]:   # null in Parquet (diverged) is absent from TB
                    assert scalars[m][row.epoch] == pytest.approx(row[m], rel=1e-5), (trial_id, m)
        if trials.loc[trial_id, "phase"] == "confirm":   # the test figure, once, at the final epoch
            assert scalars["test_acc"] == {3: pytest.approx(trials.loc[trial_id, "test_acc"], rel=1e-5)}
        else:
            assert "test_acc" not in scalars
        # each epoch's time is when the trial reported it, to the ms (Tune's own stamp is whole
        # seconds, which three short epochs share), the same in Parquet and on TensorBoard's axes
        at = [t.timestamp() for t in rows.sort_values("epoch").timestamp]
        assert all(b > a for a, b in zip(at, at[1:])), (trial_id, at)
        walls = _tb_walltimes(str(root / "tensorboard" / trial_id), "lr")
        assert [walls[e] for e in sorted(walls)] == pytest.approx(at, abs=2e-3), (trial_id, walls, at)
    assert manifest["status"] == "finished" and manifest["seed"] == 3
    assert manifest["versions"]["ray"].startswith("2.60")
    assert (root / "spec.yaml").exists()

    # a seed more for each finalist, after the fact: seeds the sweep has not used, into its own
    # folder and files; the verdict and the kept checkpoint are read over all its confirmation runs
    capsys.readouterr()
    import logging
    warned = []

    class Keep(logging.Handler):
        def emit(self, record):
            warned.append(record.getMessage().splitlines()[0])
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):   # as in a new process,
        logging.getLogger(name).setLevel(logging.NOTSET)                      # which `analyze` starts
    keep = Keep(logging.WARNING)
    logging.getLogger("ray.tune").addHandler(keep)
    try:
        assert main(["analyze", str(root), "--confirm", "2", "--seeds", "1"]) == 0
    finally:
        logging.getLogger("ray.tune").removeHandler(keep)
    # Tune said nothing: not a warning per trial of the files our writers replace, nor of the cap
    assert not warned, warned
    out = capsys.readouterr().out
    again = pq.read_table(root / "trials.parquet").to_pandas().set_index("trial_id")
    more = again[(again.phase == "confirm") & ~again.index.isin(confirmed.index)]
    assert list(more.seed) == [1004, 1004] and set(more.confirms) == set(confirmed.confirms)
    assert more.test_acc.notna().all() and (root / "_confirm-2").is_dir()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["confirm"]["seeds"] == [3, 1003, 1004] and manifest["confirmed_at"]
    assert "over seeds 3 (the search's own runs) and 1003, 1004 (new)" in out and "verdict: " in out
    assert again.checkpoint.notna().sum() == 1 and again.loc[again.checkpoint.notna(), "phase"].iloc[0] == "confirm"


def test_tpe_with_asha_prunes_and_says_why(ray_session, tmp_path, spec_file):
    """LRs from 1e-4 (barely learns in 4 epochs) to 0.5: ASHA has laggards to prune."""
    text = """
name: tpe
seed: 3
dataset: {name: digits}
model: {name: small_cnn, width: 8}
trainer: {epochs: 4, lr: 0.1, per_gpu_batch_size: 128}
search:
  algorithm: tpe
  num_samples: 10
  n_initial_points: 5
  space:
    lr: {loguniform: [1.0e-4, 0.5]}
asha: {grace_period: 1, reduction_factor: 2}
confirm: {top: 0}
results_dir: RESULTS
"""
    assert main(["run", spec_file(text)]) == 0
    trials = pq.read_table(tmp_path / "results" / "tpe" / "trials.parquet").to_pandas()
    assert len(trials) == 10
    pruned = trials[trials.status == "pruned"]
    assert len(pruned) >= 1
    assert pruned.stop_reason.str.contains("pruned by ASHA at epoch").all()
    assert (pruned.epochs < 4).all()
    assert set(trials.status) <= {"completed", "pruned"}


def test_grid_search_walks_every_combination_one_at_a_time(ray_session, tmp_path, spec_file):
    text = """
name: grid
dataset: {name: digits}
model: {width: 8}
trainer: {epochs: 1, per_gpu_batch_size: 256}
search:
  algorithm: grid
  max_concurrent: 1
  space:
    momentum: {choice: [0.9, 0.95, 0.99]}
    weight_decay: {grid: [1.0e-4, 0.0]}
asha: {enabled: false}
confirm: {top: 0}
results_dir: RESULTS
"""
    assert main(["run", spec_file(text)]) == 0
    trials = pq.read_table(tmp_path / "results" / "grid" / "trials.parquet").to_pandas()
    combos = sorted(zip(trials.hp_momentum, trials.hp_weight_decay))
    assert combos == sorted((m, w) for m in (0.9, 0.95, 0.99) for w in (1e-4, 0.0))
    spans = trials.sort_values("started_at")[["started_at", "ended_at"]].to_numpy()
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))   # max_concurrent: 1


def test_errored_trial_is_recorded(ray_session, tmp_path):
    """Data missing on the node that runs the trial: the trial errors and says why. (Without
    retries: Tune would run each trial twice more, to the same error, for 10 s here.)"""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.sweep import run_sweep
    missing = str(tmp_path / "no-such-folder")
    spec = spec_mod.from_dict({"name": "err", "results_dir": str(tmp_path / "r"), "trainer": {"epochs": 2},
                               "confirm": {"top": 0},
                               "checkpoints": {"max_failures": 0},
                               "dataset": {"name": "imagefolder", "data_dir": missing},
                               "search": {"num_samples": 2, "space": {"lr": {"uniform": [0.1, 0.2]}}}})
    outcome = run_sweep(spec, ray_session, progress=False)
    trials = pq.read_table(tmp_path / "r" / "err" / "trials.parquet").to_pandas()
    assert set(trials.status) == {"errored"}
    assert trials.stop_reason.str.contains(f"dataset.data_dir = '{missing}': no such directory").all()
    assert not outcome.interrupted


@pytest.mark.serial
def test_time_budget_counts_from_the_commands_start(ray_session, tmp_path):
    """time_budget_s is the command's: what Ray's start-up took before the sweep is not given
    again to Tune (the budget of `run` used to start at the sweep, 8 s later than at smith's), nor
    is Tune's own set-up (its time_budget_s counts from its first check, 3 s into the sweep)."""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.sweep import budget_problem, run_sweep
    raw = {"name": "budget", "results_dir": str(tmp_path / "r"), "time_budget_s": 16, "confirm": {"top": 0},
           "model": {"name": "small_cnn", "width": 8}, "trainer": {"epochs": 1000}, "asha": {"enabled": False},
           "search": {"num_samples": 100, "space": {"lr": {"loguniform": [0.01, 0.1]}}}}
    outcome = run_sweep(spec_mod.from_dict(raw), ray_session, progress=False, started=time.time() - 10)   # 6 s left
    # counted from the sweep's start it would run 16 s; the rest is the wind-down (trials stopped,
    # results written), which took up to 2.1 s on a loaded 2-core machine (8.1 s failed a bound of 8)
    assert outcome.wall_seconds < 11, f"the sweep ran {outcome.wall_seconds:.1f} s of a budget with 6 s left"
    assert outcome.timed_out
    trials = pq.read_table(tmp_path / "r" / "budget" / "trials.parquet").to_pandas()
    # 1000 epochs: no trial ends its schedule in 6 s (on a quiet 2-core machine two trials of 50
    # epochs did, and the check read a finished schedule as the budget's failure)
    assert len(trials) >= 1 and (trials.epochs < 1000).all()
    # each trial either annealed in the epochs that fitted (trainables/trainer.py) or was cut off
    assert trials.stop_reason.str.match(r"(time budget reached after \d+|annealed in \d+) of 1000 epochs").all(), \
        trials.stop_reason

    # a budget spent before the sweep began: no trial, and the outcome says why
    late = run_sweep(spec_mod.from_dict({**raw, "name": "late"}), ray_session, progress=False,
                     started=time.time() - 20)
    assert not late.ledger.trials and late.timed_out
    assert re.match(r"time_budget_s = 16: it ran out before any trial finished an epoch \(2\d\.\ds of it went before the "
                    r"sweep began", budget_problem(late)), budget_problem(late)


def test_a_budget_that_affords_no_confirmation_gives_the_search_all_of_it_and_tests_the_kept_model(
        ray_session, tmp_path):
    """Four fifths of four 30-epoch runs do not fit in the confirmation's share of a 14 s budget
    at the search's pace: the search keeps the whole budget (a full-length hold-back used to
    leave it none), and the kept model alone reads the test split, once."""
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.confirm import summary
    from tunesmith.orchestrator.sweep import run_sweep
    raw = {"name": "unconfirmed", "results_dir": str(tmp_path / "r"), "time_budget_s": 14,
           "confirm": {"top": 2, "seeds": 2}, "model": {"name": "small_cnn", "width": 8},
           "trainer": {"epochs": 30, "per_gpu_batch_size": 64}, "asha": {"enabled": False},
           "search": {"num_samples": 100, "space": {"lr": {"loguniform": [0.03, 0.3]}}}}
    outcome = run_sweep(spec_mod.from_dict(raw), ray_session, progress=False)
    assert outcome.confirmed is None and "the search kept the whole budget" in outcome.unconfirmed, \
        outcome.unconfirmed
    trials = pq.read_table(tmp_path / "r" / "unconfirmed" / "trials.parquet").to_pandas()
    assert set(trials.phase) == {"search"}
    tested = trials[trials.test_acc.notna()]
    assert len(tested) == 1 and tested.checkpoint.iloc[0] and 0.5 < tested.test_acc.iloc[0] <= 1.0
    assert tested.trial_id.iloc[0] == outcome.ledger.ranked()[0].trial_id
    man = json.loads((tmp_path / "r" / "unconfirmed" / "manifest.json").read_text())
    assert man["kept_test"]["trial"] == tested.trial_id.iloc[0] and "confirm" not in man
    assert f"test: test_acc {tested.test_acc.iloc[0]:.4f} for the kept model" in summary(outcome)
    # read in the driver (its host is the only node, on CPUs); as a Ray task, on a cluster or a
    # GPU, it reads the same figures
    from types import SimpleNamespace
    from tunesmith.orchestrator.kept_test import kept_on_test
    rec = outcome.ledger.ranked()[0]
    here = dict(rec.test)
    rec.test.clear()
    again = SimpleNamespace(ledger=outcome.ledger, retention=SimpleNamespace(filesystem=None), mark_changed=lambda: None)
    assert kept_on_test(spec_mod.from_dict(raw), again, here=False) == rec.trial_id
    assert rec.test == pytest.approx(here) and here["test_acc"] == pytest.approx(tested.test_acc.iloc[0])


def _reports_only_high_lrs(config):
    from ray import tune
    if config["lr"] < 0.1:
        return   # as a trial does when the time budget ends before its first epoch
    tune.report({"epoch": 1, "val_acc": config["lr"], "val_loss": 1.0})


def test_a_trial_that_ends_without_a_report_does_not_end_the_sweep(ray_session, tmp_path, capsys):
    """Tune failed the whole sweep when a trial returned without reporting (with two or more
    searched dimensions its check counts the config as reported keys), and Ray's TPE searcher
    raised on it: a budget ending just after a trial started took every result down with it."""
    import sys
    import ray.cloudpickle
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.sweep import run_sweep
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import tests/
    spec = spec_mod.from_dict({
        "name": "silent", "results_dir": str(tmp_path / "r"), "trainer": {"epochs": 1}, "asha": {"enabled": False},
        "search": {"algorithm": "tpe", "num_samples": 4, "n_initial_points": 2,
                   "points_to_evaluate": [{"lr": 0.02, "momentum": 0.9}, {"lr": 0.5, "momentum": 0.9}],
                   "space": {"lr": {"loguniform": [0.01, 1.0]}, "momentum": {"uniform": [0.8, 0.99]}}}})
    outcome = run_sweep(spec, ray_session, trainable=_reports_only_high_lrs, progress=False)
    trials = pq.read_table(tmp_path / "r" / "silent" / "trials.parquet").to_pandas()
    assert len(trials) == 4 and not outcome.interrupted
    silent = trials[trials.epochs == 0]
    assert len(silent) >= 1 and (silent.status == "stopped").all(), trials[["status", "stop_reason", "epochs"]]
    assert (trials[trials.epochs == 1].status == "completed").all()
    out = capsys.readouterr()
    assert "Last result" not in out.out + out.err, "Tune's own trial printer is off"


def test_trial_larger_than_cluster_is_bad_input(ray_session, tmp_path, capsys, spec_file):
    code = main(["run", spec_file(SPEC), "--set", "resources.cpus=64"])
    assert code == 2
    err = capsys.readouterr().err
    assert "resources.cpus = 64" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "results" / "tiny")


def test_data_parallel_ranks_match_one_process_with_the_same_global_batch(ray_session, tmp_path):
    """resources.workers: 2 trains with DDP through Ray Train (gloo on CPU): two ranks of 32
    give the metrics of one process at 64, within what per-rank BatchNorm statistics allow."""
    import pandas as pd
    import pyarrow.dataset as pds
    import yaml
    from tunesmith.orchestrator import spec as spec_mod
    from tunesmith.orchestrator.cli import main as cli
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    raw = {"name": "ddp", "dataset": {"name": "digits"}, "model": {"width": 8},
           "trainer": {"epochs": 3, "per_gpu_batch_size": 32}, "asha": {"enabled": False},
           "resources": {"cpus": 0.5, "workers": 2}, "results_dir": str(tmp_path / "results"),
           "confirm": {"top": 1, "seeds": 1}}
    spec = tmp_path / "ddp.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert cli(["run", str(spec)]) == 0
    trials = pq.read_table(tmp_path / "results" / "ddp" / "trials.parquet").to_pandas().set_index("phase")
    ddp = pds.dataset(str(tmp_path / "results" / "ddp" / "epochs")).to_table().to_pandas().sort_values("epoch")
    ddp = ddp[ddp.trial_id == trials.loc["search", "trial_id"]]
    # the reference: the same trial in one process (here) at the global batch, 64
    one_process = {**raw, "trainer": {**raw["trainer"], "per_gpu_batch_size": 64}, "resources": {"cpus": 1}}
    cfg = TrainConfig.from_dict(spec_mod.from_dict(one_process).trial_config())
    one = pd.DataFrame([m for m in Trainer(cfg, cpu_threads=1).run()])
    assert list(ddp.epoch) == [1, 2, 3] and set(ddp.device) == {"cpu x2 (DDP)"}
    at = [t.timestamp() for t in ddp.timestamp]   # rank 0's report time, through Ray Train, to the ms
    assert all(b > a for a, b in zip(at, at[1:])) and any(t % 1 for t in at), at
    assert list(trials.global_batch) == [64, 64]
    # its confirmation trains data-parallel too, and its final model reads the test split once
    assert trials.loc["confirm", "epochs"] == 3 and trials.loc["confirm", "test_acc"] > 0.8
    assert trials.loc["confirm", "seed"] == 1000 and pd.isna(trials.loc["search", "test_acc"])
    # Ray Train's checkpoints are housekept like Tune's: the confirmed winner's final one kept and
    # named, the search's gone
    assert pd.isna(trials.loc["search", "checkpoint"])
    kept = trials.loc["confirm", "checkpoint"]
    assert kept and os.path.exists(os.path.join(kept, "trainer.pt")), kept
    run_dir = os.path.dirname(kept)
    assert [n for n in os.listdir(run_dir) if n.startswith("checkpoint_") and os.path.isdir(os.path.join(run_dir, n))] \
        == [os.path.basename(kept)]
    for a, b in zip(ddp.itertuples(), one.itertuples()):
        assert abs(a.train_loss - b.train_loss) < 0.15 * b.train_loss + 0.02, (a.train_loss, b.train_loss)
        # per-rank BatchNorm statistics move the first epochs' accuracy most (17 steps an epoch)
        assert abs(a.val_acc - b.val_acc) < (0.06 if a.epoch == 3 else 0.15), (a.val_acc, b.val_acc)
    assert ddp.val_acc.iloc[-1] > 0.9


def test_a_held_back_deadline_reaches_trials_in_other_processes(ray_session):
    """smith --final: the stopper holds back stage 3's share once stage 2's pace is known; the
    DeadlineKeeper actor carries the earlier deadline to the trials, read here from a Ray task
    (another process, as a trial is), and the stopper stops the sweep there."""
    import ray
    from tunesmith.orchestrator.stopper import SweepStopper
    from tunesmith.trainables.tune_trainable import _reader
    now = time.time()
    stopper = SweepStopper(now + 100)
    stopper.keep_for_trials()
    read = ray.remote(num_cpus=0)(lambda keeper: _reader(keeper)())
    assert ray.get(read.remote(stopper.keeper)) == pytest.approx(now + 100)
    stopper.hold_back = lambda: 30.0
    assert not stopper.stop_all()
    assert ray.get(read.remote(stopper.keeper)) == pytest.approx(now + 70)
    stopper.hold_back = lambda: 200.0   # nothing left after the hold-back: stop
    assert stopper.stop_all() and stopper.timed_out.is_set()
    assert ray.get(read.remote(stopper.keeper)) == pytest.approx(now - 100)
    keeper = stopper.keeper
    stopper.release()   # at the sweep's end
    assert stopper.keeper is None
    gone = time.time() + 10   # ray.kill is asynchronous: a call right after it may still be answered
    while _reader(keeper)() is not None and time.time() < gone:
        time.sleep(0.1)
    assert _reader(keeper)() is None   # a keeper that is gone: the trial keeps its last deadline



@pytest.mark.parametrize("streams", ["stream: true", "memory_budget: 1.0e-9"])
def test_relative_data_and_weights_are_read_from_where_the_command_runs(ray_session, tmp_path, monkeypatch,
                                                                         capsys, glyph_folder, streams):
    """`data_dir: glyphs` and `weights: start.pt`, relative to the command's folder: a trial runs
    in its own folder (Tune's working directory), and a streamed folder is read from disk there.
    Both still reach the trials, and spec.yaml names them absolute. The CLI here joins the
    session's Ray, as on a cluster: a folder the node finds over its budget (the second case)
    is shared by no task; each trial streams it, cut by train_per_class."""
    import torch
    from tunesmith.trainables.models import build_model
    from tunesmith.trainables.config import ModelConfig
    os.symlink(glyph_folder, tmp_path / "glyphs")
    torch.save(build_model(ModelConfig(width=8), (1, 32, 32), 10).state_dict(), tmp_path / "start.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel.yaml").write_text(
        "dataset: {name: imagefolder, data_dir: glyphs, train_per_class: 12, " + streams + "}\n"
        "model: {name: small_cnn, width: 8, weights: start.pt}\n"
        "trainer: {epochs: 1, per_gpu_batch_size: 32}\n"
        "search: {num_samples: 1}\nconfirm: {top: 0}\nresults_dir: out\n")
    assert main(["run", "rel.yaml"]) == 0
    assert "loaded 17 of 17 tensors" in capsys.readouterr().out
    trials = pq.read_table(tmp_path / "out" / "rel" / "trials.parquet").to_pandas()
    assert list(trials.status) == ["completed"], trials.stop_reason.tolist()
    saved = (tmp_path / "out" / "rel" / "spec.yaml").read_text()
    assert f"data_dir: {tmp_path / 'glyphs'}" in saved and f"weights: {tmp_path / 'start.pt'}" in saved
