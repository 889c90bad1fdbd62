"""The synthetic experiment: every system against the known optimum on the synthetic world.

``kind: synthetic`` in an experiment file (``configs/experiments/synthetic.yaml``)::

    kind: synthetic
    synthetic:
      world: {}                        # data.synth.SynthConfig (default world: 32x64, 2012-2019)
      members: [2, 3, 5, 10]           # K of the 10 perturbed members (1..K) feed the models
      systems: [emos_local, mlp, unet, mixed]
      targets: [z500, t850, t2m]       # predicted together by one model per (system, K)
      lead_time: 48                    # the target lead; input_lead_times add channels
    train: {max_epochs: 12, patience: 4, lr: 0.003, emos_lr: 0.01}

One run: generate the world (once; an existing world must match), ingest it, then per K
train each system on the training years (one model per (system, K), members 1..K; the
paper's protocol), predict the test year and score everything with ``evaluation.evaluate``
on the same init dates: ``raw_full`` (the 10 perturbed members), ``raw_subset`` (members
1..K), the models' Gaussian products and the ``oracle`` (the exact predictive distribution).
CRPS: ``standard`` estimator (= properscoring) for ensembles, closed-form Gaussian CRPS for
models and the oracle.  Writes ``table.md``, one dashboard per K under ``K<k>/`` and the
combined dashboard ``index.html``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from enspp.data.errors import EnsppError, format_validation_error
from enspp.data.synth import SynthConfig
from enspp.data.yaml_file import read_yaml_mapping

_FROZEN = ConfigDict(extra="forbid", frozen=True)
SYNTH_SYSTEMS = ("emos_local", "mlp", "unet", "mixed")
#: each trained system's evaluation system name (ARCHITECTURE.md, "Evaluation": one ``emos``)
#: and its key in the scores, the table and the timings (emos_global keeps its own, beside
#: emos_local's ``emos``); the keys are in the table's order
SYSTEM_NAMES: dict[str, tuple[str, str]] = {
    "emos_local": ("emos", "emos"), "emos_global": ("emos", "emos_global"), "mlp": ("mlp", "mlp"),
    "unet": ("unet", "unet"), "mixed": ("mixed", "mixed")}
#: the quick world: tiny grid, three years (train, validation, test), two inits a week
QUICK_WORLD = SynthConfig(grid=(16, 32), years=(2012, 2014), events_per_year=4)


class SyntheticExperimentError(EnsppError):
    """The synthetic experiment cannot run as configured; the message names the key."""


class SyntheticSection(BaseModel):
    """What the synthetic experiment trains and scores (see the module docstring)."""

    model_config = _FROZEN
    world: SynthConfig = Field(default_factory=SynthConfig)
    #: where the world, stores, runs and products live (default: ``<out>/work``)
    workdir: Path | None = None
    members: tuple[int, ...] = (2, 3, 5, 10)
    systems: tuple[Literal["emos_local", "emos_global", "mlp", "unet", "mixed"], ...] = SYNTH_SYSTEMS
    variables: tuple[str, ...] = ("z500", "t850", "t2m")
    targets: tuple[str, ...] = ("z500", "t850", "t2m")
    lead_time: int = 48
    input_lead_times: tuple[int, ...] = (24,)
    #: years (inclusive) of each split; default: all but the last two / the one before last / the last
    train_years: tuple[int, int] | None = None
    val_years: tuple[int, int] | None = None
    test_years: tuple[int, int] | None = None
    #: square training patches (None: whole fields)
    patch_size: int | None = Field(16, ge=4)
    batch_size: int = Field(16, ge=1)
    #: patches drawn per epoch (None: every training init once per epoch)
    samples_per_epoch: int | None = Field(512, ge=1)
    #: MiB of input blocks and analysis fields each training keeps in memory once read
    #: (pipeline ``batches.cache_mb``; the default world needs ~0.5 GiB): later epochs read
    #: no store (a mixed epoch ~13 s -> ~4 s on 2 CPU cores); 0 reads every sample from the stores
    cache_mb: float = Field(2048.0, ge=0)
    #: per-model options passed to ModelSpec.options (e.g. {mixed: {embed_dim: 16}})
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the world of ``--quick`` runs (three years: train, validation, test)
    quick_world: SynthConfig = QUICK_WORLD
    #: pooled stations: sample the world at this many distinct grid points (seeded by
    #: ``station_seed``) and post-process them as one set of stations (one model for all, the
    #: stations' coordinates, land-sea mask and orography as static features); no oracle or
    #: case studies are scored then
    stations: int | None = Field(None, ge=2)
    station_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SyntheticSection:
        n = self.world.n_perturbed
        if not self.members or min(self.members) < 1 or max(self.members) > n:
            raise ValueError(f"members must be K in 1..{n} (the world's perturbed members), "
                             f"got {list(self.members)}")
        if self.lead_time not in self.world.lead_times_h:
            raise ValueError(f"lead_time {self.lead_time} h is not a lead of the world "
                             f"{list(self.world.lead_times_h)}")
        missing = [v for v in self.targets if v not in self.world.variables]
        if missing:
            raise ValueError(f"targets {missing} are not variables of the world {list(self.world.variables)}")
        if self.stations is not None:
            n_points = self.world.grid[0] * self.world.grid[1]
            if self.stations > n_points:
                raise ValueError(f"stations: {self.stations} is more than the world's {n_points} grid points")
            if "unet" in self.systems:
                raise ValueError("systems: unet needs a grid; with stations use emos_*, mlp, mixed")
        first, last = self.world.years
        if last - first < 2 and None in (self.train_years, self.val_years, self.test_years):
            raise ValueError(f"world years {first}-{last}: the default split needs at least three years")
        return self

    def splits(self) -> dict[str, tuple[int, int]]:
        """``{train, val, test}`` inclusive year ranges."""
        first, last = self.world.years
        return {"train": self.train_years or (first, last - 2), "val": self.val_years or (last - 1, last - 1),
                "test": self.test_years or (last, last)}


def quick_section(sec: SyntheticSection) -> SyntheticSection:
    """The ``--quick`` variant: ``quick_world``, one K (5 or the largest below), small patches."""
    k = max([m for m in sec.members if m <= min(5, sec.quick_world.n_perturbed)] or [1])
    stations = None if sec.stations is None else min(sec.stations, 40)
    return sec.model_copy(update={"world": sec.quick_world, "members": (k,), "train_years": None,
                                  "val_years": None, "test_years": None, "patch_size": 8,
                                  "batch_size": 8, "samples_per_epoch": 32, "stations": stations})


# ------------------------------------------------------------------ world and stores
def ensure_world(root: Path, world: SynthConfig, *, progress: Callable[[str], None] | None = None) -> Path:
    """Generate the world into ``root`` once; an existing world must be the same world."""
    from enspp.data.synth import SynthError
    from enspp.data.synth import ensure_world as ensure

    try:
        ensure(root, world, progress=progress)
    except SynthError as e:
        raise SyntheticExperimentError(f"{e} (or set another synthetic.workdir)") from None
    return root


def ensure_stores(workdir: Path, synth: Path) -> dict[str, Path]:
    """Ingest the world's forecasts and analyses (files already in a store are skipped)."""
    from enspp.data.ingest import ingest

    stores = {"forecast": workdir / "stores" / "forecast.zarr", "analysis": workdir / "stores" / "analysis.zarr"}
    for kind, store in stores.items():
        ingest(synth / kind, store, kind=kind, progress=False)
    return stores


