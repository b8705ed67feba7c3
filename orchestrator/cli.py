"""The ``tunesmith`` command: a table of subcommands, and ``main(argv) -> int``.

Exit codes: 0 success, 1 the sweep failed, 2 bad input (a one-line error naming the field
and the value; nothing is started or written), 130 interrupted, 141 the output's reader went
away (``| head``).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from typing import Dict, List, Optional

from tunesmith.trainables.config import ConfigError


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2, instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set trainer.lr=0.1 (repeatable)")
    p.add_argument("--name", help="sweep name (default: the spec's name or file name)")
    p.add_argument("--results-dir", help="results location: a path or a URI such as s3://bucket/sweeps")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join this Ray cluster (e.g. auto or HEAD:6379) instead of starting "
                                     "a private local instance bound to 127.0.0.1")
    p.add_argument("--mlflow", metavar="URI", help="also track in MLflow at this tracking URI "
                                                  "(tracking.mlflow in the spec)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local instance (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs for the local instance (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1")
    p.add_argument("--worker-logs", action="store_true", help="show the trials' own output")


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
    from tunesmith.trainables.data_check import check_dataset_files
    if not args.address:
        check_dataset_files(spec.train.dataset)
    check_fresh(Storage(spec.results_dir), spec.name)


def cmd_run(args) -> int:
    import time
    started = time.time()   # time_budget_s counts from here, as smith's does
    spec = load_spec(args)
    _local_checks(spec, args)
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator.tb_events import preload
    from tunesmith.orchestrator.sweep import best_table, budget_problem, concurrency_for, run_sweep
    preload()
    cluster = connect(args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
    try:
        concurrency_for(spec, cluster)   # a trial that cannot fit is bad input, before anything is written
        if args.address:
            from tunesmith.cluster.storage_check import check_every_node
            check_every_node(spec.results_dir)
        outcome = run_sweep(spec, cluster, command="run", started=started)
    finally:
        disconnect(cluster)
    print()
    print(best_table(outcome))
    counts = outcome.ledger.status_counts()
    print(f"\n{len(outcome.ledger.trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) "
          f"in {outcome.wall_seconds:.1f}s")
    print(f"results: {outcome.path}")
    print(f"  tensorboard --logdir {outcome.storage.uri(spec.name, 'tensorboard')}")
    if outcome.interrupted:
        return 130
    why = budget_problem(outcome)
    if why:
        print(f"tunesmith: {why}", file=sys.stderr)
    return 0 if outcome.ledger.ranked() else 1


def cmd_resume(args) -> int:
    from tunesmith.cluster.connect import connect, disconnect
    from tunesmith.orchestrator import resume
    from tunesmith.orchestrator.tb_events import preload
    storage, name, spec, man = resume.load(args.sweep_dir)
    preload()
    cluster = connect(args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
    try:
        out = resume.run(args.sweep_dir, cluster, spec, storage, name, man)
    finally:
        disconnect(cluster)
    print(f"resumed {name}: {out['restored']} trials were recorded, {out['total']} now; "
          + ", ".join(f"{n} {s}" for s, n in sorted(out["trials"].items())))
    print(f"results: {out['path']}")
    return 0


def _smith_options(args) -> List[str]:
    """The smith options given on this command line, as smith's own command line takes them."""
    p = argparse.ArgumentParser(add_help=False)
    _add_smith_args(p)
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
    from tunesmith.orchestrator.spec import plan_text
    print(f"{args.spec}: valid; sweep {spec.name!r}, {plan_text(spec)}")
    return 0


