"""How smith's first seconds overlap: the range test (and then the pilot) trains in this process
while Ray starts beside it, at a lower priority; on a cluster the range test runs as a task where
the trials run. Each path hands stage 2 a ``Stage1`` result."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator import lr_find
from tunesmith.orchestrator.smith.policy import PILOT_S, Stage2Plan, pilot_too_slow
from tunesmith.orchestrator.spec import SweepSpec

WARM_WAIT_S = 30.0   # the most Ray's start waits for the range test's imports
TITLE = "{}: LR range test"


@dataclass
class Stage1:
    """What stage 1 hands stage 2."""
    decision: Any                 # lr_find.LRDecision
    ended_s: float                # seconds from the command's start: no stage-2 trial starts sooner
    node: str                     # "driver", or the node the task ran on
    plan: Stage2Plan
    no_pilot: Optional[str]       # why no pilot trains, or None
    pilot: Any = None             # orchestrator.pilot.Pilot


def range_test(train, start, end, steps, mode, val_loss, pick, cap, gpus, say=print):
    return lr_find.decide(train, start, end, steps, mode, val_loss, pick, time_cap=cap, say=say,
                          default=lr_find.SMITH_PICK, num_gpus=gpus)


def _range_test_task(*stage1_args):
    """Stage 1 as a Ray task: the decision, the lines the test said, and the node it ran on."""
    import ray
    lines: List[str] = []
    decision = range_test(*stage1_args, say=lines.append)
    return decision, lines, ray.util.get_node_ip_address()


def on_cluster(spec: SweepSpec, stage1_args, plan: Callable[[Any, bool], Stage2Plan], started: float,
               no_pilot: Optional[str]) -> Stage1:
    """On a cluster the range test runs where trials run, as a task holding one trial's
    resources (all of a data-parallel trial's GPUs, which it then trains on as one batch): it
    reads the data on that node and measures the device the trials train on."""
    import ray
    res = spec.resources
    task = ray.remote(_range_test_task).options(num_cpus=res.cpus, num_gpus=res.gpus,
                                                name="tunesmith:range-test", max_retries=0)
    try:
        decision, lines, node = ray.get(task.remote(*stage1_args))
    except ray.exceptions.RayTaskError as exc:   # bad input found there (a data path) is still bad input
        raise exc.cause if isinstance(exc.cause, Exception) else exc
    for line in lines:
        print(line, flush=True)
    return Stage1(decision, round(time.time() - started, 2), node, plan(decision, False), no_pilot)


def _in_memory(spec: SweepSpec) -> bool:
    from tunesmith.orchestrator.data_share import plan
    return plan(spec.train.dataset, local=True)[0]


def _pilot(spec: SweepSpec, s2: SweepSpec, storage: Storage, deadline: Optional[float]):
    """Stage 2's centre as a trial in this process, its 1cycle fitted to end PILOT_S from now:
    the time Ray's start-up and Tune's first trials leave the cores idle, so that the pilot costs
    Tune's trials nothing. Untimed, it ran its full length unpruned and held a slot that long:
    on the quality benchmark smith lost 1 pp on glyphs and 6.5 pp on shapes (one seed)."""
    from tunesmith.orchestrator.pilot import Pilot
    from tunesmith.search_spaces.space import centre
    ends = time.time() + PILOT_S if deadline is None else min(deadline, time.time() + PILOT_S)
    return Pilot(s2.trial_config(), centre(s2.plan.space, s2.plan.coupling), storage, s2.name,
                 spec.resources.cpus, ends, s2.checkpoints.every)


def _warm_up() -> None:
    """What the range test's first trainer imports, imported first: torch (by tensorboardX's
    background import), and torch._dynamo, which torch.optim imports when the first optimizer
    is built and at its first step (about 2 s of CPU here, holding the GIL throughout)."""
    from tunesmith.orchestrator.tb_events import ready
    ready()   # torch, from one thread at a time
    import torch._dynamo  # noqa: F401


class LocalStage1:
    """Stage 1 on this machine, in a thread started before Ray: the imports (``warm`` is set once
    torch is in), the range test, stage 2's plan, and the pilot, which then trains in the same
    thread while Ray starts the trials' workers."""

    def __init__(self, spec: SweepSpec, stage1_args, plan: Callable[[Any, bool], Stage2Plan],
                 no_pilot: Optional[str], storage: Storage, deadline: Optional[float], started: float):
        self.spec, self.args, self.plan = spec, stage1_args, plan
        self.no_pilot, self.storage, self.deadline, self.started = no_pilot, storage, deadline, started
        self.warm, self.decided = threading.Event(), threading.Event()
        self.result: Optional[Stage1] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="tunesmith-stage1", daemon=True)

    def start(self) -> "LocalStage1":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            _warm_up()
            self.warm.set()
            decision = range_test(*self.args, say=print)
            ended = round(time.time() - self.started, 2)
            no_pilot = self.no_pilot
            if no_pilot is None and not _in_memory(self.spec):
                no_pilot = "the data streams from disk: the driver does not load it"
            if no_pilot is None:
                no_pilot = pilot_too_slow(decision.curve)
            plan = self.plan(decision, no_pilot is None)
            pilot = None if no_pilot is not None else _pilot(self.spec, plan.spec, self.storage, self.deadline)
            self.result = Stage1(decision, ended, "driver", plan, no_pilot, pilot)
        except BaseException as exc:   # noqa: BLE001 - re-raised in the main thread by wait()
            self.error = exc
        finally:
            self.warm.set()
            self.decided.set()
        if self.result is not None and self.result.pilot is not None:
            self.result.pilot.run()   # stage 2's first trial, while Ray starts its workers

    def wait(self) -> Stage1:
        self.decided.wait()
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self, wait: Optional[float] = None) -> None:
        """The pilot never trains past the command (Ctrl-C, an error). ``wait``: the most seconds
        to wait for the thread; an interrupted command does not wait out a range test (the
        thread is a daemon: it ends with the process)."""
        if self.result is not None and self.result.pilot is not None:
            self.result.pilot.stop()
        self._thread.join(wait)


