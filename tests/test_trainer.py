import math

import pytest

from tunesmith.trainables.config import TrainConfig
from tunesmith.trainables.trainer import DivergenceMonitor, Trainer


def _cfg(**trainer):
    base = {"epochs": 2, "lr": 0.1, "per_gpu_batch_size": 128}
    base.update(trainer)
    return TrainConfig.from_dict({"trainer": base, "model": {"width": 8}})


def test_monitor_flags_nan_and_inf():
    m = DivergenceMonitor()
    assert m.update(1.0) is None
    assert "nan" in m.update(math.nan)
    assert "inf" in DivergenceMonitor().update(math.inf)


def test_monitor_flags_loss_above_four_times_best_smoothed():
    m = DivergenceMonitor(factor=4.0, beta=0.0, warmup=1)   # no smoothing: exact threshold
    for loss in (2.0, 1.0, 0.5):
        assert m.update(loss) is None
    assert m.update(1.9) is None
    assert "exceeded 4x" in m.update(2.1)


def test_a_converged_loss_wobbling_near_zero_is_not_divergence():
    """0.0015 to 0.006 is 4x the best, but far below where the run started: two healthy
    20-epoch digits trials were once stopped as diverged for this."""
    m = DivergenceMonitor(factor=4.0, beta=0.0, warmup=1)
    for loss in (2.3, 1.0, 0.1, 0.01, 0.0015):
        assert m.update(loss) is None
    assert m.update(0.006) is None and m.update(0.05) is None
    assert "exceeded 4x" in m.update(1.3)   # back above half the starting loss: diverged


def test_monitor_tolerates_noise_below_the_threshold():
    m = DivergenceMonitor()
    losses = [2.3 - 0.01 * i + (0.3 if i % 7 == 0 else 0) for i in range(200)]
    assert all(m.update(x) is None for x in losses)


def test_trainer_reports_every_metric_each_epoch():
    out = list(Trainer(_cfg(), cpu_threads=1).run())
    assert [m["epoch"] for m in out] == [1, 2]
    for m in out:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum",
                    "epoch_seconds", "samples_per_second"):
            assert math.isfinite(m[key]), key
        assert m["diverged"] is False
    assert out[-1]["done"] is True


def test_same_config_and_seed_give_same_metrics():
    a = list(Trainer(_cfg(), cpu_threads=1).run())
    b = list(Trainer(_cfg(), cpu_threads=1).run())
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum")
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    c = list(Trainer(TrainConfig.from_dict({**_cfg().to_dict(), "seed": 1}), cpu_threads=1).run())
    assert [m["train_loss"] for m in c] != [m["train_loss"] for m in a]


def test_a_deadline_ends_the_run_mid_epoch_without_a_report():
    """The sweep's time budget: the trainer stops at the next mini-batch once the deadline has
    passed, instead of finishing an epoch that Tune's stop would wait for."""
    import time
    trainer = Trainer(_cfg(epochs=5, per_gpu_batch_size=16), cpu_threads=1)
    steps = []
    step = trainer.train_step

    def counted(*args):
        steps.append(1)
        if len(steps) == trainer.steps_per_epoch + 3:   # three steps into the second epoch
            trainer.deadline = time.time()
        return step(*args)
    trainer.train_step = counted
    out = list(trainer.run())
    assert [m["epoch"] for m in out] == [1]
    assert len(steps) == trainer.steps_per_epoch + 3 < 2 * trainer.steps_per_epoch
    late = Trainer(_cfg(), cpu_threads=1)
    late.deadline = time.time() - 1
    assert list(late.run()) == []


class _StepClock:
    """The trainer's clock, advanced one second per training step and frozen otherwise: a run
    whose pace and deadline are known exactly, however fast the machine is."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        return self.now

    perf_counter = time


def _tick(trainer, clock, seconds=1.0):
    """Each training step advances ``clock`` by ``seconds``; returns the list of the steps' LRs."""
    lrs = []
    step = trainer.train_step

    def ticking(x, y, lr, momentum):
        lrs.append(lr)
        clock.now += seconds
        return step(x, y, lr, momentum)
    trainer.train_step = ticking
    return lrs


