"""Tables of an experiment (several systems scored on the same dates): pure helpers.

``score_rows`` turns per-date scores of each system into headline rows (mean CRPS, skill
against a reference with a block-bootstrap interval, Diebold-Mariano p-value);
``markdown_table`` prints rows as Markdown; ``experiment_document`` builds the scores
document that ``evaluation.dashboard.write_dashboard`` renders (schema of
``evaluation.report.scores_document``).  Training and orchestration live in ``flows``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.evaluation.bootstrap import bootstrap_skill, diebold_mariano
from enspp.evaluation.report import SCHEMA


class ExperimentTableError(EnsppError):
    """Scores given to the experiment tables are inconsistent."""


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def score_rows(
    scores: Mapping[str, xr.DataArray],
    *,
    reference: str,
    dim: str = "init_time",
    n_resamples: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
) -> list[dict]:
    """One row per system: ``crps`` (mean over ``dim`` and any other dims), ``skill``,
    ``skill_low``/``skill_high`` against ``reference`` and the DM ``dm_pvalue``.

    Each score must have ``dim``; other dims are averaged first (per-date spatial mean).
    """
    if reference not in scores:
        raise ExperimentTableError(f"reference system {reference!r} is not among the scores {sorted(scores)}")
    per_date = {}
    for name, s in scores.items():
        if dim not in s.dims:
            raise ExperimentTableError(f"score of system {name!r} has no dim {dim!r}: dims {tuple(s.dims)}")
        per_date[name] = s.mean([d for d in s.dims if d != dim]) if s.ndim > 1 else s
    ref = per_date[reference]
    rows = []
    for name, s in per_date.items():
        row: dict = {"system": name, "crps": _finite(s.mean()), "skill": None, "skill_low": None,
                     "skill_high": None, "dm_pvalue": None}
        if name != reference:
            b = bootstrap_skill(s, ref, dim=dim, n_resamples=n_resamples, confidence=confidence, seed=seed)
            row.update(skill=_finite(b["value"]), skill_low=_finite(b["low"]), skill_high=_finite(b["high"]))
            row["dm_pvalue"] = _finite(diebold_mariano(s, ref, dim=dim)["p_value"])
        rows.append(row)
    return rows


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:+.1f}%"
    if kind == "f3":
        return f"{value:.3f}"
    if kind == "f2":
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table: ``columns`` are ``(key, header, format)`` with format ``f3``, ``f2``,
    ``pct`` (a fraction shown as a signed percentage) or ``str``."""
    if not columns:
        raise ExperimentTableError("markdown_table needs at least one column")
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if f == "str" else "---:" for _, _, f in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def experiment_document(
    *,
    title: str,
    variable: str,
    units: str,
    estimator: str,
    rows: Sequence[Mapping[str, Any]],
    reference: str,
    init_count: int,
    lead_hours: Sequence[float],
    twcrps: Mapping[str, Mapping[str, float | None]] | None = None,
    cases: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    init_period: tuple[str, str] | None = None,
    region: str = "all",
) -> dict:
    """The scores document of one experiment panel (one variable, one region, lead times
    pooled) for :func:`evaluation.dashboard.write_dashboard`."""
    systems = [str(r["system"]) for r in rows]
    if reference not in systems:
        raise ExperimentTableError(f"reference {reference!r} is not among the rows {systems}")
    headline = [{"system": r["system"], "crps": r.get("crps"), "skill": r.get("skill"),
                 "skill_low": r.get("skill_low"), "skill_high": r.get("skill_high"),
                 "dm_pvalue": r.get("dm_pvalue"), "rmse": r.get("rmse"), "bias": r.get("bias"),
                 "spread_skill": r.get("spread_skill")} for r in rows]
    by_lead = {r["system"]: {"crps": [r.get("crps")] if len(lead_hours) == 1 else r.get("crps_by_lead", [])}
               for r in rows}
    provenance: dict = {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "config": dict(config or {}), "stores": {}, "versions": {}}
    if init_period is not None:
        provenance["init_times"] = {"test": {"count": int(init_count), "first": init_period[0],
                                             "last": init_period[1]}}
    return {
        "schema": SCHEMA,
        "title": title,
        "reference": reference,
        "crps_estimator": estimator,
        "systems": [{"key": s, "name": s, "type": "experiment", "path": "", "members": None} for s in systems],
        "variables": {variable: {
            "units": units, "estimator": estimator,
            "ci": "90% percentile interval, circular block bootstrap over init dates",
            "dm_test": "Diebold-Mariano (Newey-West HAC, HLN correction)",
            "regions": [region], "systems": systems, "lead_hours": [float(h) for h in lead_hours],
            "init_count": int(init_count), "nan_dropped": {},
            "headline": {region: headline}, "by_lead": {region: by_lead},
            "twcrps": {region: {k: dict(v) for k, v in (twcrps or {}).items()}}, "plots": {},
        }},
        "cases": [dict(c) for c in cases],
        "provenance": provenance,
        "problems": [],
    }


def improvement_pct(score: float | None, reference: float | None) -> float | None:
    """``100 * (1 - score / reference)``; None when either is missing or the reference is 0."""
    if score is None or reference is None or reference == 0 or not np.isfinite([score, reference]).all():
        return None
    return 100.0 * (1.0 - score / reference)