class PlotWriter:
    """The range test's plot, a second of CPU and the GIL, drawn once the pilot is done: stage 2
    starts meanwhile. ``join`` re-raises what drawing it raised."""

    def __init__(self, decision, storage: Storage, name: str, pilot):
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(decision, storage, name, pilot), daemon=True)
        self._thread.start()

    def _run(self, decision, storage: Storage, name: str, pilot) -> None:
        try:
            if pilot is not None:
                pilot.ended.wait()
            lr_find.write_plot(decision, storage, name, TITLE.format(name))
        except BaseException as exc:   # noqa: BLE001 - re-raised before the report is written
            self.error = exc

    def join(self, check: bool = True) -> None:
        self._thread.join()
        if check and self.error is not None:
            raise self.error


def connect_below(args, after: Optional[threading.Event] = None):
    """(ClusterInfo, an Event to set once Ray is shut down, or None). Starting Ray on this
    machine, smith starts it from a thread of lower priority, which the processes Ray starts
    inherit (Linux keeps a priority per thread): Ray's start-up and then the trials' workers take
    the CPU time that the range test and the pilot leave. The thread lives until Ray is shut down:
    Ray's processes die with the thread that started them. The driver's own threads keep the
    normal priority (one holding the GIL at a low priority would stall the pilot). With ``after``,
    Ray's start (its import and ray.init, seconds of Python holding the GIL) waits until that
    event is set, or WARM_WAIT_S: until the range test has imported torch, so that the two do not
    take turns at the GIL; the range test's steps leave it free most of the time."""
    from tunesmith.cluster.connect import connect
    ray = sys.modules.get("ray")   # not imported yet: not started either
    options = (args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
    if args.address or not sys.platform.startswith("linux") or (ray is not None and ray.is_initialized()):
        return connect(*options), None
    out: Dict[str, Any] = {}
    started, release = threading.Event(), threading.Event()

    def start():
        try:
            if after is not None:
                after.wait(WARM_WAIT_S)
            tid = threading.get_native_id()
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
            except OSError:   # not allowed here: Ray starts beside the range test, as it would anyway
                pass
            out["cluster"] = connect(*options)
        except BaseException as exc:   # noqa: BLE001 - re-raised in the calling thread
            out["error"] = exc
        finally:
            started.set()
        release.wait()
    quiet = _DropLine("SIGTERM handler is not set")   # set here instead, in the main thread
    logging.getLogger("ray._private.worker").addFilter(quiet)
    threading.Thread(target=start, name="tunesmith-ray-start", daemon=True).start()
    try:
        started.wait()
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if "error" in out:
        raise out["error"]
    from tunesmith.cluster.connect import terminate_as_interrupt
    terminate_as_interrupt()   # as `run` has it: SIGTERM is the first Ctrl-C
    return out["cluster"], release


class _DropLine:
    """A logging filter that drops the records starting with ``text``."""

    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.text)
