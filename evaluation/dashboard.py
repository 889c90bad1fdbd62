"""The skill dashboard: one static ``index.html`` that works offline from the file system.

Rendered from a Jinja2 template (``evaluation/templates/dashboard.html``, with its CSS and
the few lines of vanilla JS for the tabs inlined; no CDN, no JavaScript library); images are
PNG files beside the page (relative paths).  This module turns a scores document
(:mod:`evaluation.report`) into a view of formatted strings, so the template only places
them: the headline table comes first (CRPS and skill of each system against the reference,
with the bootstrap interval, coloured green where a system beats the reference and red where
it is worse, dark when the interval excludes 0); systems are named by their labels (method
and member set, :mod:`evaluation.labels`) with their key beside; every score says its units.

``combine_dashboards([dir1, dir2, ...], out)`` puts several evaluations (models, periods)
into one dashboard, one tab each, copying their plots under ``out/<slug>/``.
"""

from __future__ import annotations

import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from enspp.data.errors import EnsppError
from enspp.evaluation.labels import lat_text, lon_text, region_text
from enspp.evaluation.report import MAX_CASE_STATIONS, read_scores, write_json

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              autoescape=True, trim_blocks=False, lstrip_blocks=False,
                              undefined=jinja2.StrictUndefined)


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _pct(x) -> str:
    """A fraction as a signed percentage; one that rounds to zero is ``0.0%``."""
    if x is None:
        return "–"
    return "0.0%" if round(100 * x, 1) == 0 else f"{100 * x:+.1f}%"


def _p(x) -> str:
    """A p-value: two decimals, three below 0.01 (``0.004``, not ``0.00``), and ``<0.001``
    below that (a test's tail holds no more digits than that)."""
    if x is None:
        return "–"
    if x < 0.001:
        return "<0.001"
    return f"{x:.3f}" if x < 0.01 else f"{x:.2f}"


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


def _imp(x) -> str:
    """An improvement in %, one decimal; one that rounds to zero is ``0.0%`` (not ``-0.0%``)."""
    if x is None:
        return "–"
    return "0.0%" if round(x, 1) == 0 else f"{x:+.1f}%"


def _imp_class(x, is_ref: bool) -> str:
    """Green or red only for a change that shows in the digits shown."""
    if is_ref or x is None or round(x, 1) == 0:
        return ""
    return "better" if x > 0 else "worse"


# ------------------------------------------------------------------ words
def labels_of(doc: dict) -> dict[str, str]:
    """``{system key: label}`` of a scores document (the key where it has no label)."""
    return {s["key"]: s.get("label") or s["key"] for s in doc.get("systems", [])}


def region_boxes(doc: dict) -> dict[str, str]:
    """``{region name: its box in words}`` of the evaluation's configured regions (a name of
    ``evaluation.weights.REGIONS`` or a box of its own, which may reuse a known name)."""
    out = {}
    for r in ((doc.get("provenance") or {}).get("config") or {}).get("regions") or []:
        name = r if isinstance(r, str) else r.get("name") if isinstance(r, dict) else None
        if name is not None:
            out[name] = region_text(r)
    return {k: v for k, v in out.items() if v}


def region_heading(doc: dict, region: str) -> str:
    """``tropics (20°S–20°N, all longitudes)``; the name alone where the box is not known or
    is the whole domain (``global``)."""
    box = region_boxes(doc).get(region)
    return f"{region} ({box})" if box and box != "the whole domain" else region


def units_text(units: str | None) -> str:
    return units or "units not recorded"


def hours_text(hours: list[float]) -> str:
    """``+48 h``, or ``+24 h to +120 h (5 lead times pooled)``."""
    if not hours:
        return "all lead times"
    if len(hours) == 1:
        return f"+{hours[0]:g} h"
    return f"+{min(hours):g} h to +{max(hours):g} h ({len(hours)} lead times pooled)"


def twcrps_text(label: str, *, units: str, tail: str = "upper") -> str:
    """A twCRPS column in words: ``t295`` is a fixed threshold in the variable's units,
    ``p90`` a local climatological percentile of the truth."""
    side = "above" if tail != "lower" else "below"
    if m := re.fullmatch(r"t(-?[0-9.eE+-]+)", label):
        return f"{side} {float(m.group(1)):g} {units}".rstrip()
    if m := re.fullmatch(r"p([0-9]+)", label):
        n = int(m.group(1))
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"{side} the local {n}{suffix} percentile"
    return label


