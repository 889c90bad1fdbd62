"""Write an evaluation's report: scores as NetCDF and JSON, PNG plots, and the dashboard.

Layout of ``DIR``::

    DIR/index.html              the skill dashboard (evaluation.dashboard)
    DIR/scores.json             everything the dashboard shows (schema ``enspp-evaluation/1``)
    DIR/scores_<variable>.nc    scores per (system, region, lead_time), CRPS maps, histograms
    DIR/plots/*.png             skill by lead, spread/skill, rank/PIT histograms, maps, cases

Every CRPS is written with its estimator in the attributes (``crps_estimator``).  A plot or
case that cannot be made is reported in ``scores.json`` (``problems``) and the rest is still
written.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from enspp.data.errors import EnsppError
from enspp.data.schema import LEAD_TIME

SCHEMA = "enspp-evaluation/1"
HEADLINE_FIELDS = ("crps", "skill", "skill_low", "skill_high", "dm_pvalue", "rmse", "bias",
                   "spread_skill")
BY_LEAD_FIELDS = ("crps", "skill", "skill_low", "skill_high", "rmse", "mae", "bias", "spread",
                  "spread_skill")


def _num(x) -> float | None:
    """A JSON-safe float (NaN and inf become null)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


def scores_document(result) -> dict:
    """The JSON document of an :class:`~evaluation.evaluate.EvaluationResult` (no plots yet)."""
    from enspp.evaluation.labels import describe_systems

    cfg = result.config
    described = describe_systems(cfg)
    doc: dict = {
        "schema": SCHEMA,
        "title": cfg.title,
        "reference": cfg.reference,
        "crps_estimator": cfg.crps_estimator,
        "twcrps_tail": cfg.twcrps.tail,
        "systems": [{"key": s.key, "name": s.name, "type": s.type, "path": str(s.path),
                     "members": s.members, "label": described[s.key]["label"],
                     "input_members": described[s.key]["members"]} for s in cfg.systems],
        "variables": {},
        "cases": [c.to_dict() for c in result.cases],
        "provenance": result.provenance,
        "problems": [],
        "notes": list(result.notes),
    }
    for v, ds in result.scores.items():
        regions = [str(r) for r in ds.region.values]
        systems = [str(s) for s in ds.system.values]
        entry = {
            "units": ds.attrs.get("units", ""),
            "estimator": ds.attrs.get("crps_estimator", ""),
            "ci": ds.attrs.get("ci", ""),
            "dm_test": ds.attrs.get("dm_test", ""),
            "regions": regions,
            "systems": systems,
            "lead_hours": (ds[LEAD_TIME].values / np.timedelta64(1, "h")).tolist(),
            "init_count": int(ds["init_count"]),
            "nan_dropped": {k[len("nan_dropped_"):]: int(val) for k, val in ds.attrs.items()
                            if k.startswith("nan_dropped_")},
            "headline": {}, "by_lead": {}, "twcrps": {}, "plots": {},
        }
        tw = [n for n in ds.data_vars if n.startswith("twcrps_") and n.endswith("_all")]
        for r in regions:
            rows = []
            for s in systems:
                row = {"system": s}
                for f in HEADLINE_FIELDS:
                    name = f"{f}_all"
                    row[f] = _num(ds[name].sel(system=s, region=r)) if name in ds else None
                rows.append(row)
            entry["headline"][r] = rows
            entry["by_lead"][r] = {s: {f: [_num(x) for x in ds[f].sel(system=s, region=r).values]
                                       for f in BY_LEAD_FIELDS if f in ds} for s in systems}
            entry["twcrps"][r] = {n[len("twcrps_"):-len("_all")]: {s: _num(ds[n].sel(system=s, region=r))
                                                                 for s in systems} for n in tw}
            if "eecrps_all" in ds:
                entry.setdefault("eecrps", {})[r] = {s: _num(ds["eecrps_all"].sel(system=s, region=r))
                                                     for s in systems}
        doc["variables"][v] = entry
    return doc