@pytest.fixture
def step_clock(monkeypatch):
    """The trainer module's clock replaced by a _StepClock."""
    from tunesmith.trainables import trainer as trainer_mod
    clock = _StepClock()
    monkeypatch.setattr(trainer_mod, "time", clock)
    return clock


def test_a_run_that_cannot_finish_by_the_deadline_anneals_in_the_epochs_that_fit(step_clock):
    """Budgeted training: rather than being cut off at its peak LR, a 1cycle run re-plans the
    rest of its schedule into the whole epochs left before the deadline, ends annealed there,
    and says where its schedule now ends; every step is taken before the deadline."""
    clock = step_clock
    trainer = Trainer(_cfg(epochs=10, per_gpu_batch_size=64, schedule="one_cycle"), cpu_threads=1)
    spe = trainer.steps_per_epoch
    trainer.deadline = 4.5 * spe   # four and a half epochs at one second per step
    lrs = _tick(trainer, clock)
    out, plans = [], []
    for m in trainer.run():   # a checkpoint carries the re-planned schedule, for a resumed run
        out.append(m)
        state = trainer.state_dict()
        plans.append((state["end_epoch"], bool(state["warp"])))
    assert 2 <= len(out) <= 4, [m["epoch"] for m in out]
    assert out[-1]["done"] is True and out[-1]["schedule_epochs"] == len(out)
    assert clock.now <= trainer.deadline and len(lrs) == len(out) * spe
    peak = trainer.peak_lr
    assert max(lrs) == pytest.approx(peak, rel=0.05), "the compressed schedule still reaches its peak"
    assert lrs[-1] < 0.2 * peak / 10, "the run ends annealed, deep in 1cycle's annihilation, not at its peak"
    assert all(m["val_acc"] > 0 for m in out)
    assert plans[-1] == (len(out), True)


def test_a_deadline_moved_earlier_during_the_run_is_kept(step_clock):
    """smith --final holds back stage 3's share of the budget once stage 2's pace is known,
    after its trials started: a trial reads the deadline again at each epoch's start (None: no
    answer, keep the last) and fits its schedule to the earlier one."""
    clock = step_clock
    trainer = Trainer(_cfg(epochs=10, per_gpu_batch_size=64, schedule="one_cycle"), cpu_threads=1)
    spe = trainer.steps_per_epoch
    trainer.deadline = 100.0 * spe   # ample for ten epochs
    reads = []

    def source():
        reads.append(trainer.epoch)
        return None if trainer.epoch == 0 else (5.5 * spe if trainer.epoch >= 2 else None)
    trainer.deadline_source = source
    lrs = _tick(trainer, clock)
    out = list(trainer.run())
    assert reads[:3] == [0, 1, 2]   # at each epoch's start
    assert 3 <= len(out) <= 5 and out[-1]["done"] and out[-1]["schedule_epochs"] == len(out), [m["epoch"] for m in out]
    assert clock.now <= 5.5 * spe and lrs[-1] < max(lrs) / 10   # before the new deadline, annealed


def test_a_run_that_fits_its_deadline_keeps_its_schedule(step_clock):
    trainer = Trainer(_cfg(epochs=3, per_gpu_batch_size=64), cpu_threads=1)
    trainer.deadline = 10 * trainer.steps_per_epoch
    _tick(trainer, step_clock)
    out = list(trainer.run())
    assert [m["epoch"] for m in out] == [1, 2, 3] and "schedule_epochs" not in out[-1]
    assert trainer.warp is None


def test_huge_lr_diverges_and_stops_at_once():
    # batches of 64: an epoch of more steps than the monitor's warm-up
    out = list(Trainer(_cfg(lr=1e4, epochs=5, schedule="constant", per_gpu_batch_size=64), cpu_threads=1).run())
    assert len(out) == 1, "a diverged run must not train on"
    assert out[0]["diverged"] is True and out[0]["stop_reason"].startswith("diverged")


def test_schedule_reaches_the_trainer():
    out = list(Trainer(_cfg(schedule="step", step_epochs=1, lr=0.1, epochs=2), cpu_threads=1).run())
    assert out[0]["lr"] == pytest.approx(0.1)
    assert out[1]["lr"] == pytest.approx(0.01)


