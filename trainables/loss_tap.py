"""The step losses on their way to the host, without a host sync per step.

On a GPU, ``loss.item()`` after every step makes the host wait for the step to finish: the
launch queue drains, and for a small CNN at 32 px the wait costs more than the step. Here the
losses stay on the device in a window of ``every`` steps; at the window's end they are averaged
over the ranks of a data-parallel run (one collective per window, not per step), then copied into
pinned host memory without blocking, and read one window later, by when the copy is long done.
So a divergence is seen at most ``2 * every`` steps after the step that showed it, and the ranks
agree on it, and on the deadline, at the same step.

On the CPU every step is its own window and is read at once (``every = 1``): the behaviour is
that of a per-step ``.item()`` (and, across ranks, a per-step all-reduce), which costs nothing
there.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

GPU_EVERY = 16   # steps per window on a GPU: one host read per 16 steps; divergence seen <= 32 steps late


def default_every(device: torch.device) -> int:
    return GPU_EVERY if device.type == "cuda" else 1


class LossTap:
    """``push(loss, late)`` after each step returns the (step, loss) pairs now readable, in step
    order, and whether any rank has passed the deadline as of those steps; ``drain()`` at an
    epoch's end returns the rest (one sync per epoch)."""

    def __init__(self, device: torch.device, every: int = 1, world: int = 1):
        self.device, self.every, self.world = device, max(1, int(every)), world
        self.async_copy = device.type == "cuda"
        self._window = torch.zeros(self.every + 1, device=device, dtype=torch.float32)   # losses, then the late flag
        self._count = 0          # steps in the open window
        self._first = 0          # the step number of its first loss
        self._pending: Optional[Tuple[torch.Tensor, object, int, int]] = None   # (host copy, event, count, first)
        self.step = 0            # steps pushed this epoch

    def start_epoch(self) -> None:
        self._count, self._first, self.step, self._pending = 0, 0, 0, None

    def push(self, loss: torch.Tensor, late: bool) -> Tuple[List[Tuple[int, float]], bool]:
        if self.every == 1:   # read at once, as a per-step item() (the CPU default; on a GPU, a sync per step)
            self.step += 1
            if self.world == 1:
                return [(self.step, loss.item())], False
            import torch.distributed as dist
            both = torch.stack([loss.detach().float(), torch.tensor(float(late), device=loss.device)])
            dist.all_reduce(both)
            return [(self.step, both[0].item() / self.world)], both[1].item() > 0
        self._window[self._count] = loss.detach().float()
        if late:
            self._window[self.every] = 1.0
        self._count += 1
        self.step += 1
        if self._count < self.every:
            return [], False
        return self._close_window()

    def _close_window(self) -> Tuple[List[Tuple[int, float]], bool]:
        window = self._window
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(window)   # one collective per window: the ranks' mean loss, any rank late
        ready = self._read()
        if self.async_copy:
            host = torch.empty(window.shape, dtype=window.dtype, pin_memory=True)
            host.copy_(window, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = window.clone(), None
        self._pending = (host, event, self._count, self._first)
        self._first += self._count
        self._count = 0
        self._window = torch.zeros_like(window)
        return ready

    def _read(self) -> Tuple[List[Tuple[int, float]], bool]:
        """The window closed before this one: copied a whole window ago."""
        if self._pending is None:
            return [], False
        host, event, count, first = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()   # done long since: a window of steps ran after the copy
        values = host.tolist()
        scale = self.world if self.world > 1 else 1
        return [(first + j + 1, values[j] / scale) for j in range(count)], values[self.every] > 0

    def drain(self) -> Tuple[List[Tuple[int, float]], bool]:
        """The epoch is over: every loss not yet read."""
        ready, late = self._read()
        if self._count:
            more, late_more = self._close_window()   # a partial window (every rank has the same count)
            ready, late = ready + more, late or late_more
        rest, late_rest = self._read()
        return ready + rest, late or late_rest
