"""The ``tunesmith`` command: a table of subcommands, and ``main(argv) -> int``.

Exit codes: 0 success, 1 the sweep failed, 2 bad input (a one-line error naming the field
and the value; nothing is started or written), 130 interrupted, 141 the output's reader went
away (``| head``).
"""
from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import warnings
from typing import Dict, List, Optional

from tunesmith.orchestrator import arguments
from tunesmith.trainables.config import ConfigError


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2, instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


def load_spec(args):
    from tunesmith.orchestrator import spec as spec_mod
    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"name={args.name}")
    if args.results_dir:
        overrides.append(f"results_dir={args.results_dir}")
    if getattr(args, "mlflow", None):
        overrides.append(f"tracking.mlflow.uri={args.mlflow}")
    if getattr(args, "num_samples", None) is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    return spec_mod.load(args.spec, overrides)


def _local_checks(spec, args) -> None:
    """Checks that read the driver's disk hold only when the trials run here too; and a tracking
    server that does not answer is bad input, before anything is written."""
    if spec.mlflow.uri:
        from tunesmith.orchestrator.sinks.mlflow import connect
        connect(spec.mlflow.uri, spec.mlflow.experiment)
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator.sweep import check_fresh
    from tunesmith.orchestrator.catalogue import check_inputs
    check_inputs(spec, local=not args.address)
    check_fresh(Storage(spec.results_dir), spec.name, claim=True)