def write_netcdf(result, out_dir: Path) -> dict[str, str]:
    """``scores_<variable>.nc`` per variable; returns {variable: file name}."""
    files = {}
    for v, ds in result.scores.items():
        vs = result.variables[v]
        out = ds.copy()
        out["crps_map"] = vs.crps_map
        for k, h in vs.histograms.items():
            out[f"histogram_{k}"] = h.rename({"bin": f"bin_{k}"})
            out[f"histogram_{k}"].attrs["kind"] = vs.hist_kind[k]
        for name in out.data_vars:
            if name.startswith(("crps", "twcrps", "eecrps", "skill")):
                out[name].attrs["crps_estimator"] = ds.attrs.get("crps_estimator", "")
        out = out.assign_coords(system=out.system.values.astype(str).astype(object),
                                region=out.region.values.astype(str).astype(object))
        out.attrs.update({"title": result.config.title, "schema": SCHEMA,
                          "git_commit": result.provenance.get("git_commit", ""),
                          "created": result.provenance.get("created", "")})
        name = f"scores_{_safe_name(v)}.nc"
        out.to_netcdf(out_dir / name)
        files[v] = name
    return files


def write_plots(result, doc: dict, out_dir: Path) -> None:
    """All PNGs; paths (relative to ``out_dir``) go into ``doc``; failures into ``problems``.

    Lines over lead time (skill and spread/skill by lead) are drawn only for two or more
    lead times: with one, the headline table holds the same numbers.  Maps and case panels
    draw the coastline of ``config.land_sea_mask`` when it is set."""
    from enspp.evaluation import plots  # matplotlib: imported only when plots are drawn

    pdir = out_dir / "plots"
    labels = {s["key"]: s.get("label") or s["key"] for s in doc["systems"]}
    lsm = _land_sea_mask(result, doc)
    for v, ds in result.scores.items():
        entry = doc["variables"][v]
        vs = result.variables[v]
        sv = _safe_name(v)
        for key in ("skill_by_lead", "spread_skill", "histograms"):
            entry["plots"][key] = {}
        several_leads = ds.sizes.get(LEAD_TIME, 1) > 1
        for r in entry["regions"]:
            sr = _safe_name(r)
            if several_leads:
                with _attempt(doc, f"skill by lead of {v}/{r}"):
                    entry["plots"]["skill_by_lead"][r] = _rel(
                        plots.skill_by_lead(ds, r, pdir / f"skill_{sv}_{sr}.png", labels=labels),
                        out_dir)
                with _attempt(doc, f"spread/skill of {v}/{r}"):
                    entry["plots"]["spread_skill"][r] = _rel(
                        plots.spread_skill(ds, r, pdir / f"spread_skill_{sv}_{sr}.png",
                                           labels=labels), out_dir)
            if vs.histograms:
                with _attempt(doc, f"histograms of {v}/{r}"):
                    entry["plots"]["histograms"][r] = _rel(
                        plots.histograms(vs.histograms, vs.hist_kind, r, v,
                                         pdir / f"rank_{sv}_{sr}.png", labels=labels), out_dir)
        if "station" in vs.crps_map.dims:  # no maps of station data (the scores are per station)
            continue
        lead_h = vs.crps_map[LEAD_TIME].values / np.timedelta64(1, "h")
        want = result.config.map_lead_time
        j = int(np.argmin(np.abs(lead_h - want))) if want is not None else 0
        entry["map_lead_hours"] = float(lead_h[j])
        with _attempt(doc, f"maps of {v}"):
            entry["plots"]["maps"] = _rel(plots.crps_and_skill_maps(
                vs.crps_map.isel({LEAD_TIME: j}), reference=result.config.reference,
                variable=f"{v} at +{lead_h[j]:g} h", units=vs.units,
                estimator=vs.crps_map.attrs.get("estimator", result.config.crps_estimator),
                path=pdir / f"maps_{sv}.png", labels=labels, lsm=lsm), out_dir)
    for case_doc, case in zip(doc["cases"], result.cases, strict=True):
        if case.series is not None:  # station data: lines over the window, not maps
            units = result.variables[case.case.variable].units if case.case.variable in result.variables else ""
            systems = [s for s in (x.key for x in result.config.systems) if f"{s}_mean" in case.series]
            with _attempt(doc, f"case {case.case.id}"):
                case_doc["plot"] = _rel(case_series_plot(
                    case.series, systems=systems, title=f"{case.case.name} — {case.case.variable}",
                    threshold=case.case.threshold, units=units,
                    path=pdir / f"case_{_safe_name(case.case.id)}.png", labels=labels), out_dir)
            continue
        if case.maps is None:
            continue
        units = result.variables[case.case.variable].units if case.case.variable in result.variables else ""
        title = (f"{case.case.name} — {case.case.variable}, valid {case.map_valid_time} "
                 f"(+{case.map_lead_hours:g} h)")
        systems = [s for s in (x.key for x in result.config.systems) if f"{s}_mean" in case.maps]
        with _attempt(doc, f"case {case.case.id}"):
            case_doc["plot"] = _rel(plots.case_panel(
                case.maps, systems=systems, title=title, threshold=case.case.threshold, units=units,
                box=case.case.box.model_dump(), path=pdir / f"case_{_safe_name(case.case.id)}.png",
                labels=labels, lsm=lsm), out_dir)


