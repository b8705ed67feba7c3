"""smith's report: smith.json (every decision and its figures) and smith_report.md (the same in
words), written beside the sweeps and, with MLflow, logged to the sweep's run."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator.smith.policy import value_ranking


def f(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def config_text(config: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {f(v)}" for k, v in config.items())


def coupling_text(ref: Optional[float]) -> str:
    """How stage 2's LR was tied to the momentum, for the printed plan and the report."""
    return ("" if ref is None else
            f", each trial's lr scaled by (1-m)/(1-{ref:g}) for its momentum bound m (the effective step "
            f"lr/(1-m) spread over the range, as the range test measured it at momentum {ref:g})")


def stage2_summary(out, s2, lr_range, basis: str) -> Dict[str, Any]:
    """One stage-2 sweep as the report records it, from its ledger."""
    ledger = out.ledger
    ranked = ledger.top(1)
    at = (s2.rungs or (s2.max_t,))[0]
    best = ranked[0] if ranked else None
    verdict = getattr(out, "confirmed", None)
    if verdict is not None and verdict.winner is not None:   # the best mean over new seeds, not one lucky run
        best = ledger.trials[verdict.winner.trial_id]
    records = [r for r in ledger.trials.values() if r.phase == "search"]   # confirmation runs are judged apart
    return {"sweep": out.path, "name": s2.name, "epochs": s2.train.trainer.epochs, "lr_range": list(lr_range),
            "lr_basis": basis, "lr_momentum_ref": s2.plan.lr_momentum_ref, "trials": len(records),
            "rung_epochs": list(s2.rungs), "annealed_rungs": bool(s2.milestones), "floor": s2.asha.floor,
            "best_trial": best.trial_id if best else None, "best": best.best[s2.metric] if best else None,
            "best_epoch": best.best_epoch(s2.mode) if best else None,
            "best_config": best.hparams if best else {}, "metric": s2.metric,
            "momentum_ranking": value_ranking(records, "max_momentum", s2.mode, at),
            "weight_decay_ranking": value_ranking(records, "weight_decay", s2.mode, at),
            "ranked_at_epoch": at, "status": ledger.status_counts(records), "seconds": round(out.wall_seconds, 2),
            "interrupted": out.interrupted,
            "confirmed": verdict.to_dict() if verdict is not None else None,
            "unconfirmed": getattr(out, "unconfirmed", "") or None,
            # where no confirmation ran, the kept model's test figure (orchestrator/kept_test.py)
            "kept_test": dict(best.test) if best is not None and verdict is None and best.test else None}


def stage3_summary(out3, s3, mode: str) -> Dict[str, Any]:
    rec = next(iter(out3.ledger.trials.values()), None)
    return {"sweep": out3.path, "epochs": s3.train.trainer.epochs,
            "final": rec.last.get(s3.metric) if rec else None,
            "best": rec.best.get(s3.metric) if rec else None,
            "best_epoch": rec.best_epoch(mode) if rec else None,
            "status": rec.status if rec else "none", "trained": rec.epochs if rec else 0,
            "stop_reason": rec.stop_reason if rec else "", "trial": rec.trial_id if rec else None}


def render(r: Dict[str, Any]) -> str:
    s1 = r["stage1"]
    m = r["metric"]
    lines = [f"# Smith report: {r['sweep']}", "", "## Stage 1: LR range test"]
    if s1["points"]:
        lines.append(f"{s1['points']} points, LR from {s1['start_lr']:.2g} rising exponentially ({s1['mode']} loss); "
                     f"stopped: {s1['stop_reason']}.")
    lines += [f"{n}." for n in s1.get("notes", [])]
    if s1["informative"]:
        lines += ["Suggestions: " + ", ".join(f"{k} {f(v)}" for k, v in s1["suggestions"].items()) + ".",
                  f"Decision: max LR {f(s1['max_lr'])} by {s1['why']}; min LR {f(s1['min_lr'])} = max/10: "
                  f"the 1cycle band. Curve: {s1['plot']}"]
    else:
        lines.append(f"Decision: none. {s1['why']}. Curve: {s1['plot']}")
    for run in r["stage2_runs"]:
        lines += _stage2_lines(run, m)
    if "stage3" in r:
        s3 = r["stage3"]
        lines += ["", "## Stage 3: full-length training",
                  f"{s3.get('trained', s3['epochs'])} of {s3['epochs']} epochs ({s3['status']}"
                  + (f": {s3['stop_reason']}" if s3.get("stop_reason") and s3.get("trained") != s3["epochs"] else "")
                  + f"): best {m} {f(s3['best'])} at epoch {s3['best_epoch']}, "
                  f"{f(s3['final'])} at the last epoch. Sweep: {s3['sweep']}"]
    res = r["result"]
    lines += ["", "## Result",
              f"{m} {res['value']:.4f}: trial {res['trial']} of {res['sweep']} (stage {res['stage']}), "
              f"at epoch {res['epoch']}."]
    lines += [f"- {w}" for w in r["warnings"]]
    lines.append(f"Total: {r['seconds']:.1f}s from the command's start"
                 + (f", of a {r['time_budget_s']:g}s budget." if r.get("time_budget_s") else "."))
    return "\n".join(lines) + "\n"