def time_text(iso: str) -> str:
    """``2016-07-08 00:00 UTC`` from an ISO time (``2016-07-08T00:00:00``); seconds only
    where they are not zero; text that is not a time is returned as it is."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[T ](\d\d)(:\d\d)?(:\d\d)?(\.\d+)?(Z|[+-]00:?00)?", str(iso))
    if not m:
        return str(iso)
    sec = m.group(4) if m.group(4) not in (None, ":00") else ""
    return f"{m.group(1)} {m.group(2)}{m.group(3) or ':00'}{sec} UTC"


def period_text(doc: dict) -> str:
    """Which init times were scored and why those: ``the last 30 days of init times the truth
    verifies: 9 init times, 2016-12-01 00:00 UTC – 2016-12-29 00:00 UTC`` (``evaluate.recent_days``),
    ``split 'test' (2016-01-01 – 2016-12-31): ...``, ``period ...: ...``; per variable where
    the variables' init times differ."""
    p = doc.get("provenance", {})
    cfg = p.get("config") or {}
    if cfg.get("recent_days"):
        how = f"the last {cfg['recent_days']} days of init times the truth verifies"
    elif cfg.get("split"):
        span = (cfg.get("splits") or {}).get(cfg["split"]) or {}
        how = f"split '{cfg['split']}'" + (f" ({span['start']} – {span['end']})"
                                           if span.get("start") and span.get("end") else "")
    elif cfg.get("period"):
        how = f"period {cfg['period'].get('start')} – {cfg['period'].get('end')}"
    else:
        how = ""
    spans = {v: (f"{d['count']} init times, {time_text(d['first'])} – {time_text(d['last'])}"
                 if d.get("count") else "no init time")
             for v, d in p.get("init_times", {}).items()}
    if len(set(spans.values())) == 1:
        scored = next(iter(spans.values()))
    else:
        scored = "; ".join(f"{v}: {t}" for v, t in spans.items())
    return f"{how}: {scored}" if how and scored else how or scored


class _ReadableYaml(yaml.SafeDumper):
    """YAML for a reader: mappings in block style, a list of plain values on one line
    (``members: [1, 2, 3, 4, 5]`` rather than five lines)."""