#: stations drawn in a station case's figure (and shown in its dashboard tables); scores.json
#: holds them all
MAX_CASE_STATIONS = 6


def case_series_plot(series, *, systems: list[str], title: str, threshold: float | None, units: str,
                     path: Path, labels: dict[str, str] | None = None) -> Path:
    """A station case (:func:`evaluation.cases._case_series`): per station (a panel each, the
    first :data:`MAX_CASE_STATIONS`) the truth and each system's mean with a band of one
    spread (standard deviation) either side, over the valid times of the window."""
    import matplotlib.dates as mdates

    from enspp.evaluation import plots  # matplotlib: imported only when plots are drawn
    from enspp.evaluation.labels import lat_text, lon_text

    plt = plots.plt
    n = min(series.sizes["station"], MAX_CASE_STATIONS)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 0.6, 3.0 * rows + 0.9), squeeze=False,
                             sharex=True, layout="constrained")
    t = series["valid_time"].values
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.set_visible(False)
            continue
        st = series.isel(station=k)
        for i, s in enumerate(systems):
            colour = plots.system_colour(s, i)
            mean = st[f"{s}_mean"].values
            ax.plot(t, mean, color=colour, lw=1.4, marker=".", label=plots._label(labels, s))
            spread = st[f"{s}_spread"].values
            if np.isfinite(spread).any():
                ax.fill_between(t, mean - spread, mean + spread, color=colour, alpha=0.15, lw=0)
        if "truth" in st:
            ax.plot(t, st["truth"].values, color="black", lw=1.8, marker="o", ms=3.5, label="observed")
        if threshold is not None:
            ax.axhline(threshold, color="#b42318", ls="--", lw=0.9, label=f"threshold {threshold:g}")
        name = str(st["station_name"].values) if "station_name" in st.coords else ""
        sid = str(st["station"].values) if "station" in st.coords else str(k)
        where = (f" ({lat_text(float(st['latitude']), 2)}, {lon_text(float(st['longitude']), 2)})"
                 if "latitude" in st.coords and "longitude" in st.coords else "")
        ax.set_title(f"{name + ' ' if name and name != sid else ''}{sid}{where}", fontsize=9)
        if k % cols == 0:
            ax.set_ylabel(units or "value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if t.size <= 14:  # a tick at each valid time
        axes[-1][0].set_xticks(t)
    for ax in axes.ravel():
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d %H UTC"))
        for lab in ax.get_xticklabels():
            lab.set_rotation(30)
            lab.set_ha("right")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=8,
               frameon=False)
    more = series.sizes["station"] - n
    fig.suptitle(title + (f" (first {n} of {series.sizes['station']} stations)" if more > 0 else "")
                 + "\nmean ± one spread, shortest lead per valid time", fontsize=10)
    return plots._save(fig, path)


def _land_sea_mask(result, doc: dict):
    """The ``lsm`` field of ``config.land_sea_mask`` on the evaluation's grid, or None (a
    file that cannot be used is reported in the problems: maps are drawn without coast)."""
    path = result.config.land_sea_mask
    if path is None or not result.variables:
        return None
    import xarray as xr

    from enspp.data.schema import LATITUDE, LONGITUDE
    from enspp.evaluation.systems import check_same_grid, open_dataset

    template = next(iter(result.variables.values())).crps_map
    try:
        ds = xr.open_dataset(path) if Path(path).is_file() else open_dataset(Path(path))
        name = next((n for n in ("lsm", "land_sea_mask") if n in ds.data_vars), None)
        if name is None:
            raise KeyError(f"no 'lsm' variable (variables: {sorted(map(str, ds.data_vars))})")
        lsm = ds[name].squeeze(drop=True)
        check_same_grid(template, lsm, what="land-sea mask vs evaluation grid")
        return lsm.assign_coords({LATITUDE: template[LATITUDE].values,
                                  LONGITUDE: template[LONGITUDE].values}).load()
    except (OSError, ValueError, KeyError) as e:
        doc["problems"].append(f"land-sea mask {path}: not used, maps have no coastline "
                               f"({type(e).__name__}: {e})")
        return None


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


