"""Case studies on station data: the stations in the box (each by its own latitude and
longitude), the valid times in the window, uniform weights, a time series per station instead
of maps, the report; and the Magdeburg catalogue."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import properscoring
import pytest
import xarray as xr
from scipy.stats import norm
from station_data import station_datasets, write_station_stores

from enspp.evaluation import scoring
from enspp.evaluation.cases import Box, Case, evaluate_case, load_catalogue
from enspp.evaluation.systems import SystemField, truth_at_valid_time

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[1]
MAGDEBURG_CASES = ROOT / "configs" / "cases" / "magdeburg_t2m.yaml"

#: 4 stations at (45, 5), (48.3, 8.3), (51.7, 11.7), (55, 15); the box holds the middle two
BOX = {"lat_min": 47, "lat_max": 52, "lon_min": 7, "lon_max": 12}
IN_BOX = [1, 2]
#: valid dates 2010-01-05..12 (12 UTC): days 3..10 of the series, day 7 has no observation
WINDOW = {"start": "2010-01-05T00:00", "end": "2010-01-12T23:00"}
IN_WINDOW = np.arange(3, 11)


def _case(**over) -> Case:
    return Case.model_validate({"id": "station-case", "name": "A station case", "variable": "t2m",
                                "how_chosen": "fixed for the test", "box": BOX, "window": WINDOW,
                                **over})


def _data(**kw):
    fc, an, _ = station_datasets(n_stations=4, n_days=120, **kw)
    return fc, an


def _gaussian_of(fc: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """A Gaussian system: the members' mean shifted back, their spread widened."""
    ens = fc["t2m"]
    return ens.mean("member") - 1.2, ens.std("member") + 0.4


def _evaluate(fc: xr.Dataset, an: xr.Dataset, case: Case, *, estimator: str = "standard"):
    ens = fc["t2m"]
    mu, sigma = _gaussian_of(fc)
    fields = {"raw_full": SystemField("raw_full", "t2m", "ensemble", ensemble=ens),
              "emos": SystemField("emos", "t2m", "gaussian", mu=mu, sigma=sigma)}
    obs = truth_at_valid_time(an["t2m"], ens, what="test")
    return evaluate_case(case, fields, obs, reference="raw_full", estimator=estimator,
                         score_fn=lambda f, o: scoring.crps(f, o, estimator=estimator))


