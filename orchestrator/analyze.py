"""`tunesmith analyze`: the usual questions about finished (or running) sweeps, answered from
their Parquet files alone.

For each sweep: the best trials; each hyperparameter's effect (the metric by value or bin) and
an importance ranking; counts by stop reason; and, for several sweeps, the same side by side.
Importance is the correlation ratio (eta squared): the share of the variance of the trials'
best metric that the hyperparameter's bins explain. It is a screening figure, not a causal one;
pruned trials count with the best value they reached.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import pandas as pd

from tunesmith.cluster.storage import Storage
from tunesmith.orchestrator.effects import FEW_VALUES, confirmation, effects, fmt as _fmt, plain as _plain, seed_variance
from tunesmith.trainables.config import ConfigError


@dataclass
class Sweep:
    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    metric: str
    mode: str
    storage: Optional[Storage] = None   # where the sweep's other files are (report page)
    confirm: Optional[pd.DataFrame] = None   # its confirmation's rows (phase confirm); ``trials`` is the search's
    rank_by: str = ""                        # what ranked its finalists: val_loss, or the metric ("")

    @property
    def names(self) -> Dict[str, str]:
        """hp column -> the setting as the spec wrote it (hp_model_width -> model.width)."""
        from tunesmith.orchestrator.schema import hp_column
        keys = set()
        for cfg in self.trials.get("config", pd.Series(dtype=object)).dropna().head(50):
            try:
                keys.update(json.loads(cfg))
            except ValueError:
                pass
        return {hp_column(k): k for k in keys}

    @property
    def hp_columns(self) -> List[str]:
        return [c for c in self.trials.columns if c.startswith("hp_")]

    @property
    def score(self) -> str:
        return f"best_{self.metric}"

    @property
    def ranked(self) -> pd.DataFrame:
        """Trials with a score, best first, by the sweep's own rule (ledger.rank_key): ties,
        common on small validation sets, go to the lower validation loss, as in the sweep's own
        table, smith's report and the checkpoint kept."""
        from tunesmith.orchestrator.ledger import rank_key
        t = self.trials.dropna(subset=[self.score])
        loss = t["best_val_loss"] if "best_val_loss" in t else pd.Series([None] * len(t), index=t.index)
        keys = [rank_key(v, None if pd.isna(l) else l, self.mode) for v, l in zip(t[self.score], loss)]
        order = sorted(range(len(t)), key=lambda i: keys[i])
        return t.iloc[order]