def _at_least_one(args, *names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError("--" + name.replace("_", "-"), value, "must be >= 1")


def cmd_analyze(args) -> int:
    _at_least_one(args, "top")
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
        print(f"report: {html}")
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
    from tunesmith.orchestrator import lr_find
    from tunesmith.cluster.storage import Storage
    from tunesmith.orchestrator.sweep import check_fresh
    from tunesmith.trainables.data_check import check_dataset_files
    spec = load_spec(args)
    check_dataset_files(spec.train.dataset)
    storage = Storage(spec.results_dir)
    check_fresh(storage, spec.name)
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
    print(f"tensorboard --logdir {storage.uri(spec.name, 'tensorboard')}")
    return 0 if decision.informative else 1


def _add_lr_find_args(p: argparse.ArgumentParser, default_pick: Optional[str] = None) -> None:
    p.add_argument("--start", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--steps", type=int, default=None,
                   help="mini-batches (default: one epoch or 300, whichever is larger, within --max-seconds; "
                        "extended when the curve does not fall)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap of a default-length test (default 60)")
    p.add_argument("--linear", action="store_true", help="raise the LR linearly instead of exponentially")
    p.add_argument("--val-loss", action="store_true", help="measure the loss on a fixed held-out subset (512 samples)")
    from tunesmith.trainables.lr_range_test import DEFAULT_PICK, SUGGESTERS
    first = default_pick or DEFAULT_PICK
    p.add_argument("--pick", default=None, help=f"suggestion that sets the max LR: {first} (default), "
                                                + ", ".join(r for r in SUGGESTERS if r != first))


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
        smith.run(spec, args, started)
    except smith.NoResult as exc:
        print(f"tunesmith: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_smith_args(p: argparse.ArgumentParser) -> None:
    from tunesmith.trainables.lr_range_test import SMITH_PICK
    _add_lr_find_args(p, SMITH_PICK)
    p.add_argument("--short-epochs", type=int, help="epochs of stage 2's runs (default: trainer.epochs; ASHA's "
                                                    "budget-aware rungs make most of them short)")
    p.add_argument("--samples", type=int, help="stage-2 trials (default 16; with time_budget_s, as many as fit)")
    p.add_argument("--weight-decay", choices=("auto", "deep", "shallow"), default="auto",
                   help="Smith's grid for deep (ResNets) or shallow networks (default: by model)")
    p.add_argument("--final", action="store_true", help="stage 3: train the best configuration full length")
    p.add_argument("--range", nargs=2, type=float, metavar=("BELOW", "ABOVE"),
                   help="stage 2's LR range in decades below and above the range test's max LR (default 0.5 1.5)")
    p.add_argument("--coupling", choices=("independent", "effective"), default="independent",
                   help="stage 2's LR and momentum: 'independent' (default) draws the two apart; 'effective' "
                        "spreads the effective step lr/(1-m) over the range, each trial's LR scaled by "
                        "(1-m)/(1-trainer.momentum)")
    p.add_argument("--no-pilot", action="store_true",
                   help="on one machine, do not train stage 2's centre point in this process while Ray starts "
                        "its trial workers (the pilot)")


def cmd_spaces(args) -> int:
    from tunesmith.search_spaces.presets import PRESETS
    for name in sorted(PRESETS):
        p = PRESETS[name]
        print(f"{name}\n  {p.summary}\n  source: {p.source}")
        for key, dim in p.space.items():
            (kind, vals), = dim.items()
            print(f"  search {key}: {kind} {'search.lr_band' if vals == 'band' else vals}")
        for key, value in p.settings.items():
            print(f"  sets trainer.{key}: {value}")
        print()
    print("use: search: {presets: [momentum, weight_decay_deep]}; a search.space entry of the same name overrides")
    return 0


def cmd_schema(args) -> int:
    import json
    from tunesmith.orchestrator.spec import json_schema
    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return 0
    tmp = args.output + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:   # whole or not at all
            fh.write(text)
        os.replace(tmp, args.output)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConfigError("--output", args.output, exc.strerror or str(exc)) from None
    print(f"wrote {args.output}; start a spec with: # yaml-language-server: $schema={args.output}")
    return 0


def _add_analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a results directory (or URI), or one sweep's folder in it")
    p.add_argument("--sweep", action="append", help="only this sweep (repeatable; default: all)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--top", type=int, default=5, help="how many best trials to list and plot")
    p.add_argument("--plots", help="folder for the PNG plots (default: RESULTS/_analysis)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report page")
    p.add_argument("--mlflow", metavar="URI", help="log the plots (and the page) to each sweep's MLflow parent run")
    p.add_argument("--mlflow-experiment", default="tunesmith", help="the MLflow experiment (default tunesmith)")


COMMANDS: Dict[str, tuple] = {
    "run": (cmd_run, "run a sweep", [_add_spec_args, _add_cluster_args,
                                     lambda p: p.add_argument("--num-samples", type=int,
                                                              help="override search.num_samples")]),
    "validate": (cmd_validate, "check a spec and print what it would run", [_add_spec_args]),
    "lr-find": (cmd_lr_find, "LR range test: curve, suggestions and the LR band", [_add_spec_args, _add_lr_find_args]),
    "smith": (cmd_smith, "Smith's staged sweep: range test, short ASHA sweep in the band, optional final run",
              [_add_spec_args, _add_cluster_args, _add_smith_args]),
    "resume": (cmd_resume, "continue a sweep whose driver died, from its checkpoints",
               [lambda p: p.add_argument("sweep_dir", help="RESULTS/SWEEP: a sweep folder tunesmith wrote"),
                _add_cluster_args]),
    "submit": (cmd_submit, "submit a sweep to a Ray cluster as a job (Jobs API)",
               [_add_spec_args,
                lambda p: p.add_argument("--address", help="the head's job server, http://HEAD:8265"),
                lambda p: p.add_argument("--no-wait", action="store_true", help="print the job id and return"),
                lambda p: p.add_argument("--smith", action="store_true",
                                         help="submit `tunesmith smith` (with the smith options below) instead of `run`"),
                _add_smith_args]),
    "jobs": (cmd_jobs, "list, inspect, follow or stop submitted sweeps",
             [lambda p: p.add_argument("action", choices=("list", "status", "logs", "stop")),
              lambda p: p.add_argument("job_id", nargs="?"),
              lambda p: p.add_argument("--address", help="the head's job server, http://HEAD:8265")]),
    "schema": (cmd_schema, "print the spec's JSON Schema (for editors' YAML language servers)",
               [lambda p: p.add_argument("-o", "--output", help="write it to this file instead")]),
    "spaces": (cmd_spaces, "list the search-space presets (Smith's ranges)", []),
    "analyze": (cmd_analyze, "summarise sweeps from their Parquet results", [_add_analyze_args]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunesmith", description="Hyperparameter sweeps for CNN image classifiers on Ray Tune.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (func, helptext, adders) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        for add in adders:
            add(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from tunesmith.cluster.connect import prepare_environment
    prepare_environment()   # before anything imports Ray: it reads these variables once
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
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"tunesmith: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130


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