def station_points(sec: SyntheticSection) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the ``sec.stations`` sampled grid points (distinct, seeded)."""
    ny, nx = sec.world.grid
    flat = np.sort(np.random.default_rng(sec.station_seed).choice(ny * nx, size=int(sec.stations), replace=False))
    return flat // nx, flat % nx


def ensure_station_stores(workdir: Path, stores: dict[str, Path], synth: Path, sec: SyntheticSection) -> dict[str, Path]:
    """The world's forecast and analysis stores sampled at :func:`station_points` as station
    stores (``station`` dim with ``latitude``/``longitude`` per station), and the static
    fields there (``static.nc``); written once per (count, seed) under ``stores/``."""
    import shutil

    import xarray as xr

    from enspp.data.store import open_store
    from enspp.data.store_writer import append

    root = workdir / "stores" / f"stations-{sec.stations}-s{sec.station_seed}"
    out = {"forecast": root / "forecast.zarr", "analysis": root / "analysis.zarr", "static": root / "static.nc"}
    iy, ix = station_points(sec)
    names = np.asarray([f"P{i:04d}" for i in range(iy.size)], dtype=object)

    def sample(ds: xr.Dataset) -> xr.Dataset:
        lat, lon = ds["latitude"].values, ds["longitude"].values
        pts = ds.isel(latitude=xr.DataArray(iy, dims="station"), longitude=xr.DataArray(ix, dims="station"))
        pts = pts.drop_vars(["latitude", "longitude"])
        return pts.assign_coords(station=names, latitude=("station", lat[iy]), longitude=("station", lon[ix]))

    for kind in ("forecast", "analysis"):
        if out[kind].exists():
            continue
        # one append into a temporary store renamed at the end: a killed run leaves no
        # half-written station store behind (the points are a few MB per variable)
        tmp = out[kind].with_name(f".{out[kind].name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        append(tmp, sample(open_store(stores[kind])).load(), kind=kind)
        tmp.replace(out[kind])
    if not out["static"].exists():
        static = sample(xr.open_dataset(synth / "static.nc").load())
        tmp = out["static"].with_suffix(".tmp.nc")
        static.to_netcdf(tmp)
        tmp.replace(out["static"])
    return out


def pipeline_config(sec: SyntheticSection, *, k: int, workdir: Path, synth: Path,
                    stations: dict[str, Path] | None = None) -> Any:
    """The pipeline of the models for K members (perturbed members 1..K, the paper's choice);
    ``stations``: the pooled station stores instead of the grid (full-batch, preloaded)."""
    from enspp.pipeline.config import PipelineConfig

    sp = sec.splits()
    if stations is not None:
        return PipelineConfig.model_validate({
            "stores": {"forecast": str(stations["forecast"]), "analysis": str(stations["analysis"]),
                       "static": str(stations["static"]),
                       "statistics": str(stations["forecast"].parent / f"statistics-K{k}.nc")},
            "features": {"variables": list(sec.variables), "targets": list(sec.targets),
                         "target_lead_time": sec.lead_time,
                         "input_lead_times": [h for h in sec.input_lead_times if h != sec.lead_time]},
            "members": {"k": k, "strategy": "first"},
            "split": {"train": list(sp["train"]), "val": list(sp["val"]), "test": list(sp["test"])},
            "batches": {"batch_size": 1_000_000, "preload": True},
        })
    return PipelineConfig.model_validate({
        "stores": {"forecast": str(workdir / "stores" / "forecast.zarr"),
                   "analysis": str(workdir / "stores" / "analysis.zarr"),
                   "static": str(synth / "static.nc"),
                   "statistics": str(workdir / "cache" / f"statistics-K{k}.nc")},
        "features": {"variables": list(sec.variables), "targets": list(sec.targets),
                     "target_lead_time": sec.lead_time,
                     "input_lead_times": [h for h in sec.input_lead_times if h != sec.lead_time]},
        "members": {"k": k, "strategy": "first"},
        "split": {"train": list(sp["train"]), "val": list(sp["val"]), "test": list(sp["test"])},
        "batches": {"patch_size": sec.patch_size, "batch_size": sec.batch_size,
                    "samples_per_epoch": sec.samples_per_epoch, "cache_mb": sec.cache_mb},
    })


def inits_in_years(forecast: Path, years: tuple[int, int]) -> np.ndarray:
    """The forecast store's init times in the test years."""
    from enspp.data.store import open_store

    t = open_store(forecast)["init_time"].values.astype("datetime64[ns]")
    keep = (t >= np.datetime64(f"{years[0]}-01-01", "ns")) & (t < np.datetime64(f"{years[1] + 1}-01-01", "ns"))
    if not keep.any():
        raise SyntheticExperimentError(f"{forecast}: no init time in the test years {years[0]}-{years[1]}")
    return t[keep]


def predict_test(checkpoint: Path, pipeline: Any, *, out: Path) -> Path:
    """The Gaussian product (``<v>_mean``, ``<v>_std``) of ``checkpoint`` on every init of the
    pipeline's test split, written afresh: ``models.predict.predict`` without ECC members and
    quantiles (the scores need only the two moments), on whole fields as the pipeline's test
    loader feeds the model."""
    import shutil

    from enspp.models.predict import predict
    from enspp.pipeline.datamodule import EnsembleDataModule

    inits = EnsembleDataModule(pipeline).split_init_times["test"]
    shutil.rmtree(out, ignore_errors=True)
    return predict(checkpoint, pipeline.stores.forecast, out=out, init_times=inits,
                   fields=("mean", "std"), whole_fields=True)


def _tag(sec: SyntheticSection) -> str:
    """Run and product names of a pooled-stations experiment differ from the grid's (the two
    may share a work directory and its world)."""
    return "" if sec.stations is None else f"-stations{sec.stations}s{sec.station_seed}"


def fit_and_predict(name: str, *, k: int, sec: SyntheticSection, train: Any, pipeline: Any,
                    workdir: Path, quick: bool) -> dict[str, Any]:
    """Train ``name`` on K members and write its test product; times in seconds."""
    from enspp.models.config import ModelConfig, TrainConfig
    from enspp.models.train import train as train_model

    emos = name.startswith("emos")
    own = train.systems.get(name)  # this system's own settings, else the section's
    pick = lambda key, default: default if own is None or getattr(own, key) is None else getattr(own, key)  # noqa: E731
    tc = TrainConfig(max_epochs=1 if quick else pick("max_epochs", train.max_epochs),
                     learning_rate=train.emos_lr if emos else pick("lr", train.lr),
                     weight_decay=0.0 if emos else pick("weight_decay", train.weight_decay),
                     early_stopping_patience=pick("patience", train.patience), seed=train.seed,
                     progress_bar=False,
                     run_id=f"{name}-K{k}{_tag(sec)}", ensemble_estimator="standard",
                     lr_schedule=train.lr_schedule,
                     limit_val_batches=4 if quick else 1.0)
    t0 = time.perf_counter()
    r = train_model(pipeline, ModelConfig(name=name, options=dict(sec.model_options.get(name, {}))), tc,
                    workdir=workdir)
    t1 = time.perf_counter()
    out = predict_test(r.best_checkpoint, pipeline,
                       out=workdir / "stores" / "products" / f"{name}-K{k}{_tag(sec)}.zarr")
    return {"product": out, "train_s": round(t1 - t0, 1), "predict_s": round(time.perf_counter() - t1, 1),
            "epochs": r.epochs, "best_val": r.best_score}


# ------------------------------------------------------------------ scoring
def evaluate_config(sec: SyntheticSection, *, title: str, k: int, stores: dict[str, Path], synth: Path,
                    products: dict[str, Path], n_boot: int, confidence: float, seed: int,
                    tail: Literal["upper", "lower"], percentile: float, cases: bool) -> Any:
    """Every system for K on the test years: raw (10 perturbed / K perturbed members), the
    models' Gaussian products and the oracle; ``standard`` CRPS for the ensembles."""
    from enspp.evaluation.config import EvaluateConfig

    n = sec.world.n_perturbed
    sp = sec.splits()
    systems = [{"name": "raw_full", "path": str(stores["forecast"]), "members": list(range(1, n + 1))},
               {"name": "raw_subset", "path": str(stores["forecast"]), "members": list(range(1, k + 1))}]
    systems += [{"name": SYSTEM_NAMES[s][0], "label": SYSTEM_NAMES[s][1], "path": str(p), "type": "gaussian"}
                for s, p in products.items()]
    if sec.stations is None:  # the oracle exists on the grid only
        systems.append({"name": "oracle", "path": str(synth / "oracle.zarr"), "type": "gaussian"})
    metrics = ["crps", "spread_skill", "rank_histogram", "rmse", "bias", "twcrps"] if cases else ["crps", "twcrps"]
    return EvaluateConfig.model_validate({
        "title": title, "systems": systems, "truth": str(stores["analysis"]), "variables": list(sec.targets),
        "period": {"start": f"{sp['test'][0]}-01-01", "end": f"{sp['test'][1]}-12-31"},
        "regions": ["global"], "lead_times": [sec.lead_time], "metrics": metrics,
        "crps_estimator": "standard", "reference": "raw_full",
        "bootstrap": {"n": n_boot, "ci_level": confidence, "seed": seed},
        "twcrps": {"percentiles": [percentile], "tail": tail,
                   "climatology": {"start": f"{sp['train'][0]}-01-01", "end": f"{sp['train'][1]}-12-31"}},
        "cases": [str(synth / "events.yaml")] if cases else [],
    })


def _value(ds: Any, name: str, system: str) -> float | None:
    if name not in ds:
        return None
    v = float(ds[name].sel(system=system, region="global"))
    return v if np.isfinite(v) else None


def rows_of_k(upper: Any, lower: Any, *, k: int, n: int, timings: dict[str, dict]) -> list[dict]:
    """Rows ``{variable, system, K, crps, skill, CI, twCRPS upper/lower, events, times}`` of
    one K from the upper-tail (with cases) and lower-tail evaluations."""
    rows = []
    for v, ds in upper.scores.items():
        lo = lower.scores[v]
        events = [c for c in upper.cases if c.status == "ok" and c.case.variable == v]
        for s in map(str, ds["system"].values):
            imp = [c.improvement_pct[s] for c in events if c.improvement_pct.get(s) is not None]
            ev_crps = [c.crps[s] for c in events if c.crps.get(s) is not None]
            t = timings.get(s, {})
            rows.append({
                "variable": v, "units": ds.attrs.get("units", ""), "system": s,
                "K": n if s in ("raw_full", "oracle") else k,
                "crps": _value(ds, "crps_all", s), "skill": _value(ds, "skill_all", s),
                "skill_low": _value(ds, "skill_low_all", s), "skill_high": _value(ds, "skill_high_all", s),
                "spread_skill": _value(ds, "spread_skill_all", s),
                "tw_upper": _value(ds, "twcrps_p95_all", s), "tw_lower": _value(lo, "twcrps_p5_all", s),
                "events": len(events), "events_crps": float(np.mean(ev_crps)) if ev_crps else None,
                "events_improvement": float(np.mean(imp)) if imp else None,
                "train_s": t.get("train_s"), "predict_s": t.get("predict_s"), "epochs": t.get("epochs"),
            })
    return rows


def _pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else 100.0 * (1.0 - a / b)


def target_checks(rows: list[dict], *, k: int = 5) -> list[dict]:
    """Issue 8's targets for mixed with K members, per variable (measured, with pass/fail;
    the per-event mean of the event gains is reported with ``met`` None)."""
    out = []
    for v in dict.fromkeys(r["variable"] for r in rows):
        by = {r["system"]: r for r in rows if r["variable"] == v and
              (r["system"] in ("raw_full", "oracle") or r["K"] == k)}
        if not {"mixed", "raw_full", "oracle"} <= set(by):
            continue
        m = by["mixed"]
        raw_events = by["raw_full"]["events_crps"]
        # the target pools the events (mean CRPS over all of them); the mean of the per-event
        # gains is reported beside it, since one event without signal weighs as much as one with
        per_event = m.get("events_improvement")
        checks = [("CRPS vs raw_full (>= 20% better)", _pct(m["crps"], by["raw_full"]["crps"]), 20.0),
                  ("CRPS vs emos (>= 5% better)", _pct(m["crps"], by.get("emos", {}).get("crps")), 5.0),
                  ("CRPS vs oracle (within 15%)", None if by["oracle"]["crps"] in (None, 0) or m["crps"] is None
                   else 100.0 * (m["crps"] / by["oracle"]["crps"] - 1.0), -15.0),
                  ("extreme events, pooled CRPS, vs raw_full (>= 20% better)",
                   _pct(m["events_crps"], raw_events), 20.0),
                  ("extreme events, mean of per-event gains vs raw_full (no target)", per_event, None)]
        for what, value, goal in checks:
            ok = None if value is None or goal is None else (value <= -goal if goal < 0 else value >= goal)
            out.append({"variable": v, "target": what, "value": value, "met": ok})
    return out


# ------------------------------------------------------------------ the run
COLUMNS = [("variable", "variable", "str"), ("system", "system", "str"), ("K", "members", "str"),
           ("crps", "CRPS", "f3"), ("skill", "skill vs raw_full", "pct"), ("skill_low", "CI low", "pct"),
           ("skill_high", "CI high", "pct"), ("spread_skill", "spread/skill", "f2"),
           ("tw_upper", "twCRPS upper 5%", "f3"), ("tw_lower", "twCRPS lower 5%", "f3"),
           ("events_crps", "events CRPS", "f3"), ("events_improvement", "events vs raw_full", "pctv"),
           ("train_s", "train s", "f1"), ("predict_s", "predict s", "f1")]


def _table(rows: list[dict]) -> str:
    from enspp.evaluation.experiment import markdown_table

    def fix(r: dict) -> dict:
        r = dict(r)
        if r.get("events_improvement") is not None:
            r["events_improvement"] = r["events_improvement"] / 100.0
        for key in ("train_s", "predict_s"):
            r[key] = None if r.get(key) is None else f"{r[key]:.0f}"
        return r

    cols = [(k, h, {"pctv": "pct", "f1": "str"}.get(f, f)) for k, h, f in COLUMNS]
    return markdown_table([fix(r) for r in rows], cols)


def run_synthetic(config: Any, *, out_dir: Path, quick: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Generate/ingest the world, train and predict every (system, K), score, write
    ``table.md``, ``K<k>/`` dashboards and the combined ``index.html`` into ``out_dir``."""
    from enspp.evaluation.dashboard import combine_dashboards
    from enspp.evaluation.evaluate import evaluate

    say = progress or (lambda m: None)
    sec = quick_section(config.synthetic) if quick else config.synthetic
    tr, ev = config.train, config.evaluate
    workdir = Path(sec.workdir or out_dir / "work").resolve()
    n, n_boot = sec.world.n_perturbed, (50 if quick else ev.n_resamples)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synth = ensure_world(workdir / "synth", sec.world, progress=say)
    timings["world"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    stores = ensure_stores(workdir, synth)
    stations = None
    if sec.stations is not None:
        stations = ensure_station_stores(workdir, stores, synth, sec)
        stores = {**stores, "forecast": stations["forecast"], "analysis": stations["analysis"]}
    timings["ingest"] = round(time.perf_counter() - t0, 1)
    inits = inits_in_years(stores["forecast"], sec.splits()["test"])
    say(f"world {sec.world.grid[0]}x{sec.world.grid[1]} {sec.world.years[0]}-{sec.world.years[1]} in "
        f"{timings['world']} s, ingest {timings['ingest']} s; {len(inits)} test inits")
    rows: list[dict] = []
    dirs: list[Path] = []
    for k in sec.members:
        pipeline = pipeline_config(sec, k=k, workdir=workdir, synth=synth, stations=stations)
        products: dict[str, Path] = {}
        per_system: dict[str, dict] = {}
        for name in sec.systems:
            r = fit_and_predict(name, k=k, sec=sec, train=tr, pipeline=pipeline, workdir=workdir,
                                quick=quick)
            products[name] = r.pop("product")
            per_system[SYSTEM_NAMES[name][1]] = r
            timings[f"{name} K={k}"] = round(r["train_s"] + r["predict_s"], 1)
            say(f"{name} K={k}: trained {r['epochs']} epochs in {r['train_s']} s, "
                f"predicted the test inits in {r['predict_s']} s")
        t1 = time.perf_counter()
        title = f"{config.title} · K={k} of {n}"
        common = dict(k=k, stores=stores, synth=synth, products=products, n_boot=n_boot,
                      confidence=ev.confidence, seed=ev.seed)
        upper = evaluate(evaluate_config(sec, title=title, tail="upper", percentile=0.95,
                                         cases=sec.stations is None, **common),
                         out_dir / f"K{k}")
        lower = evaluate(evaluate_config(sec, title=title, tail="lower", percentile=0.05, cases=False, **common))
        timings[f"evaluate K={k}"] = round(time.perf_counter() - t1, 1)
        dirs.append(out_dir / f"K{k}")
        rows_k = rows_of_k(upper, lower, k=k, n=n, timings=per_system)
        rows += [r for r in rows_k if r["system"] not in ("raw_full", "oracle") or k == sec.members[0]]
        for r in rows_k:
            if r["system"] == "mixed":
                say(f"K={k} {r['variable']}: mixed CRPS {r['crps']:.4g}, skill vs raw_full "
                    f"{100 * (r['skill'] or 0):+.1f}%")
    order = ["raw_full", "oracle", "raw_subset", *(key for _, key in SYSTEM_NAMES.values())]
    rows.sort(key=lambda r: (r["variable"], r["K"] if r["system"] not in ("raw_full", "oracle") else -1,
                             order.index(r["system"])))
    dash = combine_dashboards(dirs, out_dir, title=config.title)
    k_target = 5 if 5 in sec.members else sec.members[0]
    checks = target_checks(rows, k=k_target)
    write_table(out_dir / "table.md", config.title, sec, rows, checks, n_test=len(inits), ev=ev, k=k_target)
    return {"title": config.title, "kind": "synthetic", "rows": rows, "targets": checks, "timings": timings,
            "n_test": len(inits), "world": sec.world.model_dump(mode="json"), "splits": sec.splits(),
            "files": {"table": str(out_dir / "table.md"), "dashboard": str(dash)}}


def write_table(path: Path, title: str, sec: SyntheticSection, rows: list[dict], checks: list[dict], *,
                n_test: int, ev: Any, k: int = 5) -> Path:
    """``table.md``: the comparison per variable and the targets, with the method in words."""
    from enspp.evaluation.experiment import markdown_table

    sp = sec.splits()
    w = sec.world
    units = {r["variable"]: r["units"] for r in rows}
    parts = [f"## {title}\n",
             f"World: {w.grid[0]}x{w.grid[1]} grid, years {w.years[0]}-{w.years[1]}, control + {w.n_perturbed} "
             f"perturbed members, seed {w.seed}. Train {sp['train'][0]}-{sp['train'][1]}, validation "
             f"{sp['val'][0]}-{sp['val'][1]} (early stopping), test {sp['test'][0]}-{sp['test'][1]} "
             f"({n_test} inits, lead {sec.lead_time} h). One model per (system, K) predicting "
             f"{', '.join(sec.targets)} together from members 1..K (inputs {', '.join(sec.variables)} at "
             f"{', '.join(str(h) for h in sorted({sec.lead_time, *sec.input_lead_times}))} h).\n",
             "CRPS: `standard` ensemble estimator (= properscoring) for raw_full (members 1..10) and "
             "raw_subset (members 1..K); closed-form Gaussian CRPS for emos/mlp/unet/mixed and the oracle; "
             "cos-latitude weighted, global. Skill = 1 - CRPS/CRPS(raw_full) with a "
             f"{ev.confidence:.0%} circular block-bootstrap interval over init dates. twCRPS: thresholds "
             "are the local 95th (upper) / 5th (lower) percentiles of the training-period analysis. "
             "Events: mean CRPS over the world's extreme events (events.yaml) in the test year, box and "
             "window; \"events vs raw_full\" is the mean over events of the per-event improvement.\n"]
    for v in units:
        parts.append(f"### {v} ({units[v]})\n\n" + _table([r for r in rows if r["variable"] == v]))
    if checks:
        def fmt(c: dict) -> dict:
            return {**c, "value": None if c["value"] is None else f"{c['value']:+.1f}%",
                    "met": {True: "yes", False: "**no**", None: "–"}[c["met"]]}
        parts.append(f"### Targets (mixed, K={k})\n\n" + markdown_table(
            [fmt(c) for c in checks], [("variable", "variable", "str"), ("target", "target", "str"),
                                       ("value", "measured", "str"), ("met", "met", "str")]))
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------- the experiment file
class SystemTrain(BaseModel):
    """One system's own training settings (unset keys: the train section's)."""

    model_config = _FROZEN
    max_epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    seeds: int | None = Field(None, ge=1)


class TrainSection(BaseModel):
    model_config = _FROZEN
    max_epochs: int = Field(300, ge=1)
    patience: int = Field(25, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0)
    #: synthetic experiments' EMOS learning rate (station EMOS is fitted exactly)
    emos_lr: float = Field(3e-2, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    #: learning-rate schedule of the synthetic experiment's trainings (models.config.TrainConfig)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    #: networks (mlp, mixed, unet) are fitted with this many seeds and their parameters averaged
    seeds: int = Field(3, ge=1)
    seed: int = 0
    #: station experiments: after early stopping on the validation period, refit (same seed)
    #: on training + validation, networks for the chosen number of epochs, EMOS exactly
    refit: bool = False
    #: per-network settings, e.g. {mixed: {lr: 0.003, max_epochs: 2000}} (``seeds``: station
    #: experiments only); EMOS is fitted exactly
    systems: dict[Literal["mlp", "mixed", "unet"], SystemTrain] = Field(default_factory=dict)


#: train settings each experiment kind does not read (setting one is an error, not a no-op)
_TRAIN_UNUSED = {"synthetic": frozenset({"batch_size", "seeds", "refit"})}


class EvaluateSection(BaseModel):
    model_config = _FROZEN
    n_resamples: int = Field(1000, ge=10)
    confidence: float = Field(0.9, gt=0, lt=1)
    seed: int = 0
    #: twCRPS tails: thresholds are these quantiles of the training-period observations/analysis
    tail_quantiles: tuple[float, float] = (0.05, 0.95)


class SyntheticExperimentConfig(BaseModel):
    """A ``kind: synthetic`` experiment file (the synthetic world's own dialect, kept until
    the world is generated by the sweep runner of ``flows.experiment``)."""

    model_config = _FROZEN
    title: str
    kind: Literal["synthetic"]
    synthetic: SyntheticSection | None = None
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _section(self) -> SyntheticExperimentConfig:
        if getattr(self, self.kind) is None:
            raise ValueError(f"kind: {self.kind} needs a '{self.kind}' section")
        unused = sorted(self.train.model_fields_set & _TRAIN_UNUSED[self.kind])
        if unused:  # set in the file but without effect for this kind: say so, never ignore
            raise ValueError(f"train.{', train.'.join(unused)} has no effect on a {self.kind} "
                             f"experiment; remove it")
        return self


def load_synthetic_config(path: str | Path) -> SyntheticExperimentConfig:
    """Parse and validate a ``kind: synthetic`` experiment file (errors name the file and the key)."""
    from enspp.flows.experiment import ExperimentConfigError

    path = Path(path)
    raw = read_yaml_mapping(path, what="experiment config", error=ExperimentConfigError)
    try:
        cfg = SyntheticExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ExperimentConfigError(format_validation_error(e, prefix=str(path), sep=": ")) from None
    return cfg