def _read_table(storage: Storage, rel: str):
    try:
        return storage.read_table(rel).to_pandas()
    except Exception as exc:   # corrupt or truncated: say which file, in one line
        raise ConfigError("results", storage.uri(rel), f"not a readable Parquet file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _read_epochs(storage: Storage, sweep: str) -> pd.DataFrame:
    parts = [p for p in storage.listdir(sweep, "epochs") if p.endswith(".parquet") and not p.startswith(".")]
    frames = [_read_table(storage, f"{sweep}/epochs/{p}") for p in parts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trial_id", "epoch"])


def _metric_of(storage: Storage, sweep: str):
    """The sweep's metric, mode and confirm.rank_by as its spec.yaml gives them ("" for the metric)."""
    import yaml
    from tunesmith.orchestrator.manifest import written_rank_by
    try:
        spec = yaml.safe_load(storage.read_bytes(f"{sweep}/spec.yaml")) or {}
        by = written_rank_by(spec)
        return spec.get("metric", "val_acc"), spec.get("mode", "max"), "" if by == "metric" else by
    except Exception:
        return "val_acc", "max", ""


def load(results: str, names: Optional[List[str]] = None) -> List[Sweep]:
    storage = Storage(results)
    if not storage.is_dir():
        raise ConfigError("results", results, "no such directory")
    if storage.exists("trials.parquet"):   # the path is one sweep's folder
        found = [os.path.basename(storage.root.rstrip("/"))]
        storage = storage.parent()
    else:
        found = [d for d in storage.listdir() if storage.exists(d, "trials.parquet")]
    if not found:
        raise ConfigError("results", results, "no sweeps found (no <sweep>/trials.parquet under it)")
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise ConfigError("--sweep", missing[0], f"not found; sweeps here: {', '.join(found)}")
        found = list(names)
    sweeps = []
    for name in found:
        trials = _read_table(storage, f"{name}/trials.parquet")
        if trials.empty:
            raise ConfigError("results", storage.uri(name, "trials.parquet"), "holds no trials")
        metric, mode, by = _metric_of(storage, name)
        phase = trials["phase"] if "phase" in trials else pd.Series(["search"] * len(trials), index=trials.index)
        sweeps.append(Sweep(name, trials[phase != "confirm"], _read_epochs(storage, name), metric, mode, storage,
                            trials[phase == "confirm"], by))
    return sweeps


# --- the analysis, as plain data -----------------------------------------------------------

def best(sweep: Sweep, top: int) -> List[Dict[str, Any]]:
    t = sweep.ranked.head(top)
    rows = []
    for rank, (_, r) in enumerate(t.iterrows(), 1):
        rows.append({"rank": rank, "trial_id": r.trial_id, "status": r.status, sweep.metric: float(r[sweep.score]),
                     "epochs": int(r.epochs),
                     **{sweep.names.get(c, c[3:]): _plain(r[c]) for c in sweep.hp_columns}})
    return rows


def status_counts(sweep: Sweep) -> Dict[str, int]:
    return {str(k): int(v) for k, v in sweep.trials.status.value_counts().sort_index().items()}


def summary(sweep: Sweep, top: int) -> Dict[str, Any]:
    bests = best(sweep, top)
    return {"sweep": sweep.name, "metric": sweep.metric, "mode": sweep.mode, "trials": int(len(sweep.trials)),
            "status": status_counts(sweep), "best": bests, "effects": effects(sweep),
            "seed_variance": seed_variance(sweep), "confirmation": confirmation(sweep)}


def compare(summaries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for s in summaries:
        top = s["best"][0] if s["best"] else {}
        rows.append({"sweep": s["sweep"], "trials": s["trials"], **s["status"],
                     "best": top.get(s["metric"]), "metric": s["metric"], "best_trial": top.get("trial_id"),
                     **{f"importance {e['hparam']}": round(e["importance"], 3) for e in s["effects"]}})
    return rows


# --- rendering ------------------------------------------------------------------------------

def _table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    if not rows:
        return "  (none)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) if r.get(c) is not None else "" for c in columns] for r in rows]
    from tunesmith.orchestrator.tables import plain
    return plain(columns, cells, indent=2)


def render_table(summaries: List[Dict[str, Any]], plots: List[str]) -> str:
    out = []
    for s in summaries:
        out.append(f"sweep {s['sweep']}: {s['trials']} trials, by {s['metric']} ({s['mode']})")
        out.append("  status: " + ", ".join(f"{n} {k}" for k, n in s["status"].items()))
        out.append("\nbest trials")
        out.append(_table(s["best"]))
        if s["seed_variance"]:
            out.append(f"\nseed variance: {s['metric']} over repeats with distinct seeds (mean, spread)")
            out.append(_table(s["seed_variance"]))
        out.append("\nhyperparameter importance (share of variance of best " + s["metric"] + " explained; 95% "
                   "bootstrap interval; whether the data separate its values, by a permutation test)")
        out.append(_table([{"hparam": e["hparam"], "importance": round(e["importance"], 3),
                            "95% interval": f"{e['low']:.3f} to {e['high']:.3f}",
                            "separates values": ("yes" if e["separated"] else f"no (p = {e['p']:.2f})")
                            + (f", over {e['binned']} quantile bins (each value ran once)" if e["binned"] else "")}
                           for e in s["effects"]]))
        for e in s["effects"]:
            out.append(f"\n{s['metric']} by {e['hparam']}" + ("" if e["separated"] else
                                                            ": within the noise, the data cannot separate these"))
            out.append(_table(e["bins"], ["bin", "trials", "mean", "±95%", "best"]))
        out += confirmation_lines(s["confirmation"], s["metric"])
        out.append("")
    if len(summaries) > 1:
        out.append("sweeps side by side")
        out.append(_table(compare(summaries)))
        out.append("")
    if plots:
        out.append("plots:\n" + "\n".join(f"  {p}" for p in plots))
    return "\n".join(out).rstrip() + "\n"


def confirmation_lines(c: Dict[str, Any], metric: str) -> List[str]:
    if not c:
        return []
    by = c.get("ranked_by", metric)
    rows = [{"finalist": f["trial"], f"search {metric}": f["search"], "new seeds": f.get("new_mean", f["mean"]),
             f"mean {metric}": f["mean"], "sd": f["sd"], "±95%": f["half_width"],
             **({f"mean {by}": f.get("mean_val_loss")} if by != metric else {}),
             "mean test": f["test"], "seeds": len(f["by_seed"])} for f in c["finalists"]]
    seeds = c.get("seeds_text") or f"new seeds {c['seeds']}"
    return [f"\nconfirmation: the finalists over {seeds} (final-epoch {metric}, {c['basis']}; test read once by each "
            "new final model)", _table(rows), f"  {c['verdict']}"]


def render_csv(summaries: List[Dict[str, Any]]) -> str:
    """One table with a `section` column: best, effect, confirm (value: the mean test figure),
    status."""
    import csv
    import io
    rows = []
    for s in summaries:
        for b in s["best"]:
            hps = {k: v for k, v in b.items() if k not in ("rank", "trial_id", "status", "epochs", s["metric"])}
            rows.append({"section": "best", "sweep": s["sweep"], "rank": b["rank"], "trial_id": b["trial_id"],
                         "status": b["status"], "metric": s["metric"], "value": b[s["metric"]],
                         "epochs": b["epochs"], "hparams": json.dumps(hps, sort_keys=True)})
        for e in s["effects"]:
            for b in e["bins"]:
                rows.append({"section": "effect", "sweep": s["sweep"], "hparam": e["hparam"],
                             "importance": e["importance"], "bin": b["bin"], "trials": b["trials"],
                             "metric": s["metric"], "mean": b["mean"], "half_width": b["±95%"], "value": b["best"]})
        for f in (s["confirmation"] or {}).get("finalists", []):
            rows.append({"section": "confirm", "sweep": s["sweep"], "trial_id": f["trial"], "metric": s["metric"],
                         "mean": f["mean"], "half_width": f["half_width"], "trials": len(f["by_seed"]),
                         "value": f["test"]})
        for k, n in s["status"].items():
            rows.append({"section": "status", "sweep": s["sweep"], "status": k, "trials": n})
    cols = ["section", "sweep", "rank", "trial_id", "status", "hparam", "importance", "bin", "trials",
            "metric", "mean", "half_width", "value", "epochs", "hparams"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# --- plots ----------------------------------------------------------------------------------

def plot(sweeps: List[Sweep], out_dir: str, top: int) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:   # a read-only results folder, or a --plots folder it cannot make
        raise ConfigError("--plots", out_dir, f"cannot be written ({exc.strerror or exc}); give --plots DIR "
                          "somewhere writable, or --no-plots") from None
    paths = []
    colors = {"completed": "tab:green", "pruned": "tab:orange", "diverged": "tab:red",
              "errored": "black", "stopped": "tab:gray", "running": "tab:blue"}
    for sw in sweeps:
        m = sw.metric
        ranked = sw.ranked
        # learning curves of the top k
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for _, r in ranked.head(top).iterrows():
            e = sw.epochs[sw.epochs.trial_id == r.trial_id].sort_values("epoch")
            if m in e:
                ax.plot(e.epoch, e[m], marker="o", ms=3, label=f"{r.trial_id} ({r[sw.score]:.4f})")
        ax.set(xlabel="epoch", ylabel=m, title=f"{sw.name}: top {top} learning curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir, f"{sw.name}-curves.png"))
        # metric against LR
        if "hp_lr" in sw.trials:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for status, g in sw.trials.groupby("status"):
                ax.scatter(g.hp_lr, g[sw.score], label=status, color=colors.get(status, "tab:blue"), s=25)
            ax.set_xscale("log")
            ax.set(xlabel="lr (log)", ylabel=f"best {m}", title=f"{sw.name}: {m} against LR")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            paths.append(_save(fig, out_dir, f"{sw.name}-lr.png"))
        # parallel coordinates
        cols = sw.hp_columns
        if cols and not ranked.empty:
            fig, ax = plt.subplots(figsize=(1.8 * (len(cols) + 1) + 2, 4.5))
            axes = cols + [sw.score]
            norm, ends, logged = {}, {}, set()
            for c in axes:
                s = ranked[c]
                if s.dtype == object or s.dtype == bool or (c != sw.score and s.nunique() <= FEW_VALUES):
                    # few values: evenly spaced, in order, so 0 and 1e-5 do not collapse together
                    values = sorted(s.dropna().unique(), key=lambda v: (isinstance(v, str), v))
                    codes = {v: i for i, v in enumerate(values)}
                    norm[c] = s.map(codes) / max(1, len(codes) - 1)
                    ends[c] = (_fmt(values[0]), _fmt(values[-1])) if values else ("", "")
                else:
                    x = s.astype(float)
                    if (x > 0).all() and x.max() / max(x.min(), 1e-300) > 10:
                        x = x.map(math.log10)
                        logged.add(c)
                    span = x.max() - x.min()
                    norm[c] = (x - x.min()) / span if span > 0 else x * 0 + 0.5
                    ends[c] = (_fmt(float(s.min())), _fmt(float(s.max())))
            cmap = plt.get_cmap("viridis")
            sc = norm[sw.score] if sw.mode == "max" else 1 - norm[sw.score]
            for i in range(len(ranked)):
                ax.plot(range(len(axes)), [norm[c].iloc[i] for c in axes], color=cmap(sc.iloc[i]), alpha=0.7)
            for i, c in enumerate(axes):
                ax.axvline(i, color="0.7", lw=0.8)
                ax.text(i, -0.04, ends[c][0], ha="center", va="top", fontsize=7)
                ax.text(i, 1.04, ends[c][1], ha="center", va="bottom", fontsize=7)
            ax.set_ylim(-0.12, 1.12)
            ax.set_xticks(range(len(axes)), [sw.names.get(c, c) + (" (log)" if c in logged else "") for c in axes])
            ax.set_yticks([])
            ax.set_title(f"{sw.name}: parallel coordinates (colour: {m}, yellow best)")
            paths.append(_save(fig, out_dir, f"{sw.name}-parallel.png"))
        plt.close("all")
    return paths


def _save(fig, out_dir: str, name: str) -> str:
    """One plot, written whole (a temporary name, then renamed); a disk that fills is one line."""
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConfigError("--plots", out_dir, f"cannot be written ({exc.strerror or exc}); free some space, give "
                          "--plots DIR elsewhere, or --no-plots") from None
    return path


def run(results: str, names: Optional[List[str]], fmt: str, top: int, plots_dir: Optional[str],
        page=None) -> str:
    """The analysis as text in ``fmt``; ``page(sweeps, summaries)``, when given, renders the
    same summaries elsewhere (cli.py passes the HTML page's writer)."""
    sweeps = load(results, names)
    summaries = [summary(s, top) for s in sweeps]
    plots = plot(sweeps, plots_dir, min(top, 10)) if plots_dir else []
    if page is not None:
        page(sweeps, summaries)
    if fmt == "json":
        body = {"sweeps": summaries, "plots": plots}
        if len(summaries) > 1:
            body["compare"] = compare(summaries)
        return json.dumps(body, indent=2, default=_plain) + "\n"
    if fmt == "csv":
        return render_csv(summaries)
    return render_table(summaries, plots)
