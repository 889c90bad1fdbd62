"""The station experiment: raw ensembles, EMOS, MLP and mixed on one station file, one split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.special import logit

from enspp.evaluation import crps_censored, crps_ensemble, crps_gaussian, twcrps, twcrps_gaussian
from enspp.evaluation.dashboard import write_dashboard
from enspp.evaluation.experiment import experiment_document, markdown_table, score_rows
from enspp.flows.experiment_point import (
    STATIC_DOY,
    STATIC_HRES,
    STATIC_PAST,
    STATIC_SPREAD,
    FitSettings,
    PointData,
    PointDataError,
    day_of_year_features,
    fit_point_model,
    hres_features,
    load_station,
    past_error_features,
    point_batch,
    point_stats,
    predict_point,
    transform_members,
    window_emos,
)

DIM = "init_time"
NETWORKS = ("mlp", "mixed", "unet")
#: members of the quantile ensemble that stands in for a censored distribution in the twCRPS
N_TAIL_QUANTILES = 100


def _mask(vt: np.ndarray, start, end) -> np.ndarray:
    m = np.ones(vt.shape, bool)
    if start is not None:
        m &= vt >= np.datetime64(start, "ns")
    if end is not None:
        m &= vt < np.datetime64(end, "ns")
    return m


def split_masks(data: PointData, section) -> dict[str, np.ndarray]:
    """Boolean masks ``train``/``val``/``test`` on the valid dates (validation and test never
    feed the fit; test valid dates are all after every training one)."""
    vt = data.valid_time
    complete = np.isfinite(data.members).all(axis=1)  # a date with a missing member is dropped
    end = None if section.test_end is None else np.datetime64(section.test_end) + np.timedelta64(1, "D")
    masks = {"train": _mask(vt, section.train_start, section.val_start) & complete,
             "val": _mask(vt, section.val_start, section.test_start) & complete,
             "test": _mask(vt, section.test_start, end) & complete & np.isfinite(data.observation)}
    for name, m in masks.items():
        if m.sum() < 3:
            raise PointDataError(f"{section.path}: the {name} period holds {int(m.sum())} dates "
                                 "(check val_start/test_start/test_end against the file's dates)")
    return masks


def subset_members(n_members: int, k: int, how: str) -> np.ndarray:
    """Indices of the K members fed to the models: ``first`` = members 0..K-1 (control and
    K-1 perturbed), ``perturbed`` = members 1..K (the file's first K columns in SOURCES.md)."""
    idx = np.arange(k) + (1 if how == "perturbed" else 0)
    if idx[-1] >= n_members:
        raise PointDataError(f"K={k} {how} members need member {idx[-1]}, the file holds 0..{n_members - 1}")
    return idx


def _static(data: PointData, members: np.ndarray, features, train: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Static features of every date and their names; scales from the ``train`` mask only."""
    parts, names = [], []
    if features.day_of_year:
        parts.append(day_of_year_features(data.valid_time))
        names += STATIC_DOY
    if features.lagged_error:
        err = data.members[train][:, members].mean(axis=1) - data.observation[train]
        obs = data.observation[train]
        parts.append(past_error_features(data, members, err_scale=float(np.nanstd(err)),
                                         obs_mean=float(np.nanmean(obs)), obs_scale=float(np.nanstd(obs)),
                                         halflife_days=features.halflife_days,
                                         max_age_days=features.max_age_days,
                                         spread=features.error_spread))
        names += STATIC_PAST + (STATIC_SPREAD if features.error_spread else ())
    if features.hres:
        if data.hres is None:
            raise PointDataError("features.hres needs the station file's deterministic forecast")
        parts.append(hres_features(data.hres, data.members[:, members], train=train))
        names += STATIC_HRES
    n = data.members.shape[0]
    return (np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)), tuple(names)


def _static_columns(system: str, names: tuple[str, ...], options: dict | None = None) -> list[int]:
    """The static columns a system sees: networks all, ``emos_lagged`` the past-error ones,
    the other EMOS none; an EMOS with ``season: doy`` also the day of year."""
    if system in NETWORKS:
        return list(range(len(names)))
    season = (options or {}).get("season") == "doy"
    return [i for i, n in enumerate(names)
            if (system == "emos_lagged" and n in STATIC_PAST) or (season and n in STATIC_DOY)]


def _da(values: np.ndarray, times: np.ndarray) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, np.float64), dims=[DIM], coords={DIM: times})


def _model_crps(pred: dict[str, np.ndarray], obs: xr.DataArray, *, distribution: str) -> xr.DataArray:
    """Closed-form CRPS of predicted distribution parameters against ``obs`` (same dates)."""
    times = obs[DIM].values
    if distribution == "gaussian":
        return crps_gaussian(_da(pred["mu"], times), _da(pred["sigma"], times), obs)
    return crps_censored(_da(pred["loc"], times), _da(pred["scale"], times), obs, family="logistic")


def _tail_quantile_members(loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``[N, Q]`` equi-probable quantiles of a zero-censored logistic (levels (i+0.5)/Q)."""
    p = (np.arange(N_TAIL_QUANTILES) + 0.5) / N_TAIL_QUANTILES
    return np.maximum(loc[:, None] + scale[:, None] * logit(p)[None, :], 0.0)


def run_station(config, *, out_dir: Path, quick: bool = False, progress=None) -> dict:
    """Fit and score every system; write ``table.md`` and ``index.html`` into ``out_dir``."""
    sec, tr, ev = config.station, config.train, config.evaluate
    data = load_station(sec.path, variable=sec.variable, hres=sec.features.hres)
    if sec.transform is not None:
        data = transform_members(data, offset=sec.transform.offset, spread=sec.transform.spread)
    masks = split_masks(data, sec)
    subsets = {k: subset_members(data.members.shape[1], k, sec.subset) for k in sec.members}
    ks = sec.members[-1:] if quick else sec.members
    settings = FitSettings(max_epochs=3 if quick else tr.max_epochs, patience=tr.patience,
                           batch_size=tr.batch_size, lr=tr.lr, weight_decay=tr.weight_decay)
    seeds = 1 if quick else tr.seeds
    n_boot = 50 if quick else ev.n_resamples
    train_obs = data.observation[masks["train"]]
    thresholds = {f"p{round(100 * q):02d} {'lower' if q < 0.5 else 'upper'}": float(np.nanquantile(train_obs, q))
                  for q in ev.tail_quantiles}
    test = data.subset(masks["test"])
    times = test.init_time
    obs = _da(test.observation, times)

    def tails_ens(members: np.ndarray) -> dict:
        fc = xr.DataArray(members.astype(np.float64), dims=[DIM, "member"], coords={DIM: times})
        return {lbl: float(twcrps(fc, obs, threshold=t, tail=lbl.split()[1], estimator="standard").mean())
                for lbl, t in thresholds.items()}

    scores: dict[str, dict[str, xr.DataArray]] = {}
    tails: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    choices: dict[str, dict] = {}
    val_crps: dict[str, dict[str, float]] = {f"K={k}": {} for k in ks}
    val_obs = _da(data.observation[masks["val"]], data.init_time[masks["val"]])
    channel = f"{data.variable}@{int(data.lead_time / np.timedelta64(1, 'h'))}h"
    full = crps_ensemble(xr.DataArray(test.members.astype(np.float64), dims=[DIM, "member"], coords={DIM: times}),
                         obs, estimator="standard")
    for k in ks:
        key = f"K={k}"
        sk = scores[key] = {"raw_full": full}
        tk = tails[key] = {"raw_full": tails_ens(test.members)}
        sel = subsets[k]
        sub = test.members[:, sel]
        sk["raw_subset"] = crps_ensemble(xr.DataArray(sub.astype(np.float64), dims=[DIM, "member"],
                                                      coords={DIM: times}), obs, estimator="standard")
        tk["raw_subset"] = tails_ens(sub)
        static, static_names = _static(data, sel, sec.features, masks["train"])
        batch = {name: point_batch(data.members[m][:, sel], data.observation[m], static[m],
                                   data.init_time[m], data.lead_time) for name, m in masks.items()}
        stats = point_stats(data.members[masks["train"]][:, sel], train_obs, channel, data.variable)
        from enspp.models import ModelSpec

        def fit_system(name: str, options: dict, *, k: int = k, static_names: tuple[str, ...] = static_names,
                       stats: dict = stats, batch: dict = batch) -> tuple[dict, dict]:
            """Validation and test predictions of one system (seed ensemble for networks)."""
            is_net = name in NETWORKS
            cols = _static_columns(name, static_names, options)
            if name == "emos_lagged" and not any(static_names[i] in STATIC_PAST for i in cols):
                raise PointDataError(f"{sec.path}: system emos_lagged needs features.lagged_error: true")
            if options.get("season") == "doy" and len(cols) < len(STATIC_DOY) + (name == "emos_lagged"):
                raise PointDataError(f"{sec.path}: season: doy needs features.day_of_year: true")
            spec = ModelSpec(name=name, channels=(channel,),
                             targets=(data.variable,), target_channels=(0,),
                             static_names=tuple(static_names[i] for i in cols), n_members=k, grid_shape=(1, 1),
                             stats=stats, distribution=sec.distribution, options=options)
            own = tr.systems.get(name)
            fit = settings if own is None else FitSettings(**{**settings.__dict__, **{
                key: v for key, v in {"max_epochs": None if quick else own.max_epochs, "patience": own.patience,
                                      "lr": own.lr, "weight_decay": own.weight_decay}.items() if v is not None}})
            n_seeds = (own.seeds if own is not None and own.seeds and not quick else seeds) if is_net else 1
            bt = {n: {**v, "static": v["static"][:, cols]} for n, v in batch.items()}
            fits = [fit_point_model(spec, bt["train"], bt["val"], settings=fit, seed=tr.seed + i, refit=tr.refit)
                    for i in range(n_seeds)]
            # validation: the fits that never saw the validation dates (before any refit)
            return (predict_point([f.validation_model for f in fits], bt["val"]),
                    predict_point([f.model for f in fits], bt["test"]))

        for name in sec.systems:
            t0 = time.perf_counter()
            if name == "emos_season":
                # candidates: a day-of-year EMOS and sliding windows; chosen on validation
                cands = {"day of year": fit_system("emos_global", {"season": "doy"})}
                for days in sec.season_windows:
                    cands[f"window {days:g} d"] = tuple(
                        window_emos(data, sel, masks[part], days=days, stats=stats, channel=channel,
                                    distribution=sec.distribution) for part in ("val", "test"))
                cand_val = {c: float(_model_crps(p[0], val_obs, distribution=sec.distribution).mean())
                            for c, p in cands.items()}
                chosen = min(cand_val, key=cand_val.get)
                choices.setdefault(key, {})[name] = {"chosen": chosen, "val_crps": cand_val}
                val_pred, pred = cands[chosen]
            else:
                val_pred, pred = fit_system(name, dict(sec.model_options.get(name, {})))
            # validation CRPS of the system as tested: the figure to choose settings by
            val_crps[key][name] = float(_model_crps(val_pred, val_obs, distribution=sec.distribution).mean())
            sk[name] = _model_crps(pred, obs, distribution=sec.distribution)
            if sec.distribution == "gaussian":
                mu, sigma = _da(pred["mu"], times), _da(pred["sigma"], times)
                tk[name] = {lbl: float(twcrps_gaussian(mu, sigma, obs, threshold=t, tail=lbl.split()[1]).mean())
                            for lbl, t in thresholds.items()}
            else:
                tk[name] = tails_ens(_tail_quantile_members(pred["loc"], pred["scale"]))
            timings[f"{name} {key}"] = round(time.perf_counter() - t0, 1)
            if progress is not None:
                progress(f"{name} {key}: CRPS {float(sk[name].mean()):.4f} (raw_full "
                         f"{float(full.mean()):.4f}) in {timings[f'{name} {key}']} s")

    estimator_note = ("raw: standard ensemble CRPS (= properscoring); models: closed-form CRPS of the "
                      f"{sec.distribution} predictive distribution")
    rows, docs = [], []
    for key, sk in scores.items():
        r = score_rows(sk, reference="raw_full", n_resamples=n_boot, confidence=ev.confidence, seed=ev.seed)
        for row in r:
            row["K"] = int(key[2:]) if row["system"] != "raw_full" else data.members.shape[1]
            row.update({f"tw {lbl}": v for lbl, v in tails[key][row["system"]].items()})
            row["val_crps"] = val_crps[key].get(row["system"])
        rows += [row for row in r if row["system"] != "raw_full" or key == next(iter(scores))]
        docs.append(experiment_document(
            title=f"{config.title} · {key} of {data.members.shape[1]}", variable=data.variable, units=data.units,
            estimator=estimator_note, rows=r, reference="raw_full", init_count=len(times),
            lead_hours=[data.lead_time / np.timedelta64(1, "h")], twcrps={lbl: {row["system"]: row[f"tw {lbl}"]
                                                                                for row in r} for lbl in thresholds},
            config=config.model_dump(mode="json"),
            init_period=(str(times[0])[:16], str(times[-1])[:16])))
    columns = [("system", "system", "str"), ("K", "members", "str"), ("crps", f"CRPS ({data.units})", "f3"),
               ("skill", "skill vs raw_full", "pct"), ("skill_low", "90% CI low", "pct"),
               ("skill_high", "90% CI high", "pct"), ("dm_pvalue", "DM p", "f3"),
               ("val_crps", f"val CRPS ({data.units})", "f3")]
    columns += [(f"tw {lbl}", f"twCRPS {lbl} ({t:.2f} {data.units})", "f3") for lbl, t in thresholds.items()]
    table = markdown_table(rows, columns)
    (out_dir / "table.md").write_text(
        f"## {config.title}\n\nTest: {len(times)} dates, valid {str(test.valid_time[0])[:10]} .. "
        f"{str(test.valid_time[-1])[:10]}. CRPS: {estimator_note}. Skill = 1 - CRPS/CRPS(raw_full) with "
        f"a {ev.confidence:.0%} block-bootstrap interval; twCRPS thresholds are training-period "
        "quantiles of the observations"
        + (f" (censored models: {N_TAIL_QUANTILES}-quantile ensemble, standard estimator)"
           if sec.distribution != "gaussian" else "") + ".\n\n" + table)
    dash = write_dashboard(docs, out_dir, title=config.title)
    return {"title": config.title, "kind": "station", "rows": rows, "timings": timings, "choices": choices,
            "n_test": len(times), "n_train": int(masks["train"].sum()), "n_val": int(masks["val"].sum()),
            "thresholds": thresholds, "files": {"table": str(out_dir / "table.md"), "dashboard": str(dash)}}
