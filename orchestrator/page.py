"""`tunesmith analyze RESULTS --html FILE`: one self-contained page for people who will not run
`analyze`. Everything is inside the file (plots as PNG data URIs, the styles inline), so it
opens offline and can be mailed or attached as it is. Rendered with Jinja2 (autoescaped)."""
from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import Any, Dict, List

import yaml

TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunesmith analysis: {{ title }}</title>
<style>
 body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
        padding: 24px; color: #1b1f23; }
 h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
 h3 { font-size: 15px; margin: 20px 0 6px; }
 .sub { color: #586069; } .best { background: #e6ffed; border: 1px solid #34d058; border-radius: 6px;
        padding: 10px 14px; margin: 12px 0; font-size: 16px; }
 table { border-collapse: collapse; margin: 6px 0 12px; } th, td { padding: 3px 10px; text-align: left;
        border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; } th { background: #f6f8fa; }
 .chip { display: inline-block; padding: 1px 8px; border-radius: 10px; margin-right: 6px; background: #f1f3f5; }
 .completed { background: #dcffe4; } .pruned { background: #fff5b1; } .diverged, .errored { background: #ffdce0; }
 img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; } pre { background: #f6f8fa; padding: 10px;
        overflow-x: auto; font-size: 12px; } details { margin: 8px 0; }
</style></head><body>
<h1>tunesmith analysis: {{ title }}</h1>
<div class="sub">{{ sweeps|length }} sweep{{ "s" if sweeps|length != 1 else "" }}, written {{ written }}</div>
{% for s in sweeps %}
<h2 id="{{ s.name }}">Sweep {{ s.name }}</h2>
<div>{% for k, n in s.status.items() %}<span class="chip {{ k }}">{{ n }} {{ k }}</span>{% endfor %}
 <span class="sub">{{ s.trials }} trials, by {{ s.metric }} ({{ s.mode }})</span></div>
{% if s.best %}<div class="best">Best trial <b>{{ s.best[0].trial_id }}</b>: {{ s.metric }}
 <b>{{ "%.4f"|format(s.best[0][s.metric]) }}</b>{% for k, v in s.best[0].items() if k not in ("rank", "trial_id", "status", "epochs", s.metric) %}, {{ k }} = {{ fmt(v) }}{% endfor %}</div>{% endif %}
<h3>Best trials</h3>
<table><tr>{% for c in s.best_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in s.best %}<tr>{% for c in s.best_columns %}<td>{{ fmt(row.get(c)) }}</td>{% endfor %}</tr>{% endfor %}</table>
{% if s.seed_variance %}<h3>Seed variance</h3>
<table><tr>{% for c in s.seed_variance[0] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in s.seed_variance %}<tr>{% for v in row.values() %}<td>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if s.confirmation %}<h3>Confirmation</h3>{% set by = s.confirmation.ranked_by if s.confirmation.ranked_by and s.confirmation.ranked_by != s.metric else "" %}
<div class="sub">the finalists over {{ s.confirmation.seeds_text or s.confirmation.seeds }}; final-epoch {{ s.metric }}, {{ s.confirmation.basis }}; the test split read once by each new final model</div>
<table><tr><th>finalist</th><th>search</th><th>new seeds</th><th>mean</th><th>sd</th><th>&plusmn;95%</th>{% if by %}<th>mean {{ by }}</th>{% endif %}<th>mean test</th><th>seeds</th></tr>
{% for f in s.confirmation.finalists %}<tr><td>{{ f.trial }}</td><td>{{ fmt(f.search) }}</td><td>{{ fmt(f.new_mean) }}</td><td>{{ fmt(f.mean) }}</td><td>{{ fmt(f.sd) }}</td><td>{{ fmt(f.half_width) }}</td>{% if by %}<td>{{ fmt(f.mean_val_loss) }}</td>{% endif %}<td>{{ fmt(f.test) }}</td><td>{{ f.by_seed|length }}</td></tr>{% endfor %}</table>
<div class="best">{{ s.confirmation.verdict }}</div>{% endif %}
<h3>Hyperparameter importance</h3>
<table><tr><th>hyperparameter</th><th>importance</th><th>95% interval</th><th>separates values</th></tr>
{% for e in s.effects %}<tr><td>{{ e.hparam }}</td><td>{{ "%.3f"|format(e.importance) }}</td><td>{{ "%.3f"|format(e.low) }} to {{ "%.3f"|format(e.high) }}</td><td>{{ "yes" if e.separated else "no (p = %.2f)"|format(e.p) }}{{ ", over %d quantile bins (each value ran once)"|format(e.binned) if e.binned else "" }}</td></tr>{% endfor %}</table>
{% for e in s.effects %}<details><summary>{{ s.metric }} by {{ e.hparam }}{{ "" if e.separated else ": within the noise" }}</summary>
<table><tr><th>value</th><th>trials</th><th>mean</th><th>&plusmn;95%</th><th>best</th></tr>
{% for b in e.bins %}<tr><td>{{ b.bin }}</td><td>{{ b.trials }}</td><td>{{ "%.4f"|format(b.mean) }}</td><td>{{ fmt(b["±95%"]) }}</td><td>{{ "%.4f"|format(b.best) }}</td></tr>{% endfor %}
</table></details>{% endfor %}
<h3>Plots</h3>
{% for p in s.plots %}<img alt="{{ p.name }}" src="data:image/png;base64,{{ p.data }}">{% endfor %}
{% if s.lr_find %}<h3>LR range test</h3><img alt="LR range test" src="data:image/png;base64,{{ s.lr_find }}">{% endif %}
{% if s.smith %}<h3>Smith report</h3><pre>{{ s.smith }}</pre>{% endif %}
<h3>Provenance</h3>
<table>{% for k, v in s.provenance.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<details><summary>the resolved spec</summary><pre>{{ s.spec }}</pre></details>
{% endfor %}
{% if compare %}<h2>Sweeps side by side</h2>
<table><tr>{% for c in compare[0] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in compare %}<tr>{% for v in row.values() %}<td>{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
</body></html>
"""


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read(storage, rel: str):
    try:
        return storage.read_bytes(rel) if storage is not None and storage.exists(rel) else None
    except OSError:
        return None


def write(path: str, sweeps, summaries: List[Dict[str, Any]], top: int) -> str:
    """Render the page to ``path``, written whole (a temporary name, then renamed)."""
    import jinja2
    from tunesmith.orchestrator import analyze
    from tunesmith.orchestrator.manifest import now_iso
    pages = []
    with tempfile.TemporaryDirectory(prefix="tunesmith-page-") as tmp:
        for sw, s in zip(sweeps, summaries):
            pngs = analyze.plot([sw], tmp, min(top, 10))
            try:   # the page shows what it can: a manifest cut short gives no provenance, not a traceback
                man = json.loads(_read(sw.storage, f"{sw.name}/manifest.json") or b"{}")
            except ValueError:
                man = {}
            man = man if isinstance(man, dict) else {}
            spec_text = (_read(sw.storage, f"{sw.name}/spec.yaml") or b"").decode()
            versions = man.get("versions") or {}
            git = man.get("git") or {}
            lr = _read(sw.storage, f"{sw.name}/lr_find/lr_find.png")
            smith = _read(sw.storage, f"{sw.name}/smith_report.md")
            pages.append({**s, "name": sw.name, "best_columns": list(dict.fromkeys(k for r in s["best"] for k in r)),
                          "plots": [{"name": os.path.basename(p), "data": _b64(open(p, "rb").read())} for p in pngs],
                          "lr_find": _b64(lr) if lr else None, "smith": smith.decode() if smith else None,
                          "spec": spec_text or yaml.safe_dump({"metric": sw.metric, "mode": sw.mode}),
                          "provenance": {"command": man.get("command"), "started": man.get("started_at"),
                                         "ended": man.get("ended_at"), "status": man.get("status"),
                                         "host": man.get("host"),
                                         "commit": (git.get("commit", "") + (" (dirty)" if git.get("dirty") else ""))
                                         or None,
                                         "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v)}})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(TEMPLATE).render(
        title=", ".join(s["sweep"] for s in summaries), sweeps=pages, written=now_iso(),
        compare=analyze.compare(summaries) if len(summaries) > 1 else None, fmt=_fmt)
    tmp_path = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp_path, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.replace(tmp_path, path)
    except OSError as exc:   # a disk that fills: one line, and no half-written page
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        from tunesmith.trainables.config import ConfigError
        raise ConfigError("--html", path, f"cannot be written ({exc.strerror or exc})") from None
    return path