def _gaussian_crps(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed form (Gneiting et al. 2005), written out here."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_station_case_crps_equals_an_independent_computation():
    """The case CRPS of an ensemble is properscoring's over exactly the stations in the box and
    the valid times in the window, each (station, valid time) with an observation weighing the
    same; that of a Gaussian system the closed form; the improvement is against the reference."""
    fc, an = _data()
    res = _evaluate(fc, an, _case())
    assert res.status == "ok" and res.estimator == "standard"
    assert res.to_dict()["crps_estimator"] == "standard"
    # by hand: the stations whose own coordinates are in the box, the days in the window
    lat, lon = fc["latitude"].values, fc["longitude"].values
    assert np.flatnonzero((lat >= 47) & (lat <= 52) & (lon >= 7) & (lon <= 12)).tolist() == IN_BOX
    ens = fc["t2m"].values[IN_WINDOW, 0][:, :, IN_BOX]               # (day, member, station)
    obs = an["t2m"].values[IN_WINDOW][:, IN_BOX]                      # (day, station)
    assert np.isnan(obs).sum() == 2  # day 7 has no observation: left out, not counted
    ok = ~np.isnan(obs)
    expected = properscoring.crps_ensemble(obs[ok], np.moveaxis(ens, 1, -1)[ok]).mean()
    assert res.crps["raw_full"] == pytest.approx(float(expected), rel=1e-6)
    mu, sigma = (x.values[IN_WINDOW, 0][:, IN_BOX] for x in _gaussian_of(fc))
    expected_g = _gaussian_crps(mu[ok].astype(float), sigma[ok].astype(float), obs[ok].astype(float)).mean()
    assert res.crps["emos"] == pytest.approx(float(expected_g), rel=1e-6)
    assert res.improvement_pct["emos"] == pytest.approx(100 * (1 - expected_g / expected), rel=1e-6)
    assert res.improvement_pct["raw_full"] == 0.0
    # the fair estimator is the one named when it is the one asked for
    fair = _evaluate(fc, an, _case(), estimator="fair")
    assert fair.estimator == "fair" and fair.crps["raw_full"] < res.crps["raw_full"]


def test_stations_outside_the_box_and_times_outside_the_window_do_not_count():
    fc, an = _data()
    base = _evaluate(fc, an, _case())
    outside_days = np.setdiff1d(np.arange(fc.sizes["init_time"]), IN_WINDOW)
    fc2, an2 = fc.copy(deep=True), an.copy(deep=True)
    # wreck every other station, and every other day at the stations in the box
    fc2["t2m"][:, :, :, [0, 3]] += 50.0
    an2["t2m"][:, [0, 3]] -= 50.0
    fc2["t2m"][outside_days] += 30.0
    an2["t2m"][outside_days] = np.nan
    moved = _evaluate(fc2, an2, _case())
    assert moved.crps == pytest.approx(base.crps, rel=1e-12)
    # ... while a station in the box does count
    fc3 = fc.copy(deep=True)
    fc3["t2m"][:, :, :, 2] += 5.0
    assert _evaluate(fc3, an, _case()).crps["raw_full"] > base.crps["raw_full"] + 1.0


def test_a_station_is_in_the_box_by_its_own_coordinates():
    """A box holding one station's latitude and another's longitude holds no station (the
    latitude x longitude product of the stations' coordinates would have put one in it); a
    station without coordinates is outside."""
    fc, an = _data()
    res = _evaluate(fc, an, _case(box={"lat_min": 47, "lat_max": 49, "lon_min": 11, "lon_max": 12}))
    assert res.status == "out_of_range"
    assert res.message == ("case 'station-case': box 47°N–49°N, 11°E–12°E holds none of the data's "
                           "stations (4 stations: latitudes 45..55, longitudes 5..15)")
    lost = fc.assign_coords(latitude=("station", [45.0, np.nan, 51.6666, 55.0]))
    res = _evaluate(lost, an.assign_coords(latitude=lost["latitude"]), _case())
    assert res.status == "ok" and res.series["station"].values.tolist() == ["S2"]
    # across the date line and in 0..360 as for grids
    far = fc.assign_coords(longitude=("station", [170.0, 179.5, 185.0, 200.0]))
    res = _evaluate(far, an.assign_coords(longitude=far["longitude"]),
                    _case(box={"lat_min": 40, "lat_max": 60, "lon_min": 175, "lon_max": -174}))
    assert res.series["station"].values.tolist() == ["S1", "S2"]


def test_out_of_range_station_cases_say_why():
    fc, an = _data()
    res = _evaluate(fc, an, _case(window={"start": "2015-01-01T00:00", "end": "2015-01-07T00:00"}))
    assert res.status == "out_of_range"
    assert res.message == ("case 'station-case': window 2015-01-01 00:00..2015-01-07 00:00 is outside "
                           "the data's valid times (2010-01-02 12:00..2010-05-01 12:00)")
    res = _evaluate(fc, an, _case(box={"lat_min": -40, "lat_max": -30, "lon_min": 0, "lon_max": 10}))
    assert res.status == "out_of_range" and "holds none of the data's stations" in res.message
    bare = fc.drop_vars(["latitude", "longitude"])
    res = _evaluate(bare, an.drop_vars(["latitude", "longitude"]), _case())
    assert res.status == "out_of_range" and "no latitude/longitude coordinates" in res.message
    # the box is named in the case's own words (as for a grid)
    between = BOX | {"lat_min": 52.5, "lat_max": 53}
    assert Box(**between).describe() in _evaluate(fc, an, _case(box=between)).message


def test_a_station_case_carries_a_time_series_per_station_not_maps():
    fc, an = _data()
    res = _evaluate(fc, an, _case(threshold=3.0))
    assert res.maps is None and res.map_valid_time is None
    s = res.series
    assert s["station"].values.tolist() == ["S1", "S2"] and s.sizes["valid_time"] == IN_WINDOW.size
    valid = fc["init_time"].values[IN_WINDOW] + fc["lead_time"].values[0]
    assert (s["valid_time"].values == valid).all() and (s["lead_hours"].values == 24.0).all()
    np.testing.assert_allclose(s["truth"].values, an["t2m"].values[IN_WINDOW][:, IN_BOX].T)
    ens = fc["t2m"].values[IN_WINDOW, 0][:, :, IN_BOX]
    np.testing.assert_allclose(s["raw_full_mean"].values, np.nanmean(ens, axis=1).T, rtol=1e-6)
    np.testing.assert_allclose(s["raw_full_spread"].values, np.nanstd(ens, axis=1, ddof=1).T, rtol=1e-5)
    np.testing.assert_allclose(s["raw_full_prob"].values, (ens > 3.0).mean(axis=1).T)
    # one lead time: the mean of the series' CRPS is the case's CRPS
    assert float(s["raw_full_crps"].mean()) == pytest.approx(res.crps["raw_full"], rel=1e-9)
    doc = json.loads(json.dumps(res.to_dict()))
    ser = doc["series"]
    assert ser["systems"] == ["raw_full", "emos"] and len(ser["valid_times"]) == IN_WINDOW.size
    assert ser["valid_times"][0] == "2010-01-05 12:00"
    st = ser["stations"][0]
    assert st["id"] == "S1" and st["truth"][4] is None  # the missing observation
    assert set(st) >= {"latitude", "longitude", "truth", "mean", "spread", "crps", "prob"}
    # without a truth: the series without scores
    ens_f = SystemField("raw_full", "t2m", "ensemble", ensemble=fc["t2m"])
    res = evaluate_case(_case(), {"raw_full": ens_f}, None, reference="raw_full", estimator="standard",
                        score_fn=lambda f, o: scoring.crps(f, o, estimator="standard"))
    assert res.status == "no_truth" and "time series" in res.message and res.crps == {}
    assert "truth" not in res.series and "raw_full_mean" in res.series


def _product(fc: xr.Dataset, path: Path) -> Path:
    mu, sigma = _gaussian_of(fc)
    ds = xr.Dataset({"t2m_mean": mu.astype("float32"), "t2m_std": sigma.astype("float32")})
    ds.to_zarr(path, mode="w")
    return path


def test_a_report_with_a_station_case_renders(tmp_path):
    """enspp's evaluate on station stores with a catalogue: the station case is scored (no
    longer refused as 'a box of a grid'), appears in scores.json and the dashboard with its
    table and figure; a case outside the data is listed apart."""
    from enspp.evaluation.config import EvaluateConfig
    from enspp.evaluation.evaluate import evaluate

    stores = write_station_stores(tmp_path / "stores", n_stations=4, n_days=120)
    fc, _, _ = station_datasets(n_stations=4, n_days=120)
    product = _product(fc, tmp_path / "product.zarr")
    cat = tmp_path / "cases.yaml"
    cat.write_text(
        "cases:\n"
        f"  - {{id: cold-snap, name: Cold snap, variable: t2m, box: {json.dumps(BOX)},\n"
        f"     window: {json.dumps(WINDOW)}, threshold: 3.0, how_chosen: fixed for the test,\n"
        "     selected_on_outcome: true}\n"
        "  - {id: elsewhere, name: Elsewhere, variable: t2m, how_chosen: fixed for the test,\n"
        "     box: {lat_min: -40, lat_max: -30, lon_min: 0, lon_max: 10}, window: "
        f"{json.dumps(WINDOW)}}}\n")
    cfg = EvaluateConfig.model_validate({
        "title": "stations", "truth": str(stores.analysis), "variables": ["t2m"],
        "systems": [{"name": "raw_full", "path": str(stores.forecast)},
                    {"name": "emos", "path": str(product), "type": "gaussian"}],
        "metrics": ["crps"], "crps_estimator": "standard", "bootstrap": {"n": 20},
        "missing": "skip", "cases": [str(cat)]})
    out = tmp_path / "report"
    result = evaluate(cfg, out, progress=False)
    direct = _evaluate(fc, station_datasets(n_stations=4, n_days=120)[1], _case())
    assert result.cases[0].crps == pytest.approx(direct.crps, rel=1e-6)
    doc = json.loads((out / "scores.json").read_text())
    case = doc["cases"][0]
    assert case["status"] == "ok" and case["crps_estimator"] == (
        "standard ensemble CRPS; closed-form gaussian CRPS")
    assert [s["id"] for s in case["series"]["stations"]] == ["S1", "S2"]
    assert (out / case["plot"]).is_file() and (out / case["plot"]).stat().st_size > 1000
    assert doc["cases"][1]["status"] == "out_of_range"
    assert doc["cases_not_covered"] == [doc["cases"][1]["message"]]
    assert not doc["problems"]
    html = (out / "index.html").read_text()
    assert 'id="case-cold-snap"' in html and 'class="case-series"' in html
    assert "stations in the box" in html and "2010-01-05 12:00 UTC" in html
    assert "1 catalogue case(s) outside this evaluation" in html


# ------------------------------------------------------------------ the Magdeburg catalogue
def test_magdeburg_catalogue_holds_the_hottest_and_coldest_observed_weeks(shared_data):
    """configs/cases/magdeburg_t2m.yaml: both weeks are chosen on the outcome and say so; they
    are the 7-day windows of highest and lowest mean observation in the test period."""
    cases = {c.id: c for c in load_catalogue(MAGDEBURG_CASES)}
    assert set(cases) == {"magdeburg-hottest-week-2013", "magdeburg-coldest-week-2012"}
    assert all(c.selected_on_outcome and "observed outcome" in c.how_chosen for c in cases.values())
    path = shared_data / "station" / "ecmwf_ens_t2m_magdeburg_2002-2014.nc"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    obs = xr.open_dataset(path)["t2m_obs"].to_series()["2012-01-01":"2014-12-31"].asfreq("D")
    week = obs.rolling(7, min_periods=7).mean()
    for cid, end in (("magdeburg-hottest-week-2013", week.idxmax()),
                     ("magdeburg-coldest-week-2012", week.idxmin())):
        w = cases[cid].window
        assert pd.Timestamp(w.end).normalize() == end
        assert pd.Timestamp(w.start).normalize() == end - pd.Timedelta(days=6)
        box = cases[cid].box
        assert box.lat_mask(np.array([52.1]))[0] and box.lon_mask(np.array([11.6]))[0]


def test_magdeburg_experiment_reads_the_catalogue():
    """The experiment's evaluate section names the catalogue, resolved (against the work
    directory) to the file, in every point."""
    from enspp.flows.experiment import load_experiment

    exp = load_experiment(ROOT / "configs" / "experiments" / "magdeburg_t2m.yaml")
    assert {tuple(Path(c).resolve() for c in p.config.evaluate.cases) for p in exp.points} \
        == {(MAGDEBURG_CASES,)}
