"""The CNN classification trainer. It knows nothing of Ray: ``Trainer(cfg).run()`` yields one
metrics dict per epoch, and a wrapper (trainables/tune_trainable.py) reports them.

The LR and momentum are set every batch from the pure schedules in trainables/schedules.py.
A run whose loss turns NaN/inf, or climbs above ``divergence_factor`` times its best smoothed
loss, stops at once and says so: Ray's ASHA ignores NaN results, so a diverged run would
otherwise train on to max_t.

A run given a ``deadline`` (a sweep's time budget) that cannot finish its schedule before it
re-plans: the rest of the schedule is compressed into the whole epochs that still fit, so the
run ends annealed (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020) instead of being cut
off at its peak LR, where a 1cycle run's accuracy is low and noisy.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from tunesmith.trainables import data as data_mod
from tunesmith.trainables.config import TrainConfig, schedule_params
from tunesmith.trainables.loss_tap import LossTap, default_every
from tunesmith.trainables.finetune import FineTuning
from tunesmith.trainables.models import build_model
from tunesmith.trainables.optimizers import build_optimizer, current_momentum, set_lr_momentum
from tunesmith.trainables.schedules import lr_at, momentum_at

SMOOTHING = 0.98      # EMA of the batch loss, bias-corrected, as fastai and Lightning do
WARMUP_STEPS = 10     # first steps are noisy: no verdict before this many
PACE_MARGIN = 1.1     # a re-planned schedule assumes epochs this much slower than measured
PACE_SLACK_S = 0.05   # and this much more per epoch (the first epoch's estimate leaves out its report)
PROBE_FROM = 2        # the pace probe skips this many steps (allocation, first-call costs)
EVAL_SHARE = 0.4      # an evaluated sample costs about this share of a trained one (forward only)


class DivergenceMonitor:
    """Watches batch losses; ``update`` returns a reason once training has diverged."""

    def __init__(self, factor: float = 4.0, beta: float = SMOOTHING, warmup: int = WARMUP_STEPS):
        self.factor, self.beta, self.warmup = factor, beta, warmup
        self.avg, self.steps, self.best = 0.0, 0, math.inf
        self.start = math.inf   # the smoothed loss once settled (at ``warmup`` steps)

    @property
    def smoothed(self) -> float:
        return self.avg / (1 - self.beta ** self.steps) if self.steps else math.nan

    def update(self, loss: float) -> Optional[str]:
        if not math.isfinite(loss):
            return f"loss became {loss}"
        self.steps += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smooth = self.smoothed
        if self.steps == self.warmup:
            self.start = smooth
        # The best counts from the first step (a run can blow up within its first batches),
        # but is only judged once the average has settled. A converged run's loss near zero
        # may wobble to 4x its best (0.0015 to 0.006) without diverging: the loss must also
        # climb back above half its starting level.
        if self.steps >= self.warmup and smooth > self.factor * self.best and smooth > 0.5 * self.start:
            return f"smoothed loss {smooth:.4g} exceeded {self.factor:g}x its best {self.best:.4g}"
        self.best = min(self.best, smooth)
        return None


def pick_device(num_gpus: Optional[float] = None) -> torch.device:
    """The trial's device: a GPU when it holds one (Ray sets CUDA_VISIBLE_DEVICES)."""
    if torch.cuda.is_available() and (num_gpus is None or num_gpus > 0):
        return torch.device("cuda")
    return torch.device("cpu")


def device_count(device: torch.device, num_gpus: Optional[float]) -> int:
    """How many devices share the global batch: whole GPUs held, 1 for a fraction or CPU."""
    if device.type != "cuda":
        return 1
    held = torch.cuda.device_count() if num_gpus is None else int(num_gpus)
    return max(1, min(held, torch.cuda.device_count()))


def device_plan(t, device: torch.device, devices: int):
    """(global batch, peak LR, bf16, channels_last) for ``devices`` devices of ``device``'s kind:
    the batch is per GPU times the GPUs (times the ranks), the LR scales with it only when
    asked (scale_lr), and a GPU trains in bf16 autocast and channels_last unless told fp32."""
    on_gpu = device.type == "cuda"
    bf16 = on_gpu and t.precision in ("auto", "bf16") or t.precision == "bf16"
    return t.per_gpu_batch_size * devices, t.lr * (devices if t.scale_lr else 1), bf16, on_gpu