def _stage2_lines(run: Dict[str, Any], m: str):
    lines = ["", f"## Stage 2: ASHA sweep ({run['name']})",
             f"{run['trials']} trials of up to {run['epochs']} epochs "
             f"({', '.join(f'{n} {k}' for k, n in sorted(run['status'].items()))}) in {run['seconds']:.0f}s; "
             f"1cycle with the LR log-uniform in [{run['lr_range'][0]:.3g}, {run['lr_range'][1]:.3g}] "
             f"({run['lr_basis']}), momentum cycling down to 0.85 from its upper bound"
             + coupling_text(run.get("lr_momentum_ref")) + "; "
             f"ASHA rungs at epochs {run['rung_epochs']}" + (", each read on an annealed schedule"
                                                              if run.get("annealed_rungs") else
                                                              ", a third of the run or later into one schedule")
             + (f"; at a rung, {m} {run['floor']:.3g} (chance) or less is pruned, first there or not."
                if run.get("floor") is not None else "."),
             *([f"Trial {run['pilot']['trial']}, stage 2's centre ({config_text(run['pilot']['config'])}), "
                "trained in smith's own process while Ray started the trials' workers; ASHA did not judge it."]
               if run.get("pilot") else []),
             ]
    for title, ranking in ((f"Momentum (upper bound) by mean {m} at epoch {run['ranked_at_epoch']} (the first rung):",
                            run["momentum_ranking"]),
                           (f"Weight decay by mean {m} at epoch {run['ranked_at_epoch']}:", run["weight_decay_ranking"])):
        if ranking:   # not drawn where the budget held them
            lines += ["", title] + [f"- {f(x['value'])}: mean {x['mean']:.4f}, best {x['best']:.4f} "
                                    f"({x['trials']} trial{'s' if x['trials'] != 1 else ''})" for x in ranking]
    if run["best"] is not None:
        cfg = ", ".join(f"{k}={f(v)}" for k, v in run["best_config"].items())
        lines += ["", f"Best: {cfg}: trial {run['best_trial']}, {m} {run['best']:.4f} at epoch "
                  f"{run['best_epoch']} (ties go to the lower validation loss). Sweep: {run['sweep']}"]
    lines += _confirm_lines(run.get("confirmed"), m)
    if not run.get("confirmed") and run.get("unconfirmed"):
        from tunesmith.orchestrator.confirm import test_metric
        key = test_metric(m)
        kept = (run.get("kept_test") or {}).get(key)
        test = f"; the kept model read the test split once: {key} {kept:.4f}" if kept is not None else ""
        lines += ["", f"Not confirmed over seeds: {run['unconfirmed']}{test}."]
    return lines


def _confirm_lines(c, m: str):
    if not c:
        return []
    seeds = c.get("seeds_text") or f"new seeds {c['seeds']}"
    lines = ["", f"Confirmation: the finalists' final-epoch {m} over {seeds}; {c['basis']}, not by the best single run."]
    for x in c["finalists"]:
        test = f", test {x['test']:.4f}" if x.get("test") is not None else ""
        spread = f" ± {x['half_width']:.4f} (95%)" if x.get("half_width") is not None else ""
        mean = f"{x['mean']:.4f}" if x.get("mean") is not None else "-"
        new = f", new seeds {x['new_mean']:.4f}" if x.get("new_mean") is not None and c.get("search_seeds") else ""
        by = c.get("ranked_by", m)
        loss = f", mean {by} {x['mean_val_loss']:.4f}" if by != m and x.get("mean_val_loss") is not None else ""
        lines.append(f"- trial {x['trial']}: search {f(x['search'])}{new}, mean {mean}{spread}{loss}{test}")
    return lines + [c["verdict"][0].upper() + c["verdict"][1:] + "."]


def write(report: Dict[str, Any], storage: Storage, name: str, mlflow) -> str:
    """smith.json and smith_report.md under the sweep's folder (and to MLflow with the range
    test's files); returns the Markdown."""
    data = json.dumps(report, indent=2, default=str).encode()
    text = render(report)
    storage.write_bytes(f"{name}/smith.json", data)
    storage.write_bytes(f"{name}/smith_report.md", text.encode())
    if mlflow.uri:
        from tunesmith.orchestrator.sinks.mlflow import log_files
        files = {"smith/smith_report.md": text.encode(), "smith/smith.json": data}
        for rel in ("curve.parquet", "lr_find.png", "decision.json"):
            files[f"lr_find/{rel}"] = storage.read_bytes(f"{name}/lr_find/{rel}")
        log_files(mlflow.uri, mlflow.experiment, name, files)
    return text


def left_unused(runs: List[Dict[str, Any]], specs, left: Optional[float], budget: Optional[float]) -> str:
    """The line for a budget smith did not use up: more than a tenth of it left, every stage-2
    sweep having started all its trials (``runs``: their summaries; ``specs``: their specs), so
    --samples, not the budget, ended the search. Where the budget cut a search (at the time held
    for a confirmation that then did not fit), the confirmation's line says why; ''."""
    from tunesmith.orchestrator.spec import trial_count
    if not budget or left is None or left <= 0.1 * budget:
        return ""
    if any(st["trials"] < trial_count(sp) for st, sp in zip(runs, specs)):
        return ""
    done = sum(st["trials"] for st in runs)
    return (f"smith stopped with {left:.0f}s of its {budget:g}s budget left: all {done} trials of stage 2 "
            "finished (--samples sets how many)")