def cmd_run(args) -> int:
    import time
    started = time.time()   # time_budget_s counts from here, as smith's does
    spec = load_spec(args)
    _local_checks(spec, args)
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator.tb_events import preload
    from tunesmith.orchestrator.sweep import best_table, budget_problem, concurrency_for, run_sweep
    preload()
    cluster = None
    try:
        cluster = connect(args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
        concurrency_for(spec, cluster)   # a trial that cannot fit is bad input, before anything is written
        if args.address:
            from tunesmith.cluster.storage_check import check_every_node
            check_every_node(spec.results_dir)
        outcome = run_sweep(spec, cluster, command="run", started=started)
    finally:
        if cluster is not None:
            disconnect(cluster)
    from tunesmith.orchestrator.confirm import summary
    print(f"\n{best_table(outcome)}\n\n{summary(outcome)}")
    counts = outcome.ledger.status_counts()
    print(f"\n{len(outcome.ledger.trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) "
          f"in {outcome.wall_seconds:.1f}s")
    print(f"results: {outcome.path}")
    print(f"  tensorboard --logdir {shlex.quote(outcome.storage.uri(spec.name, 'tensorboard'))}")
    if outcome.failure:
        return _storage_failed(outcome.failure, outcome.path)
    if outcome.interrupted:
        return 130
    why = budget_problem(outcome)
    if why:
        print(f"tunesmith: {why}", file=sys.stderr)
    return 0 if outcome.ledger.top(1) else 1


def cmd_resume(args) -> int:
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator import resume
    from tunesmith.orchestrator.tb_events import preload
    storage, name, spec, man = resume.load(args.sweep_dir, trust=args.trust)
    preload()
    cluster = None
    try:
        cluster = connect(args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
        out = resume.run(args.sweep_dir, cluster, spec, storage, name, man)
    finally:
        if cluster is not None:
            disconnect(cluster)
    print(f"resumed {name}: {out['restored']} trial{' was' if out['restored'] == 1 else 's were'} recorded, "
          f"{out['total']} now; "
          + ", ".join(f"{n} {s}" for s, n in sorted(out["trials"].items())))
    print(f"results: {out['path']}")
    if out.get("failure"):
        return _storage_failed(out["failure"], out["path"])
    return 130 if out.get("interrupted") else 0


def _storage_failed(failure: str, path: str) -> int:
    print(f"tunesmith: the sweep stopped: {failure}; what was written stays readable; once there is room, "
          f"`tunesmith resume {shlex.quote(path)}` continues it", file=sys.stderr)
    return 1


def _smith_options(args) -> List[str]:
    """The smith options given on this command line, as smith's own command line takes them."""
    p = argparse.ArgumentParser(add_help=False)
    arguments.smith_args(p)
    argv: List[str] = []
    for dest, default in vars(p.parse_args([])).items():
        value = getattr(args, dest)
        if value == default:
            continue
        flag = "--" + dest.replace("_", "-")
        argv += [flag] if value is True else [flag, *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return argv


def cmd_submit(args) -> int:
    from tunesmith.cluster import submit
    spec = load_spec(args)   # validated here, before anything reaches the cluster
    options = _smith_options(args)
    if args.smith:
        _at_least_one(args, "short_epochs", "samples")
        from tunesmith.orchestrator import smith
        smith.check(spec, args)   # smith's options are bad input here, not in the job's log
    elif options:
        raise ConfigError(options[0], " ".join(options[1:2]) or "given", "a smith option: submit smith with --smith")
    return submit.submit(spec, args.address, wait=not args.no_wait, command="smith" if args.smith else "run",
                         options=options)


def cmd_jobs(args) -> int:
    from tunesmith.cluster import submit
    return submit.jobs(args.action, args.job_id, args.address)


def cmd_validate(args) -> int:
    spec = load_spec(args)
    from tunesmith.orchestrator.catalogue import check_models
    check_models(spec)
    from tunesmith.orchestrator.spec import plan_text
    print(f"{args.spec}: valid; sweep {spec.name!r}, {plan_text(spec)}")
    return 0


def _at_least_one(args, *names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError("--" + name.replace("_", "-"), value, "must be >= 1")


def cmd_analyze(args) -> int:
    _at_least_one(args, "top", "confirm")
    if args.confirm:
        from tunesmith.orchestrator.confirm_again import confirm_sweep
        return confirm_sweep(args.results, args.confirm, arguments.confirm_seeds(args.seeds), args.address)
    from tunesmith.orchestrator import analyze
    from tunesmith.cluster.storage import is_uri
    plots = None
    if not args.no_plots:
        plots = args.plots or ("tunesmith-analysis" if is_uri(args.results) else
                               os.path.join(args.results, "_analysis"))
    html = None
    if args.html:
        html = os.path.abspath(args.html)
        if not os.path.isdir(os.path.dirname(html)):
            raise ConfigError("--html", args.html, "its folder does not exist")
    page = None
    if html:
        from tunesmith.orchestrator import page as page_mod
        page = functools.partial(page_mod.write, html, top=args.top)
    sys.stdout.write(analyze.run(args.results, args.sweep, args.format, args.top, plots, page))
    if html:
        print(f"page: {html}")
    if args.mlflow:
        from tunesmith.orchestrator.sinks.mlflow import connect, log_files
        connect(args.mlflow, args.mlflow_experiment)
        for sw in analyze.load(args.results, args.sweep):
            pngs = analyze.plot([sw], plots, min(args.top, 10)) if plots else []
            files = {f"analysis/{os.path.basename(p)}": open(p, "rb").read() for p in pngs}
            if html:
                files[f"analysis/{os.path.basename(html)}"] = open(html, "rb").read()
            log_files(args.mlflow, args.mlflow_experiment, sw.name, files)
        print(f"plots logged to MLflow at {args.mlflow}")
    return 0


def cmd_lr_find(args) -> int:
    from tunesmith.orchestrator import catalogue, lr_find
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator.sweep import check_fresh
    spec = load_spec(args)
    catalogue.check_inputs(spec)
    storage = Storage(spec.results_dir)
    check_fresh(storage, spec.name, claim=True)
    if spec.mlflow.uri:
        from tunesmith.orchestrator.sinks.mlflow import connect
        connect(spec.mlflow.uri, spec.mlflow.experiment)
    cfg, gpus = lr_find.as_one_trial(spec)
    decision = lr_find.decide(cfg, args.start, args.end, args.steps, "linear" if args.linear else "exp",
                             args.val_loss, args.pick, time_cap=args.max_seconds, say=print, num_gpus=gpus)
    paths = lr_find.write(decision, storage, spec.name, f"{spec.name}: LR range test")
    if spec.mlflow.uri:
        from tunesmith.orchestrator.sinks.mlflow import log_files
        log_files(spec.mlflow.uri, spec.mlflow.experiment, spec.name,
                  {f"lr_find/{rel}": storage.read_bytes(f"{spec.name}/lr_find/{rel}")
                   for rel in ("curve.parquet", "lr_find.png", "decision.json")})
    print(lr_find.summary_text(decision))
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    print(f"tensorboard --logdir {shlex.quote(storage.uri(spec.name, 'tensorboard'))}")   # a line to paste
    return 0 if decision.informative else 1


def cmd_smith(args) -> int:
    import time
    started = time.time()
    _at_least_one(args, "short_epochs", "samples")
    spec = load_spec(args)
    _local_checks(spec, args)
    from tunesmith.orchestrator import smith
    from tunesmith.orchestrator.tb_events import preload
    preload()
    try:
        out = smith.run(spec, args, started)
    except smith.NoResult as exc:
        print(f"tunesmith: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C or SIGTERM once stage 2's sweep runs stops it cleanly, and the report is written: still 130
    return 130 if any(r.get("interrupted") for r in out.get("stage2_runs", ())) else 0


COMMANDS: Dict[str, tuple] = {
    "run": (cmd_run, "run a sweep", [arguments.spec_args, arguments.cluster_args,
                                     lambda p: p.add_argument("--num-samples", type=int,
                                                              help="override search.num_samples")]),
    "validate": (cmd_validate, "check a spec and print what it would run", [arguments.spec_args]),
    "lr-find": (cmd_lr_find, "LR range test: curve, suggestions and the LR band", [arguments.spec_args, arguments.lr_find_args]),
    "smith": (cmd_smith, "Smith's staged sweep: range test, short ASHA sweep in the band, optional final run",
              [arguments.spec_args, arguments.cluster_args, arguments.smith_args]),
    "resume": (cmd_resume, "continue a sweep whose driver died, from its checkpoints",
               [lambda p: p.add_argument("sweep_dir", help="RESULTS/SWEEP: a sweep folder tunesmith wrote"),
                lambda p: p.add_argument("--trust", action="store_true",
                                         help="resume even when Tune's state belongs to another user or others can write it"),
                arguments.cluster_args]),
    "submit": (cmd_submit, "submit a sweep to a Ray cluster as a job (Jobs API)",
               [arguments.spec_args,
                lambda p: p.add_argument("--address", help="the head's job server, http://HEAD:8265"),
                lambda p: p.add_argument("--no-wait", action="store_true", help="print the job id and return"),
                lambda p: p.add_argument("--smith", action="store_true",
                                         help="submit `tunesmith smith` (with the smith options below) instead of `run`"),
                arguments.smith_args]),
    "jobs": (cmd_jobs, "list, inspect, follow or stop submitted sweeps",
             [lambda p: p.add_argument("action", choices=("list", "status", "logs", "stop")),
              lambda p: p.add_argument("job_id", nargs="?"),
              lambda p: p.add_argument("--address", help="the head's job server, http://HEAD:8265")]),
    "schema": (arguments.cmd_schema, "print the spec's JSON Schema (for editors' YAML language servers)",
               [lambda p: p.add_argument("-o", "--output", help="write it to this file instead")]),
    "spaces": (arguments.cmd_spaces, "list the search-space presets (Smith's ranges)", []),
    "models": (arguments.cmd_models, "list the models a spec can name (built-in, timm:, torchvision:), with "
               "parameter counts", [arguments.models_args]),
    "analyze": (cmd_analyze, "summarise sweeps from their Parquet results", [arguments.analyze_args]),
}


def version_text() -> str:
    """tunesmith's version and those of the two libraries it runs on, from the installed
    packages' metadata (nothing is imported: `--version` answers at once)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    return f"tunesmith {of('tunesmith')} (ray {of('ray')}, torch {of('torch')})"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunesmith", description="Hyperparameter sweeps for CNN image classifiers on Ray Tune.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (func, helptext, adders) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        for add in adders:
            add(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from tunesmith.cluster.connect import prepare_environment, terminate_as_interrupt
    prepare_environment()   # before anything imports Ray: it reads these variables once
    terminate_as_interrupt()
    # requests probes urllib3's optional SOCKS support on import and, without PySocks, warns on
    # stderr; whether the warning shows depends on which thread imports requests first (Ray's
    # and the TensorBoard preload's), and it would break the one-line error of bad input.
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3 requires")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            return args.func(args)
        finally:
            from tunesmith.cluster.storage import release_claims
            release_claims()
    except (ConfigError, UsageError) as exc:
        print(f"tunesmith: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:   # the storage refused a write mid-command (a disk that filled): one line
        from tunesmith.cluster.storage import refused
        why = refused(exc)
        if not why:
            raise
        print(f"tunesmith: error: could not write {exc.filename or 'the results'}: {why}; every file written before "
              "reads whole", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script (and ``python -m tunesmith.orchestrator``): ``main()``; then, as at any
    exit, the other threads are joined and atexit's handlers run (Ray's shutdown among them);
    the streams are flushed, and the process ends without the interpreter's teardown of torch's
    and Ray's native modules: 1 to 2 s of nothing at the end of every command here, and part of
    a time budget's overrun. An exception still ends the process the ordinary way."""
    import atexit
    import threading
    try:
        code = main()
    except BrokenPipeError:
        code = _reader_gone()
    threading._shutdown()     # what the interpreter does first at exit: joins non-daemon threads
    atexit._run_exitfuncs()   # then this
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    sys.stderr.flush()
    os._exit(code)


def _reader_gone() -> int:
    """Whatever read the output went away (`tunesmith spaces | head`): end quietly, with the
    exit code of a command that SIGPIPE ended, not with a traceback."""
    import signal
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())   # what is still buffered goes nowhere
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    entry()