class Trainer:
    """One trial's training. With ``world`` > 1 it is one rank of a data-parallel run (set up by
    Ray Train, trainables/tune_trainable.py): each rank trains its share of every global batch,
    DistributedDataParallel averages the gradients, and the losses the run acts on (divergence,
    the epoch's train metrics) are averaged over ranks, so every rank decides the same."""

    def __init__(self, cfg: TrainConfig, num_gpus: Optional[float] = None,
                 device: Optional[torch.device] = None, cpu_threads: Optional[int] = None,
                 shared: Optional[dict] = None, rank: int = 0, world: int = 1, sync_every: Optional[int] = None):
        """``sync_every``: steps between the host's reads of the losses (trainables/loss_tap.py);
        default 1 on the CPU, GPU_EVERY on a GPU."""
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.deadline: Optional[float] = None   # time.time() at which run() ends, mid-epoch if need be
        self.deadline_source = None   # () -> a new deadline or None, read at each epoch's start
        self.device = device or pick_device(num_gpus)
        self.devices = world if world > 1 else device_count(self.device, num_gpus)
        if cpu_threads:
            torch.set_num_threads(max(1, int(cpu_threads)))
        t = cfg.trainer
        self.global_batch, self.peak_lr, self.bf16, self.channels_last = device_plan(t, self.device, self.devices)

        torch.manual_seed(cfg.seed)
        self.data = data_mod.load(cfg.dataset, self.device, shared=shared)
        model = build_model(cfg.model, self.data.shape, self.data.num_classes).to(self.device)
        self.tuning = FineTuning(cfg, model)
        self.data = self.tuning.data_for(self.data)
        self.model_notes = self.tuning.notes
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.model = nn.DataParallel(model) if self.devices > 1 else model
        self.net = model   # the unwrapped module: evaluation, previews and checkpoints
        self.optimizer = build_optimizer(model, t, self.peak_lr, cfg.model.backbone_lr)
        self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.sched = schedule_params(t, self.peak_lr)
        n = len(self.data.train_y)
        if world > 1 and self.global_batch > n:
            # the global batch past the training set: each rank takes an equal share of all of it
            # (it failed inside the ranks), one step an epoch
            self.global_batch = max(world, n - n % world)
        # Drop a trailing batch of one sample: BatchNorm cannot train on it. Ranks of a
        # data-parallel run drop the partial batch: each must take a step at every step.
        self.steps_per_epoch = max(1, n // self.global_batch + (1 if n % self.global_batch > 1 and world == 1 else 0))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.monitor = DivergenceMonitor(t.divergence_factor)
        self.tap = LossTap(self.device, sync_every or default_every(self.device), world)
        self.epoch = 0   # epochs done: a restored trainer continues from here
        self.end_epoch = t.epochs   # where the schedule ends: earlier once fitted to the deadline
        self.warp: Optional[tuple] = None   # (at, progress, end): the schedule compressed from ``at``

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _inputs(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batches(self) -> Iterator:
        """Training batches (normalised x, y) without end, a new permutation every epoch."""
        n = len(self.data.train_y)
        while True:
            perm = torch.randperm(n, generator=self.generator)
            yield from self.data.epoch(perm, self.global_batch, self.steps_per_epoch)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, momentum: Optional[float]):
        """One optimizer step on the normalised batch ``x``; returns (loss, logits, labels)."""
        set_lr_momentum(self.optimizer, lr, momentum)
        self.model.train()
        self.tuning.before_step()
        x = data_mod.augment(x, self.cfg.dataset.augment, self.generator, self.data.mean, self.data.std)
        with self._autocast():
            logits = self.model(self._inputs(x))
            loss = self.train_loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits, y

    def schedule_progress(self, at: float) -> float:
        """Where in the planned schedule (epochs of t.epochs) the run is at ``at`` epochs
        trained: the same until the schedule is fitted to a deadline, faster after."""
        if self.warp is None:
            return at
        start, progress, end = self.warp
        total = self.cfg.trainer.epochs
        return min(total, progress + (at - start) * (total - progress) / max(end - start, 1e-12))

    def fit_to_deadline(self, at: float, epoch_seconds: float, into_epoch_s: float = 0.0) -> None:
        """Re-plan the rest of the schedule to end at the last whole epoch that fits before the
        deadline, at ``epoch_seconds`` per epoch (training, validation and report), never past
        the planned length; ``into_epoch_s``: seconds already spent on the epoch holding ``at``.
        A run that cannot finish even the current epoch is left as it is (it stops at the
        deadline)."""
        if self.deadline is None:
            return
        left = self.deadline - time.time() + into_epoch_s
        if self.world > 1:   # ranks plan from the slowest pace and the least time left: one plan for all
            import torch.distributed as dist
            both = torch.tensor([epoch_seconds, -left], dtype=torch.float64, device=self.device)
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            epoch_seconds, left = both[0].item(), -both[1].item()
        if epoch_seconds <= 0:
            return
        total = self.cfg.trainer.epochs
        cost = PACE_MARGIN * epoch_seconds + PACE_SLACK_S
        current = math.floor(at)
        end = min(total, current + math.floor(left / cost))
        if end <= current or end == self.end_epoch:
            return
        self.warp = (at, self.schedule_progress(at), float(end))
        self.end_epoch = end

    def _pace_probe(self, epoch: int, step: int, started: float, warm: float) -> None:
        """Early in a run's first epoch, before any epoch time is known: estimate it from the
        steps since ``warm`` (the first steps are slower) and fit the schedule to the deadline."""
        n_train, n_val = len(self.data.train_y), len(self.data.val_y)
        per_step = (time.perf_counter() - warm) / (step - PROBE_FROM)
        per_epoch = per_step * self.steps_per_epoch * (1 + EVAL_SHARE * n_val / max(n_train, 1))
        self.fit_to_deadline(epoch + step / self.steps_per_epoch, per_epoch,
                             into_epoch_s=time.perf_counter() - started)

    def train_epoch(self, epoch: int, probe: bool = False) -> Dict[str, float]:
        """One epoch; ``probe``: no epoch time is known yet, so estimate it from the first
        steps and fit the schedule to the deadline."""
        t = self.cfg.trainer
        started = warm = time.perf_counter()
        probe_at = max(PROBE_FROM + 3, self.steps_per_epoch // 20) \
            if probe and self.deadline is not None and self.steps_per_epoch > PROBE_FROM + 4 else -1
        n = len(self.data.train_y)
        perm = self._shard(torch.randperm(n, generator=self.generator))
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        tap, lrs = self.tap, {}
        tap.start_epoch()
        for i, (x, y) in enumerate(self.data.epoch(perm, self.rank_batch, self.steps_per_epoch)):
            late = self.deadline is not None and time.time() >= self.deadline
            if late and self.world == 1:
                return {"out_of_time": True}
            if i == PROBE_FROM:
                warm = time.perf_counter()
            elif i == probe_at:
                self._pace_probe(epoch, i, started, warm)
            progress = self.schedule_progress(epoch + i / self.steps_per_epoch)
            self.tuning.freeze(epoch + i / self.steps_per_epoch < self.cfg.model.freeze_epochs)
            lr = lr_at(t.schedule, progress, t.epochs, self.sched)
            loss, logits, y = self.train_step(x, y, lr, momentum_at(t.schedule, progress, t.epochs, self.sched))
            lrs[i + 1] = lr
            # no host sync here on a GPU: the losses are read a window later (trainables/loss_tap.py),
            # and the ranks of a data-parallel run agree on the deadline once a window (stopping
            # together, or their collectives would hang)
            ready, late = tap.push(loss, late)
            if late:
                return {"out_of_time": True}
            verdict = self._watch(ready, lrs)
            if verdict:
                return verdict
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        verdict = self._watch(tap.drain()[0], lrs)   # the epoch ran whole: only divergence matters now
        if verdict:
            return verdict
        if self.world > 1:
            import torch.distributed as dist
            tot = torch.stack([total_loss, correct.to(total_loss.dtype), torch.tensor(float(seen), device=self.device)])
            dist.all_reduce(tot)
            total_loss, correct, seen = tot[0], tot[1], tot[2].item()
        return {"train_loss": total_loss.item() / seen, "train_acc": correct.item() / seen, "lr": lr}

    def _watch(self, ready, lrs) -> Optional[Dict[str, float]]:
        """The divergence monitor over the losses now read, in step order: the verdict of the
        first step that diverged (its step number, LR and loss), or None."""
        for step, value in ready:
            reason = self.monitor.update(value)
            if reason:
                return {"diverged": True, "stop_reason": f"diverged: {reason}", "lr": lrs[step],
                        "train_loss": value, "steps": step}
        if ready:
            for step in [s for s in lrs if s <= ready[-1][0]]:
                del lrs[step]
        return None

    @property
    def rank_batch(self) -> int:
        return self.global_batch // self.world

    def _shard(self, perm: torch.Tensor) -> torch.Tensor:
        """This rank's samples of each global batch, in order: the run sees the same global
        batches as one process would."""
        if self.world == 1:
            return perm
        gb, rb = self.global_batch, self.rank_batch
        steps = self.steps_per_epoch
        return perm[:steps * gb].view(steps, self.world, rb)[:, self.rank].reshape(-1)

    @torch.inference_mode()
    def evaluate(self, split: str = "val") -> Dict[str, float]:
        """``split``: val, or test, which only a finalist's final model reads (tune_trainable.py)."""
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self.net.eval()
        n = len(self.data.val_y) if split == "val" else self.data.test_size
        for x, y in getattr(self.data, f"{split}_batches")(self.cfg.trainer.eval_batch_size):
            with self._autocast():
                logits = self.net(self._inputs(data_mod.centre_crop(x, self.tuning.eval_crop))).float()
            loss += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return {f"{split}_loss": loss.item() / max(n, 1), f"{split}_acc": correct.item() / max(n, 1)}

    @torch.inference_mode()
    def preview(self, count: int = 16) -> dict:
        """The first validation images, un-normalised to uint8, with predicted and true labels."""
        self.model.eval()
        x, y = self.data.val_sample(count)
        with self._autocast():
            pred = self.net(self._inputs(x)).float().argmax(1)
        mean = torch.tensor(self.data.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std, device=x.device).view(1, -1, 1, 1)
        images = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return {"images": images, "true": y.cpu().tolist(), "pred": pred.cpu().tolist(),
                "classes": list(self.data.classes)}

    def run(self) -> Iterator[Dict[str, float]]:
        """One dict per epoch. The last one has ``done`` and, if it diverged, ``diverged``."""
        t = self.cfg.trainer
        last_start = None   # when this run's previous epoch began
        try:
            while self.epoch < self.end_epoch:
                epoch = self.epoch
                start = time.perf_counter()
                if self.deadline_source is not None:   # the sweep may have moved it earlier
                    moved = self.deadline_source()
                    self.deadline = self.deadline if moved is None else moved
                if last_start is not None:   # the last epoch's whole cost, its report included
                    self.fit_to_deadline(epoch, start - last_start)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                train = self.train_epoch(epoch, probe=last_start is None)
                last_start = start
                if train.get("out_of_time"):   # the sweep's time budget: the epoch is abandoned
                    return
                if train.get("diverged"):
                    yield {"epoch": epoch + 1, **self._nan_metrics(), **train, "done": True}
                    return
                train_seconds = time.perf_counter() - start
                metrics = {"epoch": epoch + 1, **train, **self.evaluate()}
                momentum = current_momentum(self.optimizer)
                metrics["momentum"] = math.nan if momentum is None else momentum
                metrics["epoch_seconds"] = time.perf_counter() - start
                metrics["samples_per_second"] = len(self.data.train_y) / max(train_seconds, 1e-9)
                metrics["step_ms"] = 1000 * train_seconds / self.steps_per_epoch
                if self.device.type == "cuda":
                    metrics["gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
                metrics["diverged"] = False
                if getattr(self.data, "met_unreadable", None):   # streamed: named by the sweep's driver
                    metrics["unreadable"] = sorted(self.data.met_unreadable.items())
                metrics["done"] = epoch + 1 >= self.end_epoch
                if self.end_epoch < t.epochs:   # fitted to the deadline: the sweep's writer says so
                    metrics["schedule_epochs"] = self.end_epoch
                if t.preview_every and ((epoch + 1) % t.preview_every == 0 or metrics["done"]):
                    metrics["preview"] = self.preview()
                self.epoch = epoch + 1
                yield metrics
        finally:
            self.close()

    # --- checkpoints: plain state dicts; the Tune wrapper turns them into Ray checkpoints -------
    def state_dict(self) -> dict:
        """Everything a run needs to continue exactly: weights, optimizer, the position in the
        schedule (epochs done), the RNG states and the divergence monitor."""
        model = self.net
        state = {"epoch": self.epoch, "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "monitor": dict(vars(self.monitor)), "end_epoch": self.end_epoch,
                 "warp": list(self.warp) if self.warp else [],
                 "arch": {"name": self.cfg.model.name, "depth": getattr(model, "depth", None),
                          "shape": list(self.data.shape), "classes": list(self.data.classes)}}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        vars(self.monitor).update(state["monitor"])
        self.epoch = int(state["epoch"])
        self.end_epoch = int(state.get("end_epoch", self.cfg.trainer.epochs))
        self.warp = tuple(float(v) for v in state["warp"]) if state.get("warp") else None

    @staticmethod
    def _nan_metrics() -> Dict[str, float]:
        return {k: math.nan for k in ("train_loss", "train_acc", "val_loss", "val_acc", "momentum")}

    def close(self) -> None:
        """Free the device memory a trial holds: ASHA-stopped trials can otherwise keep it
        (ray#23971) in a reused worker."""
        self.model = self.net = self.optimizer = None
        self.tuning.head_params = self.tuning.body_params = self.tuning.frozen_bn = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
