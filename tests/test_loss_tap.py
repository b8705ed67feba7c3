"""The host reads the step losses a window late (trainables/loss_tap.py), as it does on a GPU;
here on the CPU, with the window forced above one step. The lag bound: a divergence is seen at
most two windows after the step that showed it, and it is the same step as read at once."""
import math

import pytest
import torch

from tunesmith.trainables.config import TrainConfig
from tunesmith.trainables.loss_tap import GPU_EVERY, LossTap, default_every
from tunesmith.trainables.trainer import Trainer


def test_every_step_is_read_at_once_on_the_cpu_by_default():
    tap = LossTap(torch.device("cpu"))
    assert default_every(torch.device("cpu")) == 1 and GPU_EVERY > 1
    assert tap.push(torch.tensor(2.5), False) == ([(1, 2.5)], False)
    assert tap.push(torch.tensor(1.5), False) == ([(2, 1.5)], False)


def test_a_window_is_read_one_window_after_it_closes():
    tap = LossTap(torch.device("cpu"), every=4)
    tap.start_epoch()
    got = []
    for step in range(1, 11):
        ready, late = tap.push(torch.tensor(float(step)), late=(step == 6))
        got.append((step, [s for s, _ in ready], late))
    # steps 1-4 close a window at step 4 and are read at step 8, with no late flag among them
    assert [g for g in got if g[1]] == [(8, [1, 2, 3, 4], False)]
    rest, late = tap.drain()   # the epoch's end: the window of steps 5-8, then the partial 9-10
    assert [s for s, _ in rest] == [5, 6, 7, 8, 9, 10] and [v for _, v in rest] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert late   # step 6 passed the deadline


def _diverging():
    return TrainConfig.from_dict({"trainer": {"epochs": 2, "lr": 50.0, "schedule": "constant",
                                              "per_gpu_batch_size": 16},
                                  "model": {"width": 8}})


def _run(every):
    trainer = Trainer(_diverging(), cpu_threads=1, sync_every=every)
    executed = []
    step = trainer.train_step

    def counted(*args):
        executed.append(1)
        return step(*args)
    trainer.train_step = counted
    out = list(trainer.run())
    return out, len(executed)


@pytest.mark.parametrize("every", [4, 16])
def test_divergence_is_seen_within_two_windows_of_its_step(every):
    (at_once,), steps_at_once = _run(1)
    assert at_once["diverged"] and steps_at_once == at_once["steps"]   # per step: stopped at that step
    (late,), steps_late = _run(every)
    assert late["diverged"] and late["steps"] == at_once["steps"]      # the same step is named
    assert late["stop_reason"] == at_once["stop_reason"] and late["lr"] == at_once["lr"]
    assert at_once["steps"] < steps_late <= at_once["steps"] + 2 * every   # and seen within the lag bound
    assert math.isclose(late["train_loss"], at_once["train_loss"]) or not math.isfinite(at_once["train_loss"])


def test_a_healthy_run_reports_the_same_metrics_whatever_the_window():
    cfg = TrainConfig.from_dict({"trainer": {"epochs": 2, "lr": 0.1, "per_gpu_batch_size": 128},
                                 "model": {"width": 8}})
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    a = [[m[k] for k in keys] for m in Trainer(cfg, cpu_threads=1).run()]
    b = [[m[k] for k in keys] for m in Trainer(cfg, cpu_threads=1, sync_every=8).run()]
    assert a == b


def _two_ranks(target):
    """Run ``target(rank, port, queue)`` as two spawned gloo ranks on 127.0.0.1: what each put,
    sorted by rank."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results


def _rank(rank, port, out):
    import time
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = TrainConfig.from_dict({"trainer": {"epochs": 2, "per_gpu_batch_size": 32}, "model": {"width": 8}})
        trainer = Trainer(cfg, device=torch.device("cpu"), cpu_threads=1, rank=rank, world=2, sync_every=4)
        # rank 1 is past the deadline from its first step; rank 0 would train on for an hour
        trainer.deadline = time.time() + (3600 if rank == 0 else -1)
        calls, steps = [], []
        reduce, step = dist.all_reduce, trainer.train_step

        def counted_reduce(*args, **kwargs):
            calls.append(1)
            return reduce(*args, **kwargs)

        def counted_step(*args):
            steps.append(1)
            return step(*args)
        dist.all_reduce, trainer.train_step = counted_reduce, counted_step
        try:
            result = trainer.train_epoch(0)
        finally:
            dist.all_reduce = reduce
        out.put((rank, result.get("out_of_time", False), len(steps), len(calls)))
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_agree_on_the_deadline_once_a_window():
    """Two gloo ranks, one past the deadline: both stop at the same step, within two windows,
    with one collective per window rather than one per step."""
    results = _two_ranks(_rank)
    (r0, late0, steps0, calls0), (r1, late1, steps1, calls1) = results
    assert late0 and late1 and steps0 == steps1          # stopped together: no rank left in a collective
    assert steps0 <= 2 * 4                               # within two windows of rank 1's first late step
    assert calls0 == calls1 == steps0 // 4               # one collective per window, none per step


def _big_batch_rank(rank, port, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = TrainConfig.from_dict({"trainer": {"epochs": 1, "per_gpu_batch_size": 1024}, "model": {"width": 4}})
        trainer = Trainer(cfg, device=torch.device("cpu"), cpu_threads=1, rank=rank, world=2)
        (metrics,) = list(trainer.run())
        out.put((rank, trainer.global_batch, trainer.steps_per_epoch, metrics["train_loss"]))
    finally:
        dist.destroy_process_group()


def test_a_data_parallel_batch_larger_than_the_training_set_trains():
    """2 ranks of 1,024 on digits' 1,078 training images failed inside the ranks; each now
    takes half of the whole set, one step an epoch, and both report the same loss."""
    results = _two_ranks(_big_batch_rank)
    (_, batch0, steps0, loss0), (_, batch1, steps1, loss1) = results
    assert batch0 == batch1 == 1078 and steps0 == steps1 == 1 and math.isfinite(loss0) and loss0 == loss1
