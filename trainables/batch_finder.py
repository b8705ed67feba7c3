"""The largest batch that fits (Smith 2018, sec. 4.2: use as large a batch as memory allows;
the global batch is then that per-GPU batch times the GPUs a trial holds).

On a GPU: double ``per_gpu_batch_size`` until a training step runs out of memory, binary-search
between the last success and the failure, then keep a safety margin; memory is released after
every attempt. On CPU, where running out of memory means swapping or the OOM killer rather than
an exception, the batch is capped by a memory budget instead, from a measured per-sample cost.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple


class BatchFinderError(ValueError):
    pass


@dataclass
class BatchSearch:
    per_gpu_batch_size: int       # what to use: the largest fit times the margin
    largest_fit: int              # the largest batch that ran
    tried: List[Tuple[int, bool]] = field(default_factory=list)
    limit: str = ""               # what stopped the search


def search(fits: Callable[[int], bool], start: int = 16, max_batch: Optional[int] = None,
           margin: float = 0.9, multiple: int = 8) -> BatchSearch:
    """Power-then-binary search over batch sizes with an injected ``fits(batch) -> bool``."""
    tried: List[Tuple[int, bool]] = []

    def attempt(bs: int) -> bool:
        ok = fits(bs)
        tried.append((bs, ok))
        return ok

    bs = max(1, min(start, max_batch or start))
    while not attempt(bs):          # the start does not fit: halve down
        if bs == 1:
            raise BatchFinderError("not even a batch of 1 fits in memory")
        bs //= 2
    good, bad = bs, None
    while bad is None:
        nxt = good * 2
        if max_batch is not None and nxt >= max_batch:
            if max_batch > good and attempt(max_batch):
                good = max_batch
                break
            bad = max_batch if max_batch > good else None
            if bad is None:
                break
        elif attempt(nxt):
            good = nxt
        else:
            bad = nxt
    limit = "the training set's size" if bad is None or (max_batch is not None and good == max_batch) else "memory"
    if bad is not None:
        while bad - good > max(1, good // 32):   # to within ~3%: finer steps cost attempts, not memory
            mid = (good + bad) // 2
            if attempt(mid):
                good = mid
            else:
                bad = mid
    use = good
    if limit == "memory":
        use = max(1, int(good * margin))
        if use >= multiple:
            use -= use % multiple   # multiples of 8 suit tensor cores
    return BatchSearch(use, good, tried, limit)


def _step_fn(cfg, device):
    """One real training step at a given batch size, on random inputs of the dataset's shape."""
    import torch
    from tunesmith.trainables.data import load
    from tunesmith.trainables.models import build_model
    from tunesmith.trainables.optimizers import build_optimizer
    data = load(cfg.dataset, "cpu")
    model = build_model(cfg.model, data.shape, data.num_classes).to(device)
    opt = build_optimizer(model, cfg.trainer, cfg.trainer.lr)
    bf16 = device.type == "cuda" and cfg.trainer.precision in ("auto", "bf16")

    def step(bs: int) -> None:
        x = torch.randn(bs, *data.shape, device=device)
        y = torch.randint(0, data.num_classes, (bs,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return model, opt, data, step


def gpu_fits(cfg, device=None) -> Tuple[Callable[[int], bool], int]:
    import torch
    device = torch.device(device or "cuda")
    model, opt, data, step = _step_fn(cfg, device)

    def fits(bs: int) -> bool:
        try:
            step(bs)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:   # release between attempts: a failed attempt's tensors must not crowd the next
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
    return fits, len(data.train_y)


def cpu_per_sample_bytes(cfg) -> Tuple[int, int, int]:
    """(fixed bytes, bytes per sample, training-set size): parameters, gradients and optimizer
    state, plus every module's activations for one sample, kept for the backward pass."""
    import torch
    model, opt, data, step = _step_fn(cfg, torch.device("cpu"))
    step(2)   # materialises the optimizer state
    fixed = sum(p.numel() * p.element_size() for p in model.parameters()) * 2
    fixed += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor))
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel() * o.element_size()
                                                                 if isinstance(o, torch.Tensor) else 0))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, *data.shape))
    for h in hooks:
        h.remove()
    per_sample = 2 * sum(acts) + 4 * math.prod(data.shape)   # activations and their gradients, the input
    return fixed, per_sample, len(data.train_y)


def find(cfg, memory_budget_bytes: Optional[int] = None, margin: float = 0.9, start: int = 16,
         max_batch: Optional[int] = None) -> BatchSearch:
    """The largest per-GPU batch for this config where this runs: a GPU if there is one."""
    import torch
    if torch.cuda.is_available():
        fits, n = gpu_fits(cfg)
        return search(fits, start, min(max_batch or n, n), margin)
    fixed, per_sample, n = cpu_per_sample_bytes(cfg)
    from tunesmith.trainables.folder import available_memory
    budget = memory_budget_bytes or available_memory() // 4   # leave room for the rest of the sweep
    return search(lambda bs: fixed + bs * per_sample <= budget, start, min(max_batch or n, n), margin)


def find_for(train_config: dict, margin: float = 0.9) -> dict:
    """Entry point for a Ray task on the trials' own kind of node and device."""
    from tunesmith.trainables.config import TrainConfig
    r = find(TrainConfig.from_dict(train_config), margin=margin)
    return {"per_gpu_batch_size": r.per_gpu_batch_size, "largest_fit": r.largest_fit, "limit": r.limit,
            "tried": r.tried}