def test_digits_small_cnn_learns():
    cfg = TrainConfig.from_dict({"trainer": {"epochs": 6, "lr": 0.1, "per_gpu_batch_size": 64}})
    last = list(Trainer(cfg, cpu_threads=1).run())[-1]
    assert last["val_acc"] > 0.95


def test_preview_carries_images_and_labels():
    out = list(Trainer(_cfg(preview_every=1, epochs=1), cpu_threads=1).run())
    p = out[0]["preview"]
    assert p["images"].shape == (16, 1, 8, 8) and p["images"].dtype.name == "uint8"
    assert len(p["pred"]) == len(p["true"]) == 16


def test_a_run_restored_from_its_state_continues_exactly():
    """Checkpoint after 2 of 4 epochs, restore into a fresh trainer: epochs 3 and 4 are those
    of the run that never stopped (weights, optimizer, schedule position, RNG, monitor)."""
    import io
    import torch
    from tunesmith.trainables.config import TrainConfig
    from tunesmith.trainables.trainer import Trainer
    cfg = TrainConfig.from_dict({"model": {"width": 8}, "trainer": {"epochs": 4, "per_gpu_batch_size": 64},
                                 "dataset": {"augment": "flip_crop"}})
    whole = [m["val_loss"] for m in Trainer(cfg, cpu_threads=1).run()]
    first = Trainer(cfg, cpu_threads=1)
    it = first.run()
    head = [next(it)["val_loss"] for _ in range(2)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    it.close()
    torch.manual_seed(123)   # the restored RNG state, not this, decides what follows
    second = Trainer(cfg, cpu_threads=1)
    second.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    tail = [m["val_loss"] for m in second.run()]
    assert len(tail) == 2
    assert head + tail == pytest.approx(whole, rel=1e-6)


def _rank_under_a_deadline(rank: int, world: int, address: str, out):
    """One rank of a two-process data-parallel run on gloo, its clock advancing per step at its
    own pace (rank 1 half again as slow), the deadline four and a half epochs of rank 0's."""
    import torch.distributed as dist
    from tunesmith.trainables import trainer as trainer_mod
    clock = _StepClock()
    trainer_mod.time = clock
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        trainer = Trainer(_cfg(epochs=10, per_gpu_batch_size=64, schedule="one_cycle"), cpu_threads=1,
                          rank=rank, world=world)
        spe = trainer.steps_per_epoch
        trainer.deadline = 4.5 * spe
        lrs = _tick(trainer, clock, 1.0 + 0.5 * rank)
        epochs = [(m["epoch"], m.get("schedule_epochs"), m["done"]) for m in trainer.run()]   # rank 0 reports
        out.put((rank, epochs, lrs, spe))
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_fit_one_plan_to_the_deadline_and_stop_together(tmp_path):
    """The ranks of a data-parallel trial read different clocks and paces; they must agree on
    where the compressed schedule ends and on the step where the deadline stops them, or the
    gradient all-reduce of one waits for a rank that has stopped. Two gloo processes, no Ray."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    address = f"file://{tmp_path / 'rendezvous'}"
    ranks = [ctx.Process(target=_rank_under_a_deadline, args=(r, 2, address, out)) for r in range(2)]
    for p in ranks:
        p.start()
    try:
        got = dict((r, (e, lrs, spe)) for r, e, lrs, spe in (out.get(timeout=60) for _ in ranks))
    finally:
        for p in ranks:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    (e0, lrs0, spe), (e1, lrs1, _) = got[0], got[1]
    assert e0 == e1 and lrs0 == lrs1, (e0, e1)   # one plan, one schedule, the same steps
    assert e0[-1][2] is True and e0[-1][1] == len(e0) < 10, e0   # ended annealed, fitted to the budget
    # rank 1's pace (1.5 s a step) set the plan: its 4.5 * spe seconds hold three epochs, less the margin
    assert len(e0) <= 2 and len(lrs0) == len(e0) * spe, (len(e0), len(lrs0), spe)
    assert max(lrs0) == pytest.approx(0.1, rel=0.1) and lrs0[-1] < max(lrs0) / 10   # peaked, then annihilated
