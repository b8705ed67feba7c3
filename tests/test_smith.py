"""`tunesmith lr-find` and `tunesmith smith` through the command's main()."""
import json
import os

import pyarrow.parquet as pq
import pytest

from tunesmith.orchestrator.cli import main

SPEC = """
name: sm
dataset: {name: digits}
model: {width: 16}
trainer: {epochs: 6, per_gpu_batch_size: 64, lr: 0.1}
results_dir: RESULTS
"""




def test_lr_find_writes_curve_plot_decision_and_tensorboard(tmp_path, capsys, spec_file):
    assert main(["lr-find", spec_file(SPEC), "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "band:" in out and "chosen max LR" in out and "rule: steepest" in out and "lr-find's default rule" in out
    root = tmp_path / "results" / "sm"
    curve = pq.read_table(root / "lr_find" / "curve.parquet").to_pandas()
    assert 20 < len(curve) <= 60 and curve.lr.is_monotonic_increasing
    assert (root / "lr_find" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    decision = json.loads((root / "lr_find" / "decision.json").read_text())
    assert decision["min_lr"] == pytest.approx(decision["max_lr"] / 10)
    assert decision["max_lr"] == decision["suggestions"][decision["pick"]]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(root / "tensorboard" / "lr_find"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("lr_find/loss")) == len(curve)
    assert acc.Tags()["images"] == ["lr_find/curve"]
    # the command it prints is one to paste: a folder with a space in it, quoted
    spaced = tmp_path / "my results"
    assert main(["lr-find", spec_file(SPEC), "--steps", "60", "--set", f"results_dir={spaced}"]) == 0
    import shlex
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tensorboard --logdir"))
    assert shlex.split(line) == ["tensorboard", "--logdir", str(spaced / "sm" / "tensorboard")], line


@pytest.mark.parametrize("argv,message", [
    (["--pick", "best"], "--pick = 'best'"),
    (["--start", "1", "--end", "0.1"], "--start = 1.0"),
    (["--steps", "3"], "--steps = 3"),
    (["--max-seconds", "0"], "--max-seconds = 0"),
])
def test_lr_find_bad_options(tmp_path, capsys, argv, message, spec_file):
    assert main(["lr-find", spec_file(SPEC), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [(["--short-epochs", "0"], "--short-epochs = 0"),
                                          (["--samples", "0"], "--samples = 0"),
                                          (["--short-epochs", "9"], "must not exceed trainer.epochs"),
                                          (["--range", "-1", "1"], "--range = '-1 1'"),
                                          (["--range", "0", "0"], "--range = '0 0'"),
                                          (["--pick", "best"], "--pick = 'best'"),
                                          (["--max-seconds", "-1"], "--max-seconds = -1")])
def test_smith_bad_options(tmp_path, capsys, argv, message, spec_file):
    assert main(["smith", spec_file(SPEC), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_smith_passes_lr_find_options_to_its_range_test(spec_file):
    """--max-seconds and --linear reach smith's range test (it ran exponentially, capped at 60 s,
    whatever they said); the cap stays within a fifth of time_budget_s."""
    from tunesmith.orchestrator import smith
    from tunesmith.orchestrator.cli import build_parser
    from tunesmith.orchestrator.spec import load
    args = build_parser().parse_args(["smith", "s.yaml", "--max-seconds", "7", "--linear", "--steps", "50"])
    assert smith.stage1_options(load(spec_file(SPEC)), args)[1:] == (1e-7, 10.0, 50, "linear", False, None, 7.0, 0.0)
    budgeted = load(spec_file(SPEC + "time_budget_s: 20\n", "b.yaml"))
    assert smith.stage1_options(budgeted, args)[-2] == pytest.approx(4.0)


@pytest.mark.parametrize("resources,batch,gpus", [("{cpus: 1}", 64, 0.0), ("{cpus: 1, workers: 2}", 128, 0.0),
                                                  ("{cpus: 1, gpus: 0.5}", 64, 0.5), ("{cpus: 1, gpus: 2}", 64, 2.0)])
def test_the_range_test_trains_as_one_trial_of_the_sweep(spec_file, resources, batch, gpus):
    """lr-find and smith measure what a trial trains: its device (a spec without GPUs trains on
    the CPU, whatever GPUs this host has) and its global batch (two CPU ranks of 64 step at 128;
    G GPUs split G x 64 over G devices, as the Trainer does given G)."""
    from tunesmith.orchestrator import lr_find
    from tunesmith.orchestrator.spec import load
    from tunesmith.trainables.trainer import Trainer
    cfg, held = lr_find.as_one_trial(load(spec_file(SPEC + f"resources: {resources}\n")))
    assert (cfg.trainer.per_gpu_batch_size, held) == (batch, gpus)
    if gpus == 0:
        trainer = Trainer(cfg, num_gpus=held)
        assert trainer.device.type == "cpu" and trainer.global_batch == batch


def test_smith_refuses_adam_before_doing_anything(tmp_path, capsys, spec_file):
    assert main(["smith", spec_file(SPEC), "--set", "trainer.optimizer=adam"]) == 2
    assert "trainer.optimizer = 'adam'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_smith_coupling_scales_each_trials_lr_by_its_momentum():
    """--coupling effective: stage 2 holds the LR at the range test's momentum (trainer.momentum)
    and each trial runs at it times (1-m)/(1-ref); the default draws the two apart."""
    import yaml
    from tunesmith.orchestrator.smith import stage2_spec
    from tunesmith.orchestrator.spec import from_dict
    from tunesmith.orchestrator.sweep import build_search
    spec = from_dict({**yaml.safe_load(SPEC.replace("RESULTS", "r")), "trainer": {"momentum": 0.8}})
    apart = stage2_spec(spec, (0.01, 1.0), 3, "weight_decay_shallow", 8)
    coupled = stage2_spec(spec, (0.01, 1.0), 3, "weight_decay_shallow", 8, coupled=True)
    assert apart.plan.lr_momentum_ref is None and coupled.plan.lr_momentum_ref == 0.8
    a, c = build_search(apart, 2), build_search(coupled, 2)
    for i in range(8):
        x, y = a.suggest(str(i)), c.suggest(str(i))
        assert 0.01 <= x["lr"] <= 1.0 and y["max_momentum"] == x["max_momentum"]
        assert y["lr"] == pytest.approx(x["lr"] * (1 - x["max_momentum"]) / 0.2)
    assert from_dict(coupled.to_dict()).plan.lr_momentum_ref == 0.8   # the sweep's spec.yaml keeps it


def test_smith_fine_tunes_with_the_fine_tune_dimensions(tmp_path):
    """A spec that starts from learnt weights: stage 2 also draws backbone_lr and freeze_epochs
    (unless the spec searches them itself), with Smith's smaller decays, and says why."""
    import yaml
    from types import SimpleNamespace
    from tunesmith.orchestrator.smith import policy
    from tunesmith.orchestrator.spec import from_dict
    raw = yaml.safe_load(SPEC.replace("RESULTS", "r"))
    spec = from_dict({**raw, "model": {"weights": str(tmp_path / "w.pt")}})
    opts = policy.Options("weight_decay_deep", 0.5, 1.5, 3, False)
    curve = SimpleNamespace(num_classes=10, majority=0.104, val_samples=360)
    decision = SimpleNamespace(informative=True, max_lr=0.1, curve=curve)
    plan = policy.plan_stage2(spec, decision, opts, 8, False, None)
    assert plan.spec.asha.floor == 0.104   # chance: a trial there at a rung is pruned, first or not
    space = {d.key: d.values for d in plan.spec.plan.space}
    assert space["model.backbone_lr"] == (1.0, 0.3, 0.1) and space["model.freeze_epochs"] == (0, 1)
    assert "fine-tuning the weights in" in plan.basis
    assert policy.weight_decay_preset(spec, "auto") == "weight_decay_deep"
    own = from_dict({**raw, "model": {"weights": "w.pt"},
                     "search": {**raw.get("search", {}), "space": {"model.backbone_lr": {"choice": [0.5]}}}})
    mine = policy.stage2_spec(own, (0.01, 1.0), 3, "weight_decay_deep", 8)
    assert {d.key: d.values for d in mine.plan.space}["model.backbone_lr"] == (0.5,)
    scratch = policy.plan_stage2(from_dict(raw), decision, opts, 8, False, None)
    assert "model.backbone_lr" not in {d.key for d in scratch.spec.plan.space}


def test_chance_is_guessing_the_largest_class_and_a_two_class_model_can_beat_it():
    """smith's chance check, from the range test's curve: a two-class model at 95% was "no better
    than chance" (the bar was 1/C + max(0.1, 1/C) = 1.0); on imbalanced data guessing the largest
    class is chance; a small validation part raises the bar to two standard errors."""
    from types import SimpleNamespace as NS
    from tunesmith.orchestrator.smith import policy
    two = policy.chance("val_acc", NS(num_classes=2, majority=0.5, val_samples=400))
    assert two.level == 0.5 and two.bar == pytest.approx(0.55)
    assert not policy.no_better_than_chance(0.95, two) and policy.no_better_than_chance(0.53, two)
    small = policy.chance("val_acc", NS(num_classes=2, majority=0.5, val_samples=40))
    assert small.bar == pytest.approx(0.5 + 2 * (0.25 / 40) ** 0.5) and policy.no_better_than_chance(0.6, small)
    skewed = policy.chance("val_acc", NS(num_classes=2, majority=0.9, val_samples=1000))
    assert policy.no_better_than_chance(0.9, skewed) and not policy.no_better_than_chance(0.97, skewed)
    ten = policy.chance("val_acc", NS(num_classes=10, majority=0.1, val_samples=360))
    assert policy.no_better_than_chance(0.168, ten) and not policy.no_better_than_chance(0.25, ten)
    assert policy.no_better_than_chance(None, ten) and not policy.no_better_than_chance(None, None)
    assert policy.chance("val_loss", NS(num_classes=10, majority=0.1, val_samples=360)) is None
    assert "always guessing the largest class" in two.text()



def test_a_result_at_chance_names_a_schedule_shorter_than_the_range_tests_fall():
    """600 glyphs, 2 epochs of 14 steps: every trial at chance, where the range test's loss fell
    over 300 steps. The warning says to train longer, not to check the data."""
    from types import SimpleNamespace as NS
    from tunesmith.orchestrator.smith import policy
    curve = NS(epoch_steps=14, steps=300)
    assert policy.too_few_steps(NS(informative=True, curve=curve), 2) == (
        "each run trained 28 steps (2 epochs of 14), fewer than the 300 over which the range test's "
        "loss fell: raise trainer.epochs")
    assert policy.too_few_steps(NS(informative=True, curve=curve), 22) is None      # 308 steps: not the length
    assert policy.too_few_steps(NS(informative=False, curve=curve), 2) is None      # the loss never fell
    assert policy.too_few_steps(NS(informative=True, curve=NS(epoch_steps=0, steps=0)), 2) is None

def test_an_unused_budget_is_named_only_where_every_trial_of_stage_2_started():
    """With 7 s of 60 left, smith said "all 836 trials of stage 2 finished (--samples sets how
    many)" of a 1000-trial search that the budget had cut at the time held for its confirmation
    (which then did not fit). That line belongs to a search --samples ended."""
    from tunesmith.orchestrator.smith.report import left_unused
    from tunesmith.orchestrator.spec import from_dict
    spec = from_dict({"name": "s", "dataset": {"name": "digits"}, "search": {"num_samples": 1000}})
    assert left_unused([{"trials": 836}], [spec], 7.0, 60.0) == ""
    assert left_unused([{"trials": 1000}], [spec], 7.0, 60.0) == (
        "smith stopped with 7s of its 60s budget left: all 1000 trials of stage 2 finished (--samples sets how many)")
    assert left_unused([{"trials": 1000}, {"trials": 12}], [spec, spec], 7.0, 60.0) == ""   # the widened one cut
    assert left_unused([{"trials": 1000}], [spec], 5.0, 60.0) == ""       # a tenth or less left: used up
    assert left_unused([{"trials": 1000}], [spec], None, None) == ""      # no budget


def test_the_range_test_reads_the_validation_parts_largest_class():
    from tunesmith.trainables import lr_range_test as lf
    from tunesmith.trainables.config import TrainConfig
    cfg = TrainConfig.from_dict({"dataset": {"name": "synthetic", "num_samples": 200, "image_size": 8,
                                             "num_classes": 2}, "model": {"width": 8}})
    curve = lf.range_test(cfg, steps=10, cpu_threads=1)
    import torch
    from tunesmith.trainables import data as data_mod
    val_y = torch.as_tensor(data_mod.load(cfg.dataset).val_y)
    assert curve.val_samples == len(val_y) > 0
    assert curve.majority == pytest.approx(float(torch.bincount(val_y.long()).max()) / len(val_y)) and curve.majority >= 0.5


def test_smith_searches_the_lr_alone_where_the_budget_affords_few_trials():
    """With time_budget_s, the range test's pace per step and the data's steps per epoch say how
    many stage-2 trials fit: fewer than FEW_TRIALS (twice the unbudgeted default's 16) draw the LR alone,
    with momentum's bound and trainer.weight_decay held; more draw all three. Without a budget,
    all three."""
    import yaml
    from types import SimpleNamespace
    from tunesmith.orchestrator.smith import policy
    from tunesmith.orchestrator.spec import from_dict
    raw = {**yaml.safe_load(SPEC.replace("RESULTS", "r")), "time_budget_s": 90}
    spec = from_dict({**raw, "trainer": {"epochs": 10, "weight_decay": 2e-4}})
    opts = policy.Options("weight_decay_shallow", 0.5, 1.5, 10, False)

    def plan(step_s, left, slots=2, s=spec):
        curve = SimpleNamespace(step_s=step_s, epoch_steps=100, problem=None, num_classes=10, majority=0.1,
                                val_samples=360)
        return policy.plan_stage2(s, SimpleNamespace(informative=True, max_lr=0.1, curve=curve), opts, 8, False,
                                  left, slots)
    # 64-px colour: 0.09 s a step, 100 steps an epoch (11 s with validation), first rung at 3 epochs:
    # 72 s on 2 slots is 2 trials
    slow = plan(0.09, 72.0)
    assert policy.affordable_trials(SimpleNamespace(step_s=0.09, epoch_steps=100), 72.0, 2, 10) == \
        pytest.approx(72 * 2 / (policy.RUNG_COST * 3 * 0.09 * 100 * policy.EVAL_SHARE))
    assert slow.held and {d.key for d in slow.spec.plan.space} == {"lr"}
    assert slow.spec.train.trainer.weight_decay == 2e-4 and slow.spec.train.trainer.max_momentum == 0.95
    assert "too few to draw momentum and weight decay" in slow.basis and "held" in slow.beside
    # 8 trials (on 8 slots) are still fewer than momentum's 4 bounds x 3 decays: the LR alone
    middle = plan(0.09, 72.0, slots=8)
    assert middle.held and {d.key for d in middle.spec.plan.space} == {"lr"}
    # 30 trials (eighteen times faster, in the 57 s the confirmation's one round leaves) are still
    # fewer than two of each pair: the LR alone
    assert plan(0.005, 72.0).held
    # the same data thirty times faster affords 53, on forty slots 43: all three drawn
    for fast in (plan(0.003, 72.0), plan(0.09, 72.0, slots=40)):
        assert not fast.held and {d.key for d in fast.spec.plan.space} == {"lr", "max_momentum", "weight_decay"}
        assert "jointly with max_momentum" in fast.beside
    unbudgeted = from_dict({**raw, "time_budget_s": None})
    assert not plan(0.09, None, s=unbudgeted).held
    # no band from the range test: as few trials search the LR alone from a decade and a half
    # below trainer.lr to half a decade above; as many as the unbudgeted default search the wide
    # range jointly
    flat = SimpleNamespace(step_s=0.09, epoch_steps=100, problem="the loss never falls clearly", num_classes=10,
                           majority=0.1, val_samples=360)
    for slots in (2, 8):
        few = policy.plan_stage2(spec, SimpleNamespace(informative=False, curve=flat), opts, 8, False, 72.0, slots)
        assert few.lr_range == pytest.approx((0.05 / 10 ** 1.5, 0.05 * 10 ** 0.5))
        assert "from 1.5 decades below trainer.lr 0.05 to 0.5 above it" in few.basis
        assert few.held and {d.key for d in few.spec.plan.space} == {"lr"}
    assert "while the LR's placement is unknown" in few.basis
    many = policy.plan_stage2(spec, SimpleNamespace(informative=False, curve=flat), opts, 8, False, 72.0, 40)
    assert many.lr_range == policy.WIDE and not many.held   # 43 trials; 21 are still few
    assert policy.plan_stage2(spec, SimpleNamespace(informative=False, curve=flat), opts, 8, False, 72.0, 20).held
    # the trials are counted in the search's share of the time left. The default confirmation (2
    # finalists x 1 new seed: one round on 2 slots) keeps its whole schedule where that fits in 30%
    # of the budget: 37.5 s of 200 s at 2.5-s epochs, 21 s of 72 s at 1.1-s epochs (15 trials, not
    # 21). Two new seeds (2 rounds) keep the 30% cap of 200 s, and 2.5-s epochs afford 19 trials,
    # not 27; at 72 s four fifths of their runs do not fit in the share, and the search keeps all
    # of it (no confirmation): runs fitted to less read low
    from tunesmith.orchestrator.ledger import HOLD_WIND_DOWN_S, hold_at_pace
    two = from_dict({**raw, "trainer": {"epochs": 10, "weight_decay": 2e-4}, "confirm": {"top": 2, "seeds": 2}})
    epoch_s = 0.02 * 100 * policy.EVAL_SHARE
    slowish = SimpleNamespace(step_s=0.02, epoch_steps=100, problem="the loss never falls clearly")
    assert policy.confirmation_hold(spec, slowish, 200.0, 2, 10) == pytest.approx(hold_at_pace(10, epoch_s)) \
        == pytest.approx(37.5)
    assert policy.confirmation_hold(two, slowish, 200.0, 2, 10) == pytest.approx(0.3 * 200.0)
    assert policy.affordable_trials(slowish, 200.0 - 0.3 * 200.0, 2, 10) == pytest.approx(
        (200.0 - 0.3 * 200.0) * 2 / (policy.RUNG_COST * 3 * epoch_s))
    quick = SimpleNamespace(step_s=0.009, epoch_steps=100, problem="the loss never falls clearly",
                            num_classes=10, majority=0.1, val_samples=360)
    assert policy.confirmation_hold(two, quick, 72.0, 2, 10) == 0.0
    assert policy.confirmation_hold(spec, quick, 72.0, 2, 10) == pytest.approx(
        hold_at_pace(10, 0.009 * 100 * policy.EVAL_SHARE)) == pytest.approx(21.0)
    # where the schedule's last fifth is shorter than the search's wind-down (tiny data), the
    # hold is the least the confirmation needs, and the wind-down
    tiny = SimpleNamespace(step_s=0.0001, epoch_steps=100, problem="the loss never falls clearly")
    least = hold_at_pace(8, 0.0001 * 100 * policy.EVAL_SHARE) + HOLD_WIND_DOWN_S
    assert least > hold_at_pace(10, 0.0001 * 100 * policy.EVAL_SHARE)
    assert policy.confirmation_hold(spec, tiny, 72.0, 2, 10) == pytest.approx(least)
    unconfirmed = from_dict({**raw, "trainer": {"epochs": 10, "weight_decay": 2e-4}, "confirm": {"top": 0}})
    assert policy.confirmation_hold(unconfirmed, slowish, 200.0, 2, 10) == 0.0
    alone = policy.plan_stage2(spec, SimpleNamespace(informative=False, curve=quick), opts, 8, False, 72.0, 2)
    assert alone.held and "affords about 15 trials of 3 epochs (2 at once) in the 51s its confirmation leaves, too few" \
        in alone.basis   # no band
    banded = policy.plan_stage2(spec, SimpleNamespace(informative=True, max_lr=0.1, curve=quick), opts, 8, False,
                                72.0, 2)
    assert banded.held and "affords about 15 trials" in banded.basis   # band or none, 15 are few
    banded = policy.plan_stage2(spec, SimpleNamespace(informative=True, max_lr=0.1, curve=quick), opts, 8, False,
                                200.0, 2)   # 41 trials in the 140 s its confirmation leaves
    assert not banded.held and {d.key for d in banded.spec.plan.space} == {"lr", "max_momentum", "weight_decay"}
    # an epoch longer than the pilot's seconds: no pilot (it would end with none)
    assert "longer than the pilot's" in policy.pilot_too_slow(flat)
    # --search overrides the rule: lr holds momentum and weight decay with many trials or no
    # budget (band or none), joint draws all three with few
    for search, step_s, s, want in (("lr", 0.009, spec, {"lr"}), ("lr", 0.09, spec, {"lr"}),
                                    ("lr", 0.09, unbudgeted, {"lr"}),
                                    ("joint", 0.09, spec, {"lr", "max_momentum", "weight_decay"})):
        forced = policy.Options("weight_decay_shallow", 0.5, 1.5, 10, False, search)
        for informative in (True, False):
            curve = SimpleNamespace(step_s=step_s, epoch_steps=100, problem="the loss never falls clearly",
                                    num_classes=2, majority=0.5, val_samples=40)
            got = policy.plan_stage2(s, SimpleNamespace(informative=informative, max_lr=0.1, curve=curve), forced,
                                     8, False, None if s is unbudgeted else 72.0, 2)
            assert {d.key for d in got.spec.plan.space} == want and got.held == (search == "lr")
            assert ("--search lr" in got.basis) == (search == "lr")
            if not informative and search == "lr":
                lr = s.train.trainer.lr
                assert got.lr_range == pytest.approx((lr / 10 ** 1.5, lr * 10 ** 0.5))
                few = s is spec   # 2 trials in 72 s, or at 0.009 s a step 21: both few
                assert ("the budget affords few trials" if few else "and stage 2 draws the LR alone") in got.basis
    assert policy.pilot_too_slow(SimpleNamespace(step_s=0.009, epoch_steps=100)) is None


@pytest.mark.ray
@pytest.mark.slow
def test_smith_stages_and_report(ray_session, tmp_path, capsys, spec_file):
    assert main(["smith", spec_file(SPEC), "--final", "--short-epochs", "3", "--samples", "6"]) == 0
    out = capsys.readouterr().out
    assert "# Smith report: sm" in out
    root = tmp_path / "results"
    report = json.loads((root / "sm" / "smith.json").read_text())
    s1, s2, s3 = report["stage1"], report["stage2"], report["stage3"]
    assert s1["informative"] and s1["rule"] == "min10" and "benchmark" in s1["why"]
    assert s1["points"] >= 300 or "passed" in s1["stop_reason"]   # sized to the data, not 100 steps
    lo, hi = s1["band"]
    assert hi == pytest.approx(10 * lo)
    assert s2["lr_range"] == pytest.approx([hi / 10 ** 0.5, hi * 10 ** 1.5])   # leaning to larger LRs
    table = pq.read_table(root / "sm" / "trials.parquet").to_pandas()
    trials, confirmed = table[table.phase == "search"], table[table.phase == "confirm"]
    assert len(trials) == 6
    # smith confirms by default: its two best settings again with a new seed, at stage 2's length,
    # beside their own search runs where those trained the whole schedule
    assert len(confirmed) == 2 and (confirmed.epochs == 3).all() and confirmed.test_acc.notna().all()
    c = s2["confirmed"]
    assert [f["trial"] for f in c["finalists"]][0] == s2["best_trial"] and 1000 in c["seeds"]
    search = trials.set_index("trial_id")
    for f in c["finalists"]:
        row = search.loc[f["trial"]]
        whole = row.status == "completed" and row.stop_reason.startswith("trained all")
        assert sorted(f["by_seed"]) == sorted({"1000"} | ({str(row.seed)} if whole else set())), (f, row.stop_reason)
    assert s2["best"] == pytest.approx(trials.set_index("trial_id").loc[s2["best_trial"], "best_val_acc"])
    assert trials.hp_lr.between(s2["lr_range"][0] * (1 - 1e-9), s2["lr_range"][1] * (1 + 1e-9)).all()
    assert set(trials.hp_max_momentum) <= {0.9, 0.95, 0.97, 0.99}
    assert set(trials.hp_weight_decay) <= {1e-4, 1e-3, 1e-2}
    # the pilot: stage 2's centre, trained in this process (the driver) while Tune took the rest
    import math
    assert s2["pilot"] == {"trial": "pilot", "config": {"lr": pytest.approx(math.sqrt(math.prod(s2["lr_range"]))),
                                                      "max_momentum": 0.95, "weight_decay": 1e-3}}
    pilot = trials.set_index("trial_id").loc["pilot"]
    assert pilot.status == "completed" and pilot.epochs == 3 and pilot.device == "cpu", pilot.to_dict()
    assert pilot.node_ip == "127.0.0.1" and pilot.hp_lr == pytest.approx(s2["pilot"]["config"]["lr"])
    assert (root / "sm" / "tensorboard" / "pilot").is_dir()
    # the confirmed winner's checkpoint is kept; the pilot's, like every search trial's, goes
    assert not list((root / "sm" / "pilot").glob("checkpoint_*"))
    kept = table[table.checkpoint.notna()]
    assert list(kept.phase) == ["confirm"] and list(kept.confirms) == [s2["best_trial"]]
    assert "Trial pilot, stage 2's centre (lr" in (root / "sm" / "smith_report.md").read_text()
    # drawn quasi-randomly: the first four LRs of Tune's trials fill the four quarters of the range
    first = trials[trials.trial_id != "pilot"].sort_values("started_at").hp_lr.iloc[:4]
    a, b = (math.log(x) for x in s2["lr_range"])
    quarter = [int((math.log(x) - a) / (b - a) * 4) for x in first]
    assert sorted(quarter) == [0, 1, 2, 3], list(first)
    assert s2["rung_epochs"] == [1] and s2["ranked_at_epoch"] == 1
    assert sum(r["trials"] for r in s2["momentum_ranking"]) == 6   # every trial reached the first rung
    final = pq.read_table(root / "sm-final" / "trials.parquet").to_pandas()
    assert len(final) == 1 and final.epochs.iloc[0] == 6 and final.status.iloc[0] == "completed"
    import yaml
    final_spec = yaml.safe_load((root / "sm-final" / "spec.yaml").read_text())
    for key, value in s2["best_config"].items():   # the best configuration, set as the spec's own values
        assert final_spec["trainer"][key] == pytest.approx(value)
    assert s3["final"] == pytest.approx(final.last_val_acc.iloc[0])
    assert s3["best"] == pytest.approx(final.best_val_acc.iloc[0]) and s3["best"] > 0.9
    res = report["result"]
    assert res["value"] == pytest.approx(max(s2["best"], s3["best"]))   # the better model is kept
    assert res["stage"] == (3 if s3["best"] >= s2["best"] else 2)
    if res["stage"] == 2:
        assert any("stage 3 ended below stage 2" in w for w in report["warnings"])
    md = (root / "sm" / "smith_report.md").read_text()
    assert "## Stage 1" in md and "## Stage 2" in md and "## Stage 3" in md and "## Result" in md
    assert "6 of 6 epochs (completed): best" in md and "Confirmation: the finalists' final-epoch val_acc over seeds " in md
    assert f"val_acc {res['value']:.4f}: trial {res['trial']}" in md


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.serial
def test_smith_final_within_a_time_budget_keeps_time_for_stage_3(ray_session, tmp_path, spec_file):
    """--final with time_budget_s: stage 2 stops when what is left just fits stage 3 at stage 2's
    pace, so the full-length run completes inside the budget (stage 2 used to take it all, and
    stage 3 finished no epoch)."""
    # 40 s: stage 1 ends 5 to 9 s in, and Tune's set-up and wind-down take 5 to 8 s of stage 2; at 30 s
    # its trials never started, and at 20 s stage 3 started with 4 s left
    text = SPEC.replace("name: sm", "name: fb\ntime_budget_s: 40\nconfirm: {top: 0}").replace("width: 16", "width: 8")
    assert main(["smith", spec_file(text), "--final", "--short-epochs", "3"]) == 0
    root = tmp_path / "results"
    report = json.loads((root / "fb" / "smith.json").read_text())
    final = pq.read_table(root / "fb-final" / "trials.parquet").to_pandas()
    assert len(final) == 1 and final.status.iloc[0] == "completed" and final.epochs.iloc[0] == 6, final.stop_reason
    assert report["seconds"] <= 41, f"{report['seconds']} s for a 40 s budget"
    stage2 = pq.read_table(root / "fb" / "trials.parquet").to_pandas()
    # held back, not run dry: trials in flight at the hold-back point were stopped there, or had
    # fitted their schedules to it (the held-back deadline reaches them while they run)
    assert stage2.stop_reason.str.contains("time budget").any()


@pytest.mark.ray
@pytest.mark.slow
def test_smith_notices_a_chance_level_answer_and_widens(ray_session, tmp_path, capsys, spec_file, monkeypatch):
    """Random labels: no LR can do better than chance, and the held-out loss shows it. smith
    says so, widens the range, and never presents the result as a model without a warning.
    Joining a cluster (--address), its range test runs as a task where trials run, not in the
    driver: here the driver's own range test fails."""
    from tunesmith.orchestrator import lr_find

    def not_here(*a, **k):
        raise AssertionError("the range test ran in the driver")
    monkeypatch.setattr(lr_find, "decide", not_here)
    text = """
name: noise
dataset: {name: synthetic, num_samples: 400, image_size: 8, num_classes: 10}
model: {width: 8}
trainer: {epochs: 2}
confirm: {top: 0}
results_dir: RESULTS
"""
    assert main(["smith", spec_file(text), "--samples", "2", "--max-seconds", "5", "--val-loss",
                 "--address", ray_session.address]) == 0
    out = capsys.readouterr().out
    assert "no better than chance" in out
    report = json.loads((tmp_path / "results" / "noise" / "smith.json").read_text())
    assert report["stage1"]["node"] == "127.0.0.1" and "on node 127.0.0.1" in out
    assert not report["stage1"]["informative"] and report["stage1"]["band"] is None
    runs = report["stage2_runs"]
    assert len(runs) == 2 and runs[1]["name"] == "noise-wide"
    assert runs[1]["lr_range"][0] < runs[0]["lr_range"][0] and runs[1]["lr_range"][1] > runs[0]["lr_range"][1]
    assert any(w.startswith("WARNING") and "no better than chance" in w for w in report["warnings"])
    assert "WARNING" in (tmp_path / "results" / "noise" / "smith_report.md").read_text()


def test_submit_carries_smith_options_to_the_job_and_checks_them_here(spec_file, capsys):
    """`submit --smith` sends smith's command line with the job; its options are checked before
    anything reaches the cluster, and refused without --smith (no address answers here)."""
    from tunesmith.orchestrator.cli import _smith_options, build_parser
    args = build_parser().parse_args(["submit", "s.yaml", "--smith", "--final", "--samples", "4",
                                      "--range", "0.5", "1", "--pick", "steepest"])
    assert _smith_options(args) == ["--pick", "steepest", "--samples", "4", "--final", "--range", "0.5", "1.0"]
    nowhere = ["--address", "http://127.0.0.1:9"]
    assert main(["submit", spec_file(SPEC), *nowhere, "--samples", "4"]) == 2
    err = capsys.readouterr().err
    assert "--samples = '4': a smith option: submit smith with --smith" in err and err.count("\n") == 1
    assert main(["submit", spec_file(SPEC), *nowhere, "--smith", "--short-epochs", "9"]) == 2
    err = capsys.readouterr().err
    assert "must not exceed trainer.epochs" in err and err.count("\n") == 1


@pytest.mark.ray
@pytest.mark.slow
def test_smith_fine_tunes_a_kept_checkpoint_on_a_colour_folder(ray_session, tmp_path, capsys, spec_file):
    """Issue #27's user: last week's sweep (grey digits) kept its winner; this week's data is a
    folder of colour photographs. The spec names the old sweep in model.weights, nothing else."""
    import numpy as np
    from PIL import Image
    from tunesmith.trainables import photos
    assert main(["run", spec_file(SPEC.replace("name: sm", "name: last-week"), "old.yaml"),
                 "--num-samples", "1", "--set", "trainer.epochs=1", "--set", "confirm.top=0"]) == 0
    rng = np.random.default_rng(0)
    for kind in photos.KINDS_B[:3]:
        os.makedirs(tmp_path / "photos" / kind)
        for i in range(16):
            Image.fromarray(photos.render(rng, kind, "gloss").transpose(1, 2, 0)).save(tmp_path / "photos" / kind / f"{i}.png")
    new = f"""
name: this-week
dataset: {{name: imagefolder, data_dir: {tmp_path / 'photos'}, image_size: 32, augment: photo}}
model: {{weights: {tmp_path / 'results' / 'last-week'}}}
trainer: {{epochs: 4, per_gpu_batch_size: 16}}
confirm: {{top: 0}}
results_dir: RESULTS
"""
    capsys.readouterr()
    assert main(["smith", spec_file(new, "new.yaml"), "--short-epochs", "2", "--samples", "4", "--no-pilot",
                 "--steps", "60"]) == 0
    out = capsys.readouterr().out
    model = next(line for line in out.splitlines() if line.startswith("model: "))
    assert "small_cnn" in model and "head of 3 classes" in model and "stem adapted between grey and colour" in model
    assert "left as initialised (shape differs): " in model and "head.3.weight" in model
    report = json.loads((tmp_path / "results" / "this-week" / "smith.json").read_text())
    assert "fine-tuning the weights in" in report["stage2_runs"][0]["lr_basis"]
    trials = pq.read_table(tmp_path / "results" / "this-week" / "trials.parquet").to_pandas()
    assert set(trials.hp_model_backbone_lr) <= {1.0, 0.3, 0.1} and set(trials.hp_model_freeze_epochs) <= {0, 1}
    assert trials.best_val_acc.max() > 0
