"""The skill dashboard: one static ``index.html`` that works offline from the file system.

No CDN, no JavaScript library: inline CSS and a few lines of vanilla JS for the tabs; images
are PNG files beside it (relative paths).  The headline table comes first: CRPS and skill of
each system against the reference with the bootstrap interval, coloured green where a system
beats the reference and red where it is worse (dark when the interval excludes 0).

``combine_dashboards([dir1, dir2, ...], out)`` puts several evaluations (models, periods)
into one dashboard, one tab each, copying their plots under ``out/<slug>/``.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

from enspp.data.errors import EnsppError
from enspp.evaluation.report import read_scores, write_json

_CSS = """
:root{--ink:#1d2733;--muted:#5b6b7c;--line:#d8dee6;--bg:#f4f6f9;--card:#fff;--accent:#1f5f99;
--better:#1a7f37;--better-bg:#d6f0dc;--better-weak:#eef8f0;--worse:#b42318;--worse-bg:#fbd9d6;
--worse-weak:#fdf0ef;--ref:#eef1f5}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#13293d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#c9d6e3;margin-top:4px;font-size:13px}
main{max-width:1280px;margin:0 auto;padding:18px 24px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 10px;color:#13293d}
h3{font-size:15px;margin:14px 0 8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f0f3f7;font-weight:600;color:#33475b}
td:first-child,th:first-child{text-align:left}
tr.ref td{background:var(--ref);color:var(--muted)}
td.better-sig{background:var(--better-bg);color:var(--better);font-weight:600}
td.better{background:var(--better-weak);color:var(--better)}
td.worse-sig{background:var(--worse-bg);color:var(--worse);font-weight:600}
td.worse{background:var(--worse-weak);color:var(--worse)}
.ci{color:var(--muted);font-size:12px;font-weight:400}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:var(--muted);margin:8px 0 0}
.legend span{display:inline-flex;align-items:center;gap:5px}
.sw{width:14px;height:14px;border-radius:3px;display:inline-block;border:1px solid var(--line)}
.note{color:var(--muted);font-size:12.5px;margin:6px 0}
.warn{background:#fff7e0;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0;font-size:13px}
.bad{background:var(--worse-weak);border-left:4px solid var(--worse);padding:8px 12px;margin:8px 0;font-size:13px}
.tabs{display:flex;gap:4px;flex-wrap:wrap;border-bottom:2px solid var(--line);margin:6px 0 12px}
.tabs button{border:1px solid var(--line);border-bottom:none;background:#eef2f6;padding:6px 14px;cursor:pointer;
border-radius:6px 6px 0 0;font:inherit;color:#33475b}
.tabs button.active{background:var(--accent);color:#fff;border-color:var(--accent)}
.panel{display:none}.panel.active{display:block}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px;margin-top:12px}
.figs img{width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
.case{border-top:1px solid var(--line);padding-top:12px;margin-top:12px}
.case:first-of-type{border-top:none;margin-top:0;padding-top:0}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px}
.kv dt{color:var(--muted)}.kv dd{margin:0}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;font-size:12px;max-height:360px}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e7ecf2;color:#33475b}
.status.ok{background:var(--better-bg);color:var(--better)}.status.out_of_range{background:var(--worse-bg);color:var(--worse)}
"""

_JS = """
document.querySelectorAll('.tabs').forEach(function(bar){
  bar.querySelectorAll('button').forEach(function(b){
    b.addEventListener('click',function(){
      bar.querySelectorAll('button').forEach(function(x){x.classList.remove('active');
        document.getElementById(x.dataset.target).classList.remove('active');});
      b.classList.add('active');document.getElementById(b.dataset.target).classList.add('active');
    });
  });
});
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "x"


def skill_class(row: dict, *, is_reference: bool) -> str:
    """CSS class of a skill cell: better/worse than the reference, ``-sig`` when the
    bootstrap interval excludes 0."""
    if is_reference or row.get("skill") is None:
        return ""
    lo, hi, s = row.get("skill_low"), row.get("skill_high"), row["skill"]
    if s > 0:
        return "better-sig" if lo is not None and lo > 0 else "better"
    if s < 0:
        return "worse-sig" if hi is not None and hi < 0 else "worse"
    return ""


def _tabs(prefix: str, items: list[tuple[str, str]]) -> str:
    """A tab bar and panels: ``items`` are (label, inner html)."""
    bar = "".join(f'<button type="button" class="{"active" if i == 0 else ""}" '
                  f'data-target="{prefix}-{i}">{_e(label)}</button>' for i, (label, _) in enumerate(items))
    panels = "".join(f'<div class="panel{" active" if i == 0 else ""}" id="{prefix}-{i}">{inner}</div>'
                     for i, (_, inner) in enumerate(items))
    return f'<div class="tabs">{bar}</div>{panels}'


def headline_table(doc: dict, variable: str, region: str) -> str:
    v = doc["variables"][variable]
    ref = doc["reference"]
    units = _e(v["units"])
    head = (f"<tr><th>system</th><th>CRPS ({units})</th><th>CRPS skill vs {_e(ref)}</th>"
            f"<th>{_e(v.get('ci', '').split(' ')[0] or 'CI')} interval</th><th>DM p-value</th>"
            f"<th>RMSE ({units})</th><th>bias ({units})</th><th>spread/skill</th></tr>")
    rows = []
    for row in v["headline"][region]:
        s = row["system"]
        is_ref = s == ref
        cls = skill_class(row, is_reference=is_ref)
        ci = ("reference" if is_ref else
              f'<span class="ci">[{_pct(row.get("skill_low"))}, {_pct(row.get("skill_high"))}]</span>')
        rows.append(
            f'<tr data-system="{_e(s)}" class="{"ref" if is_ref else ""}"><td>{_e(s)}</td>'
            f'<td>{_f(row.get("crps"))}</td><td class="{cls}">{"—" if is_ref else _pct(row.get("skill"))}</td>'
            f'<td>{ci}</td><td>{"" if is_ref else _f(row.get("dm_pvalue"), 2)}</td>'
            f'<td>{_f(row.get("rmse"))}</td><td>{_f(row.get("bias"))}</td><td>{_f(row.get("spread_skill"), 2)}</td></tr>')
    return (f'<table class="headline" data-variable="{_e(variable)}" data-region="{_e(region)}">'
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")


_LEGEND = ('<div class="legend"><span><i class="sw" style="background:var(--better-bg)"></i>better than the '
           'reference, interval excludes 0</span><span><i class="sw" style="background:var(--better-weak)">'
           '</i>better, not significant</span><span><i class="sw" style="background:var(--worse-weak)"></i>'
           'worse, not significant</span><span><i class="sw" style="background:var(--worse-bg)"></i>worse, '
           'interval excludes 0</span></div>')


def _img(src: str | None, alt: str, prefix: str) -> str:
    return "" if not src else f'<img src="{_e(prefix + src)}" alt="{_e(alt)}">'


def _variable_panel(doc: dict, variable: str, uid: str, prefix: str) -> str:
    v = doc["variables"][variable]
    plots = v.get("plots", {})
    regions = []
    for region in v["regions"]:
        lead_rows = []
        for s, d in v["by_lead"][region].items():
            cells = "".join(f"<td>{_f(x)}</td>" for x in d.get("crps", []))
            lead_rows.append(f"<tr><td>{_e(s)}</td>{cells}</tr>")
        lead_head = "".join(f"<th>+{h:g} h</th>" for h in v["lead_hours"])
        tw = v.get("twcrps", {}).get(region, {})
        tw_html = ""
        if tw:
            hdr = "".join(f"<th>{_e(lbl)}</th>" for lbl in tw)
            body = "".join(f"<tr><td>{_e(s)}</td>" + "".join(f"<td>{_f(tw[lbl].get(s))}</td>" for lbl in tw)
                           + "</tr>" for s in v["systems"])
            tw_html = (f"<h3>Threshold-weighted CRPS ({_e(doc.get('crps_estimator'))}; "
                       "t = fixed threshold, p = local climatological percentile)</h3>"
                       f"<table><thead><tr><th>system</th>{hdr}</tr></thead><tbody>{body}</tbody></table>")
        ee = v.get("eecrps", {}).get(region, {})
        if ee:
            body = "".join(f"<tr><td>{_e(s)}</td><td>{_f(ee.get(s))}</td></tr>" for s in v["systems"])
            tw_html += ("<h3>Extreme-event weighted CRPS (|EFI| of the reference ensemble x CRPS, "
                        f"{_e(v['units'])})</h3><table><thead><tr><th>system</th><th>EECRPS</th>"
                        f"</tr></thead><tbody>{body}</tbody></table>")
        inner = (headline_table(doc, variable, region) + _LEGEND
                 + f"<h3>Mean CRPS by lead time ({_e(v['units'])})</h3>"
                 + f"<table><thead><tr><th>system</th>{lead_head}</tr></thead><tbody>{''.join(lead_rows)}</tbody></table>"
                 + tw_html
                 + '<div class="figs">'
                 + _img(plots.get("skill_by_lead", {}).get(region), f"skill by lead {variable} {region}", prefix)
                 + _img(plots.get("spread_skill", {}).get(region), f"spread/skill {variable} {region}", prefix)
                 + _img(plots.get("histograms", {}).get(region), f"rank histograms {variable} {region}", prefix)
                 + "</div>")
        regions.append((region, inner))
    maps = ""
    if plots.get("maps"):
        maps = (f"<h3>Maps at +{v.get('map_lead_hours', 0):g} h (all regions)</h3>"
                f'<div class="figs">{_img(plots["maps"], f"CRPS and skill maps {variable}", prefix)}</div>')
    info = (f'<p class="note">{v["init_count"]} init times · CRPS estimator: {_e(v["estimator"])} · '
            f'{_e(v.get("ci"))} · {_e(v.get("dm_test"))}'
            + (f' · NaN points dropped: {_e(v["nan_dropped"])}' if any(v.get("nan_dropped", {}).values()) else "")
            + "</p>")
    return info + _tabs(f"{uid}-r", regions) + maps


def _cases_html(doc: dict, prefix: str) -> str:
    if not doc.get("cases"):
        return '<p class="note">No case catalogue was given.</p>'
    out = ['<p class="note">Each case says how it was chosen. Cases picked for what was observed '
           "favour forecasts that warn often, so they illustrate behaviour in an extreme but cannot "
           "rank systems on their own (the forecaster's dilemma); the headline scores above can.</p>"]
    skipped = [c for c in doc["cases"] if c["status"] == "out_of_range"]
    for c in doc["cases"]:
        status = c["status"]
        if status == "out_of_range":
            continue
        dilemma = ('<div class="warn">Chosen because of what happened (selected on the outcome): '
                   "its scores illustrate behaviour in an extreme; they cannot rank systems on their own "
                   "(the forecaster's dilemma).</div>" if c.get("selected_on_outcome") else "")
        msg = f'<div class="{"bad" if status == "out_of_range" else "warn"}">{_e(c["message"])}</div>' \
            if c.get("message") else ""
        table = ""
        if c.get("crps"):
            rows = "".join(
                f'<tr data-system="{_e(s)}"><td>{_e(s)}</td><td>{_f(val)}</td>'
                f'<td class="{_imp_class(c["improvement_pct"].get(s), s == doc["reference"])}">'
                f'{"—" if s == doc["reference"] else _imp(c["improvement_pct"].get(s))}</td></tr>'
                for s, val in c["crps"].items())
            table = (f"<table><thead><tr><th>system</th><th>CRPS in box and window ({_e(c['crps_estimator'])})"
                     f"</th><th>improvement vs {_e(doc['reference'])}</th></tr></thead><tbody>{rows}</tbody></table>")
        out.append(
            f'<div class="case" id="case-{_e(c["id"])}"><h3>{_e(c["name"])} '
            f'<span class="status {status}">{_e(status.replace("_", " "))}</span></h3>'
            f'<dl class="kv"><dt>variable</dt><dd>{_e(c["variable"])}</dd><dt>box</dt><dd>{_e(c["box_text"])}</dd>'
            f'<dt>valid times</dt><dd>{_e(c["window"]["start"])} – {_e(c["window"]["end"])}</dd>'
            + (f'<dt>threshold</dt><dd>{c["threshold"]:g}</dd>' if c.get("threshold") is not None else "")
            + f'<dt>how chosen</dt><dd>{_e(c["how_chosen"])}</dd>'
            + (f'<dt>notes</dt><dd>{_e(c["notes"])}</dd>' if c.get("notes") else "")
            + f"</dl>{dilemma}{msg}{table}"
            + (f'<div class="figs">{_img(c.get("plot"), "case " + c["id"], prefix)}</div>' if c.get("plot") else "")
            + "</div>")
    if skipped:
        items = "".join(f"<li>{_e(c['message'])}</li>" for c in skipped)
        out.append(f'<details class="note"><summary>{len(skipped)} catalogue case(s) outside this '
                   f"evaluation (its period, domain or variables)</summary><ul>{items}</ul></details>")
    return "".join(out)


def _imp(x) -> str:
    return "–" if x is None else f"{x:+.1f}%"


def _imp_class(x, is_ref: bool) -> str:
    if is_ref or x is None:
        return ""
    return "better" if x > 0 else "worse" if x < 0 else ""


def _provenance_html(doc: dict) -> str:
    p = doc.get("provenance", {})
    stores = "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in p.get("stores", {}).items())
    versions = ", ".join(f"{_e(k)} {_e(v)}" for k, v in p.get("versions", {}).items())
    periods = "; ".join(f"{_e(k)}: {d['count']} init times {_e(d['first'])} – {_e(d['last'])}"
                        for k, d in p.get("init_times", {}).items())
    files = doc.get("files", {})
    nc = ", ".join(f'<a href="{_e(n)}">{_e(n)}</a>' for n in files.get("netcdf", {}).values())
    return (f'<dl class="kv"><dt>created</dt><dd>{_e(p.get("created"))}</dd>'
            f'<dt>git commit</dt><dd><code>{_e(p.get("git_commit"))}</code></dd>'
            f"<dt>init times</dt><dd>{periods}</dd>{stores}"
            f"<dt>versions</dt><dd>{versions}</dd>"
            + (f'<dt>files</dt><dd><a href="scores.json">scores.json</a>, {nc}</dd>' if files else "")
            + f'</dl><h3>Configuration</h3><pre>{_e(json.dumps(p.get("config", {}), indent=1))}</pre>')


def _evaluation_html(doc: dict, uid: str, prefix: str) -> str:
    variables = list(doc["variables"])
    ref = doc["reference"]
    headline = []
    for v in variables:
        region = doc["variables"][v]["regions"][0]
        headline.append(f"<h3>{_e(v)} · {_e(region)} · all lead times</h3>" + headline_table(doc, v, region))
    if not variables:
        headline.append('<p class="note">No scores: no verifying truth was given '
                        "(only case maps are shown).</p>")
    problems = "".join(f'<div class="bad">{_e(m)}</div>' for m in doc.get("problems", []))
    problems += "".join(f'<p class="note">{_e(m)}</p>' for m in doc.get("notes", []))
    var_tabs = _tabs(f"{uid}-v", [(v, _variable_panel(doc, v, f"{uid}-{i}", prefix))
                                  for i, v in enumerate(variables)]) if variables else ""
    return (f'<section><h2>Headline: CRPS and skill against {_e(ref)}</h2>'
            f'<p class="note">Skill = 1 − CRPS/CRPS({_e(ref)}); positive is better. '
            f"Intervals from a block bootstrap over init dates.</p>{''.join(headline)}{_LEGEND}</section>"
            + (f"<section><h2>Problems and notes</h2>{problems}</section>" if problems else "")
            + (f"<section><h2>By variable and region</h2>{var_tabs}</section>" if var_tabs else "")
            + f"<section><h2>Case studies</h2>{_cases_html(doc, prefix)}</section>"
            + f"<section><h2>Provenance</h2>{_provenance_html(doc)}</section>")


def render_html(docs: list[dict], *, prefixes: list[str] | None = None, title: str | None = None) -> str:
    """The dashboard page for one or several evaluations (``prefixes``: where each one's
    plots are, relative to the page)."""
    if not docs:
        raise ValueError("render_html: no evaluation to show")
    prefixes = prefixes or [""] * len(docs)
    if len(docs) == 1:
        d = docs[0]
        body = _evaluation_html(d, "e0", prefixes[0])
        page_title = title or d["title"]
        sub = _subtitle(d)
    else:
        body = _tabs("ev", [(d["title"], _evaluation_html(d, f"e{i}", prefixes[i])) for i, d in enumerate(docs)])
        body = f"<section><h2>Evaluations</h2>{body}</section>"
        page_title = title or "enspp: comparison of evaluations"
        sub = " · ".join(_e(d["title"]) for d in docs)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_e(page_title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{_e(page_title)}</h1>"
            f'<div class="sub">{sub}</div></header><main>{body}</main><script>{_JS}</script></body></html>')


def _subtitle(d: dict) -> str:
    p = d.get("provenance", {})
    periods = "; ".join(f"{v['count']} init times {v['first']} – {v['last']}" for v in p.get("init_times", {}).values())
    systems = ", ".join(s["key"] for s in d.get("systems", []))
    return _e(f"Systems: {systems} · reference {d['reference']} · {periods} · created {p.get('created', '')}")


def write_dashboard(docs: list[dict], out_dir: Path, *, prefixes: list[str] | None = None,
                    title: str | None = None) -> Path:
    """Write ``out_dir/index.html`` for ``docs`` (scores documents); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_html(docs, prefixes=prefixes, title=title), encoding="utf-8")
    return path


def combine_dashboards(dirs: list[Path | str], out: Path | str, *, title: str | None = None) -> Path:
    """One dashboard comparing several evaluation directories (each with ``scores.json``):
    their plots and scores are copied under ``out/<slug>/`` so ``out`` is self-contained."""
    if len(dirs) < 1:
        raise EnsppError("combine_dashboards: give at least one evaluation directory")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs, prefixes, used = [], [], set()
    for d in map(Path, dirs):
        doc = read_scores(d)
        slug = _slug(doc["title"])
        while slug in used:
            slug += "-2"
        used.add(slug)
        dest = out / slug
        if (d / "plots").is_dir():
            shutil.copytree(d / "plots", dest / "plots", dirs_exist_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        write_json(doc, dest / "scores.json")
        docs.append(doc)
        prefixes.append(f"{slug}/")
    return write_dashboard(docs, out, prefixes=prefixes, title=title)