@contextlib.contextmanager
def _attempt(doc: dict, what: str):
    """Draw one figure; a failure is recorded in the report's problems, not raised."""
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
        doc["problems"].append(f"{what}: could not be drawn ({type(e).__name__}: {e})")


def write_json(doc: dict, path: Path) -> None:
    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (float, np.floating)):
            return _num(o)
        if isinstance(o, np.integer):
            return int(o)
        return o

    path.write_text(json.dumps(clean(doc), indent=1, sort_keys=False))


def write_report(result, out_dir: Path) -> dict[str, str]:
    """Write everything into ``out_dir`` and return ``{kind: path}`` of the main files."""
    from enspp.evaluation.dashboard import write_dashboard

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = scores_document(result)
    # a catalogue case the data do not cover is not a fault of the run: listed apart, not as a problem
    doc["cases_not_covered"] = [c["message"] for c in doc["cases"] if c["status"] == "out_of_range"]
    nc = write_netcdf(result, out_dir)
    doc["files"] = {"netcdf": nc, "json": "scores.json"}
    write_plots(result, doc, out_dir)
    write_json(doc, out_dir / "scores.json")
    index = write_dashboard([doc], out_dir)
    files = {"index": str(index), "json": str(out_dir / "scores.json"),
             **{f"netcdf_{v}": str(out_dir / n) for v, n in nc.items()}}
    result.out_dir = out_dir
    result.files = files
    return files


def read_scores(path: Path) -> dict:
    """Read ``scores.json`` (a file or an evaluation directory); checks the schema."""
    p = Path(path)
    if p.is_dir():
        p = p / "scores.json"
    if not p.is_file():
        raise FileNotFoundError(f"no scores.json at {p}: is this an evaluation directory?")
    doc = json.loads(p.read_text())
    if doc.get("schema") != SCHEMA:
        raise EnsppError(f"{p}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    return doc


# ------------------------------------------------------------------ the headline as text
def headline_rows(doc: dict, *, region: str = "global") -> list[dict]:
    """Rows ``{variable, region, system, label, crps, skill, spread_skill, units, estimator,
    reference}`` of a scores document, best CRPS first per variable (``region``, else the
    first one)."""
    labels = {s["key"]: s.get("label") or s["key"] for s in doc.get("systems", [])}
    rows = []
    for v, entry in doc.get("variables", {}).items():
        reg = region if region in entry.get("headline", {}) else next(iter(entry["headline"]))
        for r in sorted(entry["headline"][reg],
                        key=lambda r: math.inf if r.get("crps") is None else float(r["crps"])):
            rows.append({"variable": v, "region": reg, "system": r["system"],
                         "label": labels.get(r["system"], r["system"]),
                         "crps": r.get("crps"), "skill": r.get("skill"),
                         "spread_skill": r.get("spread_skill"), "units": entry.get("units", ""),
                         "estimator": entry.get("estimator", ""),
                         "reference": doc.get("reference", "raw_full")})
    return rows


def format_table(rows: list[dict], *, reference: str | None = None) -> str:
    """The headline table as plain text (what ``enspp demo`` and ``enspp evaluate`` print):
    systems by their labels, CRPS with its units, skill against ``reference`` (by default the
    rows' own, :func:`headline_rows`; ``raw_full`` for rows that do not say)."""
    if not rows:
        return "(no scores)"
    reference = reference or rows[0].get("reference") or "raw_full"
    width = max(len(r.get("label") or r["system"]) for r in rows) + 2
    units = {r.get("units") or "" for r in rows}
    one_unit = len(units) == 1 and "" not in units
    crps_head = f"CRPS ({next(iter(units))})" if one_unit else "CRPS"
    lines = [f"{'variable':<9}{'system':<{width}}{crps_head:>10}{'' if one_unit else '  units   '}"
             f"  {'skill vs ' + reference:>18}  {'spread/skill':>12}"]
    for r in rows:
        skill = "" if r["skill"] is None or r["system"] == reference else f"{100 * r['skill']:+.1f} %"
        ss = "" if r["spread_skill"] is None else f"{r['spread_skill']:.2f}"
        crps = "n/a" if r["crps"] is None else f"{r['crps']:.4f}"
        u = "" if one_unit else f"  {r.get('units') or '?':<8}"
        lines.append(f"{r['variable']:<9}{r.get('label') or r['system']:<{width}}{crps:>10}{u}  "
                     f"{skill:>18}  {ss:>12}")
    est = {r["estimator"] for r in rows if r["estimator"]}
    if est:
        lines.append("CRPS estimators: " + "; ".join(sorted(est)))
    return "\n".join(lines)