def _represent_list(dumper: Any, data: list) -> Any:
    flow = bool(data) and all(isinstance(x, (int, float, bool)) or
                              (isinstance(x, str) and len(x) < 40) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ReadableYaml.add_representer(list, _represent_list)


def readable_yaml(doc: Any) -> str:
    """``doc`` as YAML a person reads (block mappings, short lists of values on one line);
    ``yaml.safe_load`` gives ``doc`` back."""
    return yaml.dump(doc, Dumper=_ReadableYaml, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)


def config_text(config: dict) -> str:
    """The run's configuration as readable YAML (unset entries left out)."""
    config = _pruned(config)
    return readable_yaml(config) if config else "(not recorded)"


# ------------------------------------------------------------------ the view
def _table(columns: list[str], rows: list[dict], *, cls: str = "", **data: str) -> dict:
    return {"columns": columns, "rows": rows, "cls": cls, "data": data}


def _row(key: str, labels: dict[str, str], cells: list[dict], *, ref: bool = False) -> dict:
    return {"key": key, "label": labels.get(key, key), "cells": cells, "ref": ref}


def _cell(text: str, cls: str = "", *, ci: bool = False) -> dict:
    return {"text": text, "cls": cls, "ci": ci}


def system_order(doc: dict, variable: str, region: str) -> list[str]:
    """The systems of ``variable`` in ``region``, lowest (best) mean CRPS first, as ``enspp
    evaluate`` prints them (:func:`evaluation.report.headline_rows`); a system without a CRPS
    last, ties in the configuration's order."""
    rows = doc["variables"][variable]["headline"][region]
    crps = {r["system"]: r.get("crps") for r in rows}
    return sorted(crps, key=lambda s: (crps[s] is None, crps[s] if crps[s] is not None else 0.0))


def headline_view(doc: dict, variable: str, region: str) -> dict:
    """The headline table of ``variable`` in ``region``: one row per system, best CRPS first."""
    v = doc["variables"][variable]
    ref = doc["reference"]
    labels = labels_of(doc)
    u = units_text(v.get("units"))
    ci = (v.get("ci") or "").split(" ")[0] or "CI"
    columns = ["system", f"CRPS ({u})", "CRPS skill vs reference", f"{ci} interval", "DM p-value",
               f"RMSE ({u})", f"bias ({u})", "spread/skill"]
    rows = []
    by_system = {r["system"]: r for r in v["headline"][region]}
    for s in system_order(doc, variable, region):
        r = by_system[s]
        is_ref = s == ref
        rows.append(_row(s, labels, [
            _cell(_f(r.get("crps"))),
            _cell("—" if is_ref else _pct(r.get("skill")), skill_class(r, is_reference=is_ref)),
            _cell("reference") if is_ref else
            _cell(f"[{_pct(r.get('skill_low'))}, {_pct(r.get('skill_high'))}]", ci=True),
            _cell("" if is_ref else _p(r.get("dm_pvalue"))),
            _cell(_f(r.get("rmse"))), _cell(_f(r.get("bias"))),
            _cell(_f(r.get("spread_skill"), 2))], ref=is_ref))
    return _table(columns, rows, cls="headline", variable=variable, region=region)


def _figure(src: str | None, alt: str, prefix: str, caption: str = "") -> dict | None:
    return None if not src else {"src": prefix + src, "alt": alt, "caption": caption}


def nan_dropped_text(counts: dict[str, int], labels: dict[str, str]) -> str:
    """Points left out for a missing value (NaN), in words: ``missing values (NaN): 2 points
    left out of every system's scores`` where the counts agree, else each system by its label."""
    n = {k: int(v) for k, v in counts.items()}
    if len(set(n.values())) == 1:
        c = next(iter(n.values()))
        return f"missing values (NaN): {c} point{'s' if c != 1 else ''} left out of every system's scores"
    return "missing values (NaN), points left out: " + ", ".join(
        f"{labels.get(k, k)} {c}" for k, c in n.items() if c)


def _variable_view(doc: dict, variable: str, uid: str, prefix: str) -> dict:
    v = doc["variables"][variable]
    labels = labels_of(doc)
    plots = v.get("plots", {})
    hours = [float(h) for h in v.get("lead_hours", [])]
    u = units_text(v.get("units"))
    tail = doc.get("twcrps_tail", "upper")
    regions = []
    for region in v["regions"]:
        order = system_order(doc, variable, region)  # every table of the region: best first
        by_lead = None
        if len(hours) > 1:  # a lead-time axis only where there are several lead times
            by_lead = _table(["system", *[f"+{h:g} h" for h in hours]], [
                _row(s, labels, [_cell(_f(x)) for x in v["by_lead"][region][s].get("crps", [])])
                for s in order if s in v["by_lead"][region]], cls="by-lead")
        tw = v.get("twcrps", {}).get(region, {})
        twcrps = None
        if tw:
            twcrps = _table(["system", *[twcrps_text(lbl, units=v.get("units", ""), tail=tail)
                                         for lbl in tw]],
                            [_row(s, labels, [_cell(_f(tw[lbl].get(s))) for lbl in tw])
                             for s in order], cls="twcrps")
        ee = v.get("eecrps", {}).get(region, {})
        eecrps = None
        if ee:
            eecrps = _table(["system", f"EECRPS ({u})"],
                            [_row(s, labels, [_cell(_f(ee.get(s)))]) for s in order],
                            cls="eecrps")
        figures = [f for f in (
            _figure(plots.get("skill_by_lead", {}).get(region), f"skill by lead {variable} {region}",
                    prefix, "CRPS skill by lead time, with the bootstrap interval"),
            _figure(plots.get("spread_skill", {}).get(region), f"spread/skill {variable} {region}",
                    prefix, "spread/skill ratio (1 = calibrated), RMSE and spread by lead time"),
            _figure(plots.get("histograms", {}).get(region), f"rank histograms {variable} {region}",
                    prefix, "rank (ensembles) and PIT (distributions) histograms, lead times "
                            "pooled; flat = calibrated")) if f is not None]
        regions.append({"tab": region, "box": region_boxes(doc).get(region, ""),
                        "headline": headline_view(doc, variable, region),
                        "by_lead": by_lead, "twcrps": twcrps, "eecrps": eecrps,
                        "figures": figures})
    info = (f"{v['init_count']} init times · {hours_text(hours)} · CRPS estimator: "
            f"{v['estimator']} · {v.get('ci', '')} · {v.get('dm_test', '')}")
    if any(v.get("nan_dropped", {}).values()):
        info += f" · {nan_dropped_text(v['nan_dropped'], labels)}"
    maps = _figure(plots.get("maps"), f"CRPS and skill maps {variable}", prefix,
                   f"mean CRPS ({u}) per grid point and CRPS skill against the reference")
    return {"tab": variable, "uid": uid, "info": info, "regions": regions, "maps": maps,
            "map_lead": f"{v.get('map_lead_hours', 0):g}", "units_text": u,
            "estimator": v.get("estimator", "")}


def _case_view(doc: dict, c: dict, prefix: str) -> dict:
    labels = labels_of(doc)
    ref = doc["reference"]
    units = doc.get("variables", {}).get(c["variable"], {}).get("units", "") or c.get("units", "")
    facts = [("variable", f"{c['variable']} ({units_text(units)})"), ("box", c["box_text"]),
             ("valid times", f"{time_text(c['window']['start'])} – "
                             f"{time_text(c['window']['end'])}")]
    if c.get("threshold") is not None:
        facts.append(("threshold", f"{c['threshold']:g} {units}".rstrip()))
    facts.append(("how chosen", c["how_chosen"]))
    if c.get("notes"):
        facts.append(("notes", c["notes"]))
    table = None
    if c.get("crps"):
        table = _table(
            ["system", f"CRPS in box and window ({units_text(units)}; {c['crps_estimator']})",
             "improvement vs reference"],
            [_row(s, labels, [_cell(_f(val)),
                              _cell("—" if s == ref else _imp(c["improvement_pct"].get(s)),
                                    _imp_class(c["improvement_pct"].get(s), s == ref))],
                  ref=s == ref) for s, val in c["crps"].items()], cls="case-scores")
    series = c.get("series")
    if series:  # station data: a time series per station instead of maps
        n = len(series["stations"])
        facts.insert(2, ("stations in the box", _station_list(series["stations"])))
        return {"id": c["id"], "name": c["name"], "status": c["status"],
                "status_text": c["status"].replace("_", " "), "facts": facts,
                "dilemma": bool(c.get("selected_on_outcome")), "message": c.get("message") or "",
                "table": table, "series": _series_view(series, labels, units, c.get("threshold")),
                "series_note": (f"first {MAX_CASE_STATIONS} of {n} stations shown; scores.json holds "
                                "them all" if n > MAX_CASE_STATIONS else ""),
                "figure": _figure(c.get("plot"), f"case {c['id']}", prefix,
                                  "observed (black) and each system's mean with one spread either "
                                  "side; the shortest lead per valid time")}
    return {"id": c["id"], "name": c["name"], "status": c["status"],
            "status_text": c["status"].replace("_", " "), "facts": facts,
            "dilemma": bool(c.get("selected_on_outcome")), "message": c.get("message") or "",
            "table": table, "series": None, "series_note": "",
            "figure": _figure(c.get("plot"), f"case {c['id']}", prefix,
                              "every column shares one colour scale; dashed: the case's box")}


def _station_list(stations: list[dict]) -> str:
    """``Magdeburg 10361 (52.10°N, 11.60°E)``, comma-separated (the first few, then a count)."""
    def one(st: dict) -> str:
        name = st.get("name")
        head = f"{name} {st['id']}" if name and name != st["id"] else st["id"]
        if st.get("latitude") is None or st.get("longitude") is None:
            return head
        return f"{head} ({lat_text(st['latitude'], 2)}, {lon_text(st['longitude'], 2)})"
    shown = ", ".join(one(st) for st in stations[:MAX_CASE_STATIONS])
    more = len(stations) - MAX_CASE_STATIONS
    return shown + (f" and {more} more" if more > 0 else "")


def _series_view(series: dict, labels: dict[str, str], units: str,
                 threshold: float | None) -> list[dict]:
    """Per station (the first :data:`MAX_CASE_STATIONS`): a table of its valid times, the
    observation and each system's mean ± spread, with its CRPS (and P(> threshold)) below."""
    u = units_text(units)
    systems = series["systems"]
    n = len(series["valid_times"])
    out = []
    for st in series["stations"][:MAX_CASE_STATIONS]:
        def at(quantity: str, s: str | None = None, st=st) -> list:
            v = st.get(quantity) if s is None else st.get(quantity, {}).get(s)
            return v if v is not None else [None] * n
        columns = ["valid time", "lead", f"observed ({u})",
                   *[f"{labels.get(s, s)}: mean ± spread" for s in systems]]
        rows = []
        for k, t in enumerate(series["valid_times"]):
            cells = [{"text": time_text(t), "sub": ""}, {"text": f"+{series['lead_hours'][k]:g} h", "sub": ""},
                     {"text": _f(at("truth")[k], 1), "sub": ""}]
            for s in systems:
                sub = []
                if s in st.get("crps", {}):
                    sub.append(f"CRPS {_f(at('crps', s)[k], 2)}")
                if s in st.get("prob", {}) and threshold is not None:
                    p = at("prob", s)[k]
                    sub.append(f"P(> {threshold:g} {units}".rstrip() + f") {'–' if p is None else f'{100 * p:.0f}%'}")
                cells.append({"text": f"{_f(at('mean', s)[k], 1)} ± {_f(at('spread', s)[k], 1)}",
                              "sub": " · ".join(sub)})
            rows.append(cells)
        out.append({"title": _station_list([st]), "columns": columns, "rows": rows})
    return out


def _provenance_view(doc: dict) -> dict:
    p = doc.get("provenance", {})

    def text(t: Any, *, code: bool = False) -> dict:
        return {"text": "" if t is None else str(t), "code": code, "links": None}

    facts = [("created", text(time_text(p.get("created", "")))),
             ("git commit", text(p.get("git_commit"), code=True)),
             ("init times", text("; ".join(f"{k}: {d['count']} init times {time_text(d['first'])} – "
                                           f"{time_text(d['last'])}"
                                           for k, d in p.get("init_times", {}).items())))]
    labels = labels_of(doc)
    facts += [(labels.get(k, k), text(v, code=True)) for k, v in p.get("stores", {}).items()]
    facts.append(("versions", text(", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items()))))
    files = doc.get("files", {})
    if files:
        links = [("scores.json", "scores.json")] + [(n, n) for n in files.get("netcdf", {}).values()]
        facts.append(("files", {"text": "", "code": False, "links": links}))
    return {"facts": facts, "config_yaml": config_text(p.get("config", {}))}


def _pruned(x: Any) -> Any:
    """``x`` without unset (None) and empty entries: the configuration as a reader wants it."""
    if isinstance(x, dict):
        out = {k: _pruned(v) for k, v in x.items()}
        return {k: v for k, v in out.items() if v is not None and v != {} and v != []}
    if isinstance(x, list):
        return [_pruned(v) for v in x]
    return x


def evaluation_view(doc: dict, uid: str, prefix: str, tab: str | None = None) -> dict:
    """Everything the template shows of one scores document (``tab``: its name among
    several; :func:`dated_title` by default)."""
    variables = list(doc["variables"])
    labels = labels_of(doc)
    headline = []
    for v in variables:
        entry = doc["variables"][v]
        region = entry["regions"][0]
        headline.append({"variable": v, "region": region_heading(doc, region),
                         "leads": hours_text([float(h) for h in entry.get("lead_hours", [])]),
                         "units_text": f"units: {units_text(entry.get('units'))}",
                         "table": headline_view(doc, v, region)})
    estimators = sorted({doc["variables"][v].get("estimator", "") for v in variables} - {""})
    cases = [_case_view(doc, c, prefix) for c in doc.get("cases", []) if c["status"] != "out_of_range"]
    skipped = [c["message"] for c in doc.get("cases", []) if c["status"] == "out_of_range"]
    return {"uid": uid, "tab": tab or dated_title(doc), "reference_label": labels.get(doc["reference"], doc["reference"]),
            "period": period_text(doc),
            "headline": headline, "estimators": "; ".join(estimators),
            "problems": list(doc.get("problems", [])), "notes": list(doc.get("notes", [])),
            "variables": [_variable_view(doc, v, f"{uid}-{i}", prefix) for i, v in enumerate(variables)],
            "cases": cases, "cases_skipped": skipped, "provenance": _provenance_view(doc)}


def render_html(docs: list[dict], *, prefixes: list[str] | None = None, title: str | None = None,
                tabs: list[str] | None = None) -> str:
    """The dashboard page for one or several evaluations (``prefixes``: where each one's
    plots are, relative to the page; ``tabs``: their names, :func:`dated_title` by default)."""
    if not docs:
        raise EnsppError("render_html: no evaluation to show")
    prefixes = prefixes or [""] * len(docs)
    tabs = tabs or [dated_title(d) for d in docs]
    if len(docs) == 1:
        page_title = title or dated_title(docs[0])
        sub = _subtitle(docs[0])
    else:
        page_title = title or "enspp: comparison of evaluations"
        sub = " · ".join(tabs)
    views = [evaluation_view(d, f"e{i}", prefixes[i], tabs[i]) for i, d in enumerate(docs)]
    return _environment().get_template("dashboard.html").render(
        page_title=page_title, subtitle=sub, evaluations=views,
        css=(TEMPLATES / "dashboard.css").read_text(), js=(TEMPLATES / "dashboard.js").read_text())


def dated_title(doc: dict) -> str:
    """The evaluation's title; a report of the last N days (``evaluate.recent_days``, whose
    period moves with the data) adds the dates of its init times: ``enspp: the last 30 days
    (init times 2016-12-01 – 2016-12-29)``."""
    p = doc.get("provenance", {})
    spans = [d for d in p.get("init_times", {}).values() if d.get("count")]
    if not (p.get("config") or {}).get("recent_days") or not spans:
        return doc["title"]
    first = min(d["first"] for d in spans)[:10]
    last = max(d["last"] for d in spans)[:10]
    return f"{doc['title']} (init times {first} – {last})"


def _subtitle(d: dict) -> str:
    p = d.get("provenance", {})
    n = len(d.get("systems", []))
    ref = labels_of(d).get(d["reference"], d["reference"])
    return (f"{n} systems · reference: {ref} · {period_text(d)} · created "
            f"{time_text(p.get('created', ''))}")


def write_dashboard(docs: list[dict], out_dir: Path, *, prefixes: list[str] | None = None,
                    title: str | None = None, tabs: list[str] | None = None) -> Path:
    """Write ``out_dir/index.html`` for ``docs`` (scores documents); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_html(docs, prefixes=prefixes, title=title, tabs=tabs), encoding="utf-8")
    return path


def _distinct_tabs(names: list[str], dirs: list[Path]) -> list[str]:
    """Tab names told apart: evaluations sharing a title (the default ``enspp evaluation``, two
    models scored alike) add their directory's name, then a number if that is shared too."""
    tabs = [n if names.count(n) == 1 else f"{n} ({d.name})" for n, d in zip(names, dirs, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for t in tabs:
        seen[t] = seen.get(t, 0) + 1
        out.append(t if tabs.count(t) == 1 else f"{t} #{seen[t]}")
    return out


def write_combined_dashboard(dirs: list[Path | str], out: Path | str, *,
                             title: str | None = None) -> Path:
    """:func:`combine_dashboards` into ``out`` as a directory of its own (``enspp evaluate
    --combine``): written beside it and swapped in, and only over a directory that is
    absent, empty or an earlier combined dashboard (:mod:`enspp.data.output_dir`); anything
    else (a user's folder, one of the evaluations combined) is refused in one line."""
    from enspp.data import durable, output_dir

    out = Path(out).resolve()
    output_dir.check_replaceable(out, kind="dashboard", what="combined dashboard",
                                 legacy=_legacy_combined)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        index = combine_dashboards(dirs, tmp, title=title)
        output_dir.write_manifest(tmp, kind="dashboard")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    durable.recover_tree(out)
    durable.swap_tree(tmp, out)
    return out / index.relative_to(tmp)


def _legacy_combined(out: Path) -> bool:
    """A combined dashboard written before manifests: ``index.html`` and at least one folder,
    each holding a ``scores.json`` of the report schema (with ``plots/``), nothing else."""
    folders = [p for p in out.iterdir() if p.name != "index.html"]
    if not (out / "index.html").is_file() or not folders:
        return False
    for p in folders:
        try:
            read_scores(p)
        except (OSError, ValueError, EnsppError):
            return False
    return True


def combine_dashboards(dirs: list[Path | str], out: Path | str, *, title: str | None = None) -> Path:
    """One dashboard comparing several evaluation directories (each with ``scores.json``):
    their plots and scores are copied under ``out/<slug>/`` so ``out`` is self-contained.
    Each is a tab named by its title (:func:`dated_title`), and by its directory's name where
    titles are shared."""
    if len(dirs) < 1:
        raise EnsppError("combine_dashboards: give at least one evaluation directory")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs, prefixes, used = [], [], set()
    for d in map(Path, dirs):
        doc = read_scores(d)
        slug = _slug(dated_title(doc))
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
    tabs = _distinct_tabs([dated_title(doc) for doc in docs], [Path(d).resolve() for d in dirs])
    return write_dashboard(docs, out, prefixes=prefixes, title=title, tabs=tabs)
