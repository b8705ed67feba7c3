"""`tunesmith smith`: Leslie Smith's procedure as one command, with its reasoning written down.

1. LR range test -> the LR band [max/10, max]. It runs in the driver while Ray starts.
2. A short ASHA sweep with 1cycle inside the band: a grid over the cyclical momentum's upper
   bound {0.99, 0.97, 0.95, 0.9} (down to 0.85) and over weight decay (Smith's grid for deep or
   shallow networks), with the LR drawn from the band.
3. Optionally (--final), the best configuration trained for the spec's full length.
The report (smith_report.md, smith.json) lists each stage's decision and why.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List

from orchestrator import lrfind
from orchestrator.spec import SweepSpec, from_dict
from orchestrator.storage import Storage
from trainables.config import ConfigError

MOMENTA = [0.99, 0.97, 0.95, 0.9]
DEEP_MODELS = ("resnet18", "resnet34")


def weight_decay_preset(spec: SweepSpec, choice: str) -> str:
    if choice == "auto":
        return "weight_decay_deep" if spec.train.model.name in DEEP_MODELS else "weight_decay_shallow"
    return f"weight_decay_{choice}"


def stage2_spec(spec: SweepSpec, band, short_epochs: int, wd_preset: str, samples: int) -> SweepSpec:
    """The user's dataset, model, resources and trainer, with Smith's stage-2 search."""
    raw = spec.to_dict()
    trainer = dict(raw["trainer"])
    for key in ("schedule", "cycle_momentum", "max_momentum", "min_momentum"):
        trainer.pop(key, None)   # set by the lr_band preset
    trainer["epochs"] = short_epochs
    raw["trainer"] = trainer
    raw["search"] = {
        "algorithm": "random", "num_samples": samples, "max_concurrent": spec.search.max_concurrent,
        "presets": ["lr_band", wd_preset], "lr_band": list(band),
        # under 1cycle, "momentum" is the upper bound of the cycle, which falls to 0.85 and back
        "space": {"max_momentum": {"grid": MOMENTA}},
    }
    raw["asha"] = {"enabled": True, "max_t": short_epochs, "grace_period": max(1, short_epochs // 3),
                   "reduction_factor": 3}
    if spec.train.trainer.optimizer not in ("sgd", "rmsprop"):
        raise ConfigError("trainer.optimizer", spec.train.trainer.optimizer,
                          "smith's stage 2 searches SGD-style momentum; use sgd or rmsprop")
    return from_dict(raw)


def final_spec(spec: SweepSpec, best_config: Dict[str, Any], stage2: SweepSpec) -> SweepSpec:
    """The best configuration, full length, as a one-trial sweep named <name>-final."""
    raw = stage2.to_dict()
    raw["name"] = f"{spec.name}-final"
    raw["trainer"] = {**raw["trainer"], "epochs": spec.train.trainer.epochs}
    for key, value in best_config.items():
        section, _, field = key.rpartition(".")
        raw[section or "trainer"][field] = value
    raw["search"] = {"algorithm": "random", "num_samples": 1}
    raw["asha"] = {"enabled": False}
    return from_dict(raw)


def _ranking(writer, key: str, metric: str, mode: str) -> List[Dict[str, Any]]:
    """Each value of ``key`` by the metric at the last epoch every trial reached (ASHA's first
    rung), so that pruned trials are compared with the others at equal training."""
    recs = [r for r in writer.trials.values() if r.curve]
    if not recs:
        return []
    at = min(max(r.curve) for r in recs)
    groups: Dict[Any, List[float]] = {}
    for rec in recs:
        seen = [e for e in rec.curve if e <= at]
        if seen:
            groups.setdefault(rec.hparams.get(key), []).append(rec.curve[max(seen)])
    rows = [{"value": v, "trials": len(xs), "epoch": at, "mean": sum(xs) / len(xs),
             "best": max(xs) if mode == "max" else min(xs)} for v, xs in groups.items()]
    rows.sort(key=lambda r: -r["mean"] if mode == "max" else r["mean"])
    return rows


def run(spec: SweepSpec, args, started: float) -> Dict[str, Any]:
    from cluster.connect import connect, disconnect
    from orchestrator.sweep import best_table, check_fresh, run_sweep

    storage = Storage(spec.results_dir)
    check_fresh(storage, spec.name)
    if args.final:
        check_fresh(storage, f"{spec.name}-final")
    wd_preset = weight_decay_preset(spec, args.weight_decay)
    short = args.short_epochs or max(3, spec.train.trainer.epochs // 2)
    if short > spec.train.trainer.epochs:
        raise ConfigError("--short-epochs", short, f"must not exceed trainer.epochs ({spec.train.trainer.epochs})")
    # Fail on bad input before any work: stage 2 must be a valid spec for some band.
    stage2_spec(spec, (spec.train.trainer.lr / 10, spec.train.trainer.lr), short, wd_preset, 1)

    # Stage 1 runs while Ray starts: the range test needs no cluster.
    box: Dict[str, Any] = {}

    def stage1():
        try:
            box["decision"] = lrfind.decide(spec.train, args.start, args.end, args.steps, "exp",
                                            args.val_loss, args.pick)
        except BaseException as exc:   # re-raised in the main thread
            box["error"] = exc
    worker = threading.Thread(target=stage1, daemon=True)
    worker.start()
    cluster = connect(args.address, args.num_cpus, args.num_gpus, args.dashboard, args.worker_logs)
    try:
        worker.join()
        if "error" in box:
            raise box["error"]
        decision = box["decision"]
        paths = lrfind.write(decision, storage, spec.name, f"{spec.name}: LR range test")
        print(f"stage 1 ({time.time() - started:.1f}s): " + lrfind.summary_text(decision), flush=True)

        band = (decision.min_lr, decision.max_lr)
        s2 = stage2_spec(spec, band, short, wd_preset, args.samples)
        print(f"\nstage 2: 1cycle in [{band[0]:.3g}, {band[1]:.3g}], {short} epochs, ASHA; grid over "
              f"max_momentum {MOMENTA} x {wd_preset}", flush=True)
        out2 = run_sweep(s2, cluster, command="smith", fresh=False)
        print("\n" + best_table(out2), flush=True)
        w = out2.writer
        ranked = w.ranked()
        if not ranked:
            raise RuntimeError("stage 2 produced no result")
        best = ranked[0]
        report: Dict[str, Any] = {
            "sweep": spec.name, "started_at_unix": started,
            "stage1": {**decision.to_dict(), **paths},
            "stage2": {"sweep": out2.path, "epochs": short, "weight_decay_preset": wd_preset,
                       "trials": len(w.trials), "best_trial": best.trial_id, "best": best.best[s2.metric],
                       "best_config": best.hparams, "metric": s2.metric,
                       "momentum_ranking": _ranking(w, "max_momentum", s2.metric, s2.mode),
                       "weight_decay_ranking": _ranking(w, "weight_decay", s2.metric, s2.mode),
                       "status": w.status_counts(),
                       "seconds": round(out2.wall_seconds, 2)},
        }
        if args.final and not out2.interrupted:
            s3 = final_spec(spec, best.hparams, s2)
            print(f"\nstage 3: the best configuration for {s3.train.trainer.epochs} epochs", flush=True)
            out3 = run_sweep(s3, cluster, command="smith", progress=False)
            rec = next(iter(out3.writer.trials.values()), None)
            report["stage3"] = {"sweep": out3.path, "epochs": s3.train.trainer.epochs,
                                "final": rec.last.get(s3.metric) if rec else None,
                                "best": rec.best.get(s3.metric) if rec else None,
                                "status": rec.status if rec else "none"}
        report["seconds"] = round(time.time() - started, 2)
    finally:
        disconnect(cluster)
    storage.write_bytes(f"{spec.name}/smith.json", json.dumps(report, indent=2, default=str).encode())
    text = render(report)
    storage.write_bytes(f"{spec.name}/smith_report.md", text.encode())
    print("\n" + text)
    return report


def _f(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render(r: Dict[str, Any]) -> str:
    s1, s2 = r["stage1"], r["stage2"]
    m = s2["metric"]
    lines = [f"# Smith report: {r['sweep']}", "",
             "## Stage 1: LR range test",
             f"{s1['points']} mini-batches, LR from {s1['start_lr']:.2g} rising exponentially ({s1['mode']} loss); "
             f"stopped: {s1['stop_reason']}.",
             "Suggestions: " + ", ".join(f"{k} {_f(v)}" for k, v in s1["suggestions"].items()) + ".",
             f"Decision: max LR {_f(s1['max_lr'])} ({s1['pick']}), min LR {_f(s1['min_lr'])} = max/10: "
             f"the band for 1cycle. Curve: {s1['plot']}", "",
             "## Stage 2: short ASHA sweep inside the band",
             f"{s2['trials']} trials of {s2['epochs']} epochs ({', '.join(f'{n} {k}' for k, n in sorted(s2['status'].items()))}), "
             f"1cycle with momentum cycling down to 0.85 from the upper bound searched, {s2['weight_decay_preset']}.",
             "", f"Momentum (upper bound) by mean {m} at epoch "
             f"{s2['momentum_ranking'][0]['epoch'] if s2['momentum_ranking'] else '-'}, which every trial reached:"]
    lines += [f"- {_f(x['value'])}: mean {x['mean']:.4f}, best {x['best']:.4f} ({x['trials']} trials)"
              for x in s2["momentum_ranking"]]
    lines += ["", f"Weight decay by mean {m} at the same epoch:"]
    lines += [f"- {_f(x['value'])}: mean {x['mean']:.4f}, best {x['best']:.4f} ({x['trials']} trials)"
              for x in s2["weight_decay_ranking"]]
    cfg = ", ".join(f"{k}={_f(v)}" for k, v in s2["best_config"].items())
    lines += ["", f"Decision: {cfg}: the trial with the best {m} over its whole run ({s2['best_trial']}, "
              f"{s2['best']:.4f}; ties go to the lower validation loss). Sweep: {s2['sweep']}", ""]
    if "stage3" in r:
        s3 = r["stage3"]
        lines += ["## Stage 3: full-length training",
                  f"{s3['epochs']} epochs: final {m} {_f(s3['final'])}, best {_f(s3['best'])} ({s3['status']}). "
                  f"Sweep: {s3['sweep']}", ""]
    if "stage3" in r and r["stage3"].get("final") is not None:
        lines.append(f"Final accuracy: {m} {r['stage3']['final']:.4f} after full-length training (stage 3).")
    else:
        lines.append(f"Final accuracy: {m} {s2['best']:.4f}, the best short run of stage 2 "
                     "(--final trains it full length).")
    lines.append(f"Total: {r['seconds']:.1f}s from the command's start.")
    return "\n".join(lines) + "\n"
