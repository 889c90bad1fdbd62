"""``enspp inspect STORE``: what a store holds, for people (text) and machines (JSON).

Kind and schema version, dims and sizes, variables (units, levels, long names), the records
(range, frequency, init times missing from the regular sequence, unfinished ones), absent
fields per variable and lead time (and for a station forecast store the init times at which
only some members hold values), members, the grid or stations, bytes on disk, and a
summary of the provenance log (sources, centres, readers, when they were ingested).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from enspp.data.schema import (
    ANALYSIS_DIM_ORDER,
    FORECAST_DIM_ORDER,
    LATITUDE,
    LEAD_TIME,
    LEVEL,
    LONGITUDE,
    MEMBER,
    STATION,
)
from enspp.data.store import CENTRES_ATTR, StoreError, is_store, record_dim

_SHOW = 5


def inspect_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``enspp inspect`` reports, as a JSON-able dict."""
    from enspp.data.store_meta import open_meta

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"store {root} does not exist")
    if not is_store(root):
        raise StoreError(f"{root} is not an enspp store (see `enspp validate {root}`)")
    meta = open_meta(root)
    rec = record_dim(meta.kind)
    group = meta.group
    done = meta.complete
    complete = np.sort(meta.records[done])
    info: dict[str, Any] = {
        "path": str(root), "kind": meta.kind, "schema_version": meta.version,
        "conventions": meta.attrs.get("Conventions"),
        "centres": str(meta.attrs.get(CENTRES_ATTR, "")).split(),
        "record_dim": rec,
    }
    sizes = {rec: int(len(complete))}
    coords: dict[str, np.ndarray] = {}
    for name, arr in group.arrays():
        dims = tuple(arr.metadata.dimension_names or ())
        if dims == (name,) and name not in (rec, LEAD_TIME):
            coords[name] = np.asarray(arr[:])
            sizes[name] = int(arr.shape[0])
    if meta.leads is not None:
        sizes[LEAD_TIME] = len(meta.leads)
    order = list(FORECAST_DIM_ORDER if meta.kind == "forecast" else ANALYSIS_DIM_ORDER)
    info["sizes"] = dict(sorted(sizes.items(), key=lambda kv: order.index(kv[0])
                                if kv[0] in order else len(order)))
    info["records"] = _records(meta.records, done, rec)
    leads = None if meta.leads is None else np.sort(meta.leads)
    if leads is not None:
        info["lead_times_hours"] = [_num(x / np.timedelta64(1, "h")) for x in leads]
    info["variables"] = _variables(meta, group, coords, done, rec)
    if meta.kind == "forecast" and STATION in coords and MEMBER in coords:
        _members_missing(root, info["variables"], rec)
    if MEMBER in coords:
        m = coords[MEMBER].astype(int)
        info["members"] = {"count": int(m.size), "numbers": _span(m),
                           "control": bool((m == 0).any())}
    info["grid"] = _grid(coords, group)
    info["bytes_on_disk"] = _bytes(root)
    info["provenance"] = _provenance(meta)
    return info


def _records(records: np.ndarray, done: np.ndarray, rec: str) -> dict[str, Any]:
    complete = np.sort(records[done])
    out: dict[str, Any] = {"complete": int(done.sum()), "unfinished": int((~done).sum())}
    if (~done).any():
        out["unfinished_examples"] = [_iso(t) for t in np.sort(records[~done])[:_SHOW]]
    if not len(complete):
        return out
    out["first"], out["last"] = _iso(complete[0]), _iso(complete[-1])
    if len(complete) > 1:
        # the frequency is the smallest step; a longer step that is a whole number of it
        # leaves records missing (a twice-weekly 3/4-day schedule has none missing)
        diffs = np.diff(complete).astype("timedelta64[s]").astype(np.int64)
        step = int(diffs[diffs > 0].min())
        out["frequency"] = _duration(step)
        distinct = sorted(set(diffs[diffs > 0].tolist()))
        if 1 < len(distinct) <= 3 and all(d % step for d in distinct[1:]):
            out["steps"] = [_duration(d) for d in distinct]  # e.g. twice weekly: 3 and 4 days
        gaps = np.flatnonzero((diffs > step) & (diffs % step == 0))
        missing = [complete[i] + np.timedelta64(k * step, "s")
                   for i in gaps for k in range(1, int(diffs[i] // step))]
        out["missing"] = len(missing)
        if missing:
            out["missing_examples"] = [_iso(t) for t in missing[:_SHOW]]
    return out


def _variables(meta: Any, group: Any, coords: dict[str, np.ndarray], done: np.ndarray,
               rec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lead_order = None if meta.leads is None else np.argsort(meta.leads)
    for name in sorted(meta.variables):
        arr = group[name]
        attrs = dict(arr.attrs)
        dims = list(arr.metadata.dimension_names or ())
        entry: dict[str, Any] = {"units": attrs.get("units"), "dims": dims}
        for key in ("long_name", "standard_name"):
            if key in attrs:
                entry[key] = attrs[key]
        if LEVEL in dims and LEVEL in coords:
            entry["levels"] = [_num(x) for x in coords[LEVEL]]
        present = meta.present(name)[done]
        n = int(done.sum())
        if present.ndim == 2:
            absent = {}
            for j in lead_order:
                k = int((~present[:, j]).sum())
                if k:
                    absent[f"{_num(meta.leads[j] / np.timedelta64(1, 'h'))}h"] = k
            entry["fields"] = int(present.sum())
            entry["absent"] = absent
        else:
            entry["fields"] = int(present.sum())
            entry["absent"] = {"all": int(n - present.sum())} if n - present.sum() else {}
        out[name] = entry
    return out


#: station stores up to this many values are read to count init times missing some members
MEMBER_SCAN_LIMIT = 50_000_000


def _members_missing(root: Path, variables: dict[str, Any], rec: str) -> None:
    """For a station forecast store (small: read whole, up to :data:`MEMBER_SCAN_LIMIT`
    values a variable): per variable, the complete init times at which only some members
    hold values (``data.field_checks.members_missing``), as ``members_missing`` (a count)
    and ``members_missing_examples``."""
    from enspp.data.field_checks import members_missing
    from enspp.data.store import POINT_RECORDS_PER_CHUNK, open_store

    ds = open_store(root)
    for name, entry in variables.items():
        da = ds[name]
        if MEMBER not in da.dims or da.size > MEMBER_SCAN_LIMIT:
            continue
        n = da.sizes[rec]
        flags = np.concatenate([members_missing(da.isel({rec: slice(i, i + POINT_RECORDS_PER_CHUNK)}),
                                                record=rec)
                                for i in range(0, n, POINT_RECORDS_PER_CHUNK)]) if n else np.zeros(0, bool)
        entry["members_missing"] = int(flags.sum())
        if flags.any():
            entry["members_missing_examples"] = [_iso(t) for t in ds[rec].values[flags][:_SHOW]]


def _grid(coords: dict[str, np.ndarray], group: Any) -> dict[str, Any]:
    if STATION in coords:
        st = coords[STATION]
        out = {"type": "stations", "count": int(st.size),
               "names": [str(x) for x in st[:_SHOW]]}
        if "station_name" in group:
            out["station_names"] = [str(x) for x in np.asarray(group["station_name"][:_SHOW])]
        for name in ("latitude", "longitude", "elevation"):  # coordinates on 'station'
            if name in group and tuple(group[name].metadata.dimension_names or ()) == (STATION,):
                values = np.asarray(group[name][:], dtype=np.float64)
                if np.isfinite(values).any():
                    out[name] = [_num(np.nanmin(values)), _num(np.nanmax(values))]
        return out
    if LATITUDE in coords and LONGITUDE in coords:
        lat, lon = coords[LATITUDE], coords[LONGITUDE]
        out = {"type": "regular_ll", "shape": [int(lat.size), int(lon.size)],
               "latitude": [_num(lat[0]), _num(lat[-1])],
               "longitude": [_num(lon[0]), _num(lon[-1])]}
        if lat.size > 1 and lon.size > 1:
            out["resolution"] = [_num(abs(lat[1] - lat[0])), _num(abs(lon[1] - lon[0]))]
        return out
    return {"type": "unknown"}


def _provenance(meta: Any) -> dict[str, Any]:
    sources = meta.sources()
    times = sorted(s.ingested for s in sources if s.ingested)
    return {"sources": len(sources), "bytes_read": int(sum(s.size for s in sources)),
            "centres": sorted({c for s in sources for c in (s.centre or "").split()}),
            "readers": sorted({s.reader for s in sources if s.reader}),
            "first_ingested": times[0] if times else None,
            "last_ingested": times[-1] if times else None,
            "examples": [s.name for s in sorted(sources, key=lambda s: s.ingested)[:_SHOW]]}


def _bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _iso(t: np.datetime64) -> str:
    return pd.Timestamp(t).isoformat(timespec="minutes")


def _duration(seconds: int) -> str:
    td = pd.Timedelta(seconds=seconds)
    hours = td / pd.Timedelta(hours=1)
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"


def _num(x: Any) -> float | int:
    v = float(x)
    return int(v) if v.is_integer() else round(v, 6)


def _range(lo_hi: list[Any]) -> str:
    lo, hi = lo_hi
    return f"{lo}" if lo == hi else f"{lo}..{hi}"


def _span(values: np.ndarray) -> str:
    values = np.asarray(values)
    if values.size == 0:
        return "none"
    if values.dtype.kind in "iu" and np.array_equal(values, np.arange(values[0], values[0] + values.size)):
        return f"{values[0]}..{values[-1]}"
    if values.dtype.kind == "f":
        return f"{_num(values.min())}..{_num(values.max())}"
    shown = ", ".join(map(str, values[:_SHOW]))
    return shown + (f", ... ({values.size})" if values.size > _SHOW else "")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def format_inspect(info: dict[str, Any]) -> str:
    """The text ``enspp inspect`` prints."""
    rec = info["record_dim"]
    r = info["records"]
    lines = [f"store       {info['path']}",
             f"kind        {info['kind']} (schema version {info['schema_version']}"
             f"{', ' + info['conventions'] if info.get('conventions') else ''})",
             "dims        " + ", ".join(f"{k}={v}" for k, v in info["sizes"].items())]
    span = f"{r.get('first', '-')} .. {r.get('last', '-')}"
    line = f"{rec:<12}{r['complete']} complete, {span}"
    if "steps" in r:
        line += f", in steps of {' and '.join(r['steps'])}"
    elif "frequency" in r:
        line += f", every {r['frequency']}"
    lines.append(line)
    if r.get("missing"):
        lines.append(f"{'':12}{r['missing']} missing from that sequence, e.g. "
                     f"{', '.join(r['missing_examples'])}")
    if r.get("unfinished"):
        lines.append(f"{'':12}{r['unfinished']} unfinished (an interrupted ingest; hidden until "
                     f"re-run): {', '.join(r['unfinished_examples'])}")
    if "lead_times_hours" in info:
        lines.append(f"lead times  {', '.join(f'+{h} h' for h in info['lead_times_hours'])}")
    if "members" in info:
        m = info["members"]
        lines.append(f"members     {m['count']} ({m['numbers']}; control "
                     f"{'included' if m['control'] else 'absent'})")
    g = info["grid"]
    if g["type"] == "regular_ll":
        res = f", {g['resolution'][0]} x {g['resolution'][1]} deg" if "resolution" in g else ""
        lines.append(f"grid        regular lat/lon {g['shape'][0]} x {g['shape'][1]}{res}, "
                     f"latitude {g['latitude'][0]}..{g['latitude'][1]}, "
                     f"longitude {g['longitude'][0]}..{g['longitude'][1]}")
    elif g["type"] == "stations":
        names = [f"{i} {n}" if n and n != i else i
                 for i, n in zip(g["names"], g.get("station_names") or [""] * len(g["names"]))]
        more = ", ..." if g["count"] > len(names) else ""
        where = "".join(f", {k} {_range(g[k])}" for k in ("latitude", "longitude", "elevation")
                        if k in g)
        lines.append(f"stations    {g['count']} ({', '.join(names)}{more}){where}")
    lines.append("variables")
    for name, v in info["variables"].items():
        levels = f", levels {v['levels']} hPa" if "levels" in v else ""
        desc = f" {v['long_name']}" if "long_name" in v else ""
        absent = v.get("absent") or {}
        where = ("; absent: " + ", ".join(f"{k} x{n}" for k, n in absent.items())) if absent else ""
        n = v["fields"]
        lines.append(f"  {name:<10}{v['units']}{levels};{desc}; {n} field{'s' * (n != 1)}{where}")
        if v.get("members_missing"):
            k = v["members_missing"]
            lines.append(f"{'':12}{k} {rec.replace('_', ' ')}{'s' * (k != 1)} with members "
                         f"missing (only some members hold values), e.g. "
                         f"{', '.join(v['members_missing_examples'])}")
    p = info["provenance"]
    lines.append(f"on disk     {_size(info['bytes_on_disk'])}")
    first, last = (str(p[k] or "-")[:19] for k in ("first_ingested", "last_ingested"))
    lines.append(f"provenance  {p['sources']} source{'s' * (p['sources'] != 1)} "
                 f"({_size(p['bytes_read'])} read), centres "
                 f"{', '.join(p['centres']) or 'not recorded'}, ingested {first} .. {last}")
    if p["examples"]:
        lines.append(f"{'':12}e.g. {', '.join(p['examples'])}")
    return "\n".join(lines)


def format_product(info: dict[str, Any]) -> str:
    """The text ``enspp inspect PRODUCT`` prints (``models.product.product_summary``)."""
    m, r, st = info["model"], info["init_times"], info["stale"]
    what = (f"members ({info['ecc_members']} ECC members)" if info["product"] == "members"
            else "distribution (no ECC members)")
    quantiles = ", ".join(f"{q:g}" for q in info.get("quantiles") or []) or "none"
    sha = str(m.get("checkpoint_sha256") or "")[:12] or "not recorded"
    netcdf = info.get("format") == "netcdf"
    lines = [f"store       {info['path']}" + (" (NetCDF file)" if netcdf else ""),
             f"kind        product: {what}; distribution {info['distribution']}, CRPS "
             f"estimator {info['crps_estimator']}; quantiles {quantiles}",
             f"model       {m.get('model_version') or 'not recorded'}, checkpoint "
             f"{m.get('checkpoint') or 'not recorded'} (sha256 {sha}), code "
             f"{m.get('code_version') or '-'}",
             f"input       {info.get('forecast') or 'not recorded'}, members "
             f"{_span(np.asarray(info.get('input_members') or [], dtype=int))}",
             f"init_time   {r['complete']} complete, {r['first'] or '-'} .. {r['last'] or '-'}; "
             f"{r['skipped']} skipped; {r['incomplete']} incomplete"]
    if r["skipped"]:
        lines.append(f"{'':12}{r['skipped']} skipped ({r['skipped_reason']}): "
                     f"{', '.join(r['skipped_examples'])}")
    if r["incomplete"]:
        lines.append(f"{'':12}{r['incomplete']} incomplete (written but not marked complete: a "
                     f"killed predict; hidden from readers, the next predict redoes them): "
                     f"{', '.join(r['incomplete_examples'])}")
    if r["not_in_coordinate"]:
        lines.append(f"{'':12}{len(r['not_in_coordinate'])} marked complete but not in the "
                     f"init_time coordinate: {', '.join(r['not_in_coordinate'][:_SHOW])}")
    if st["checked"]:
        eg = f": {', '.join(st['examples'])}" if st["count"] else ""
        lines.append(f"stale       {st['count']} (inputs since replaced in {st['forecast']}; "
                     f"predict them again){eg}")
    else:
        lines.append(f"stale       not checked ({st['why']}"
                     f"{': ' + st['forecast'] if st['forecast'] else ''})")
    lines.append(f"lead times  {', '.join(f'+{_num(h)} h' for h in info['lead_times_hours'])}")
    lines.append("variables")
    for name, v in info["variables"].items():
        chunks = "x".join(map(str, v["chunks"])) if v["chunks"] else "none (contiguous)"
        lines.append(f"  {name:<14}{v['units']}; {', '.join(v['dims'])}; chunks {chunks}")
    c = info["chunking"]
    per = " or ".join(map(str, c["init_times_per_chunk"]))
    if per or not netcdf:
        lines.append(f"chunks      {per or '-'} init times per chunk, other dims "
                     f"{'whole' if c['other_dims_whole'] else 'split'}")
    else:
        lines.append("chunks      none (contiguous NetCDF variables)")
    lines.append(f"on disk     {_size(info['bytes_on_disk'])}")
    lines.extend(f"problem     {p}" for p in info.get("problems") or [])
    return "\n".join(lines)


def bytes_on_disk(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a store (every file under it), or of a file."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else _bytes(p)


__all__ = ["bytes_on_disk", "format_inspect", "format_product", "inspect_store"]
