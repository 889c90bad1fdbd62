"""Case catalogue: schema, shipped entries, box/window selection, scores, maps, bad cases."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from evaluation_data import make_world

from enspp.evaluation import scoring
from enspp.evaluation.cases import (
    SHIPPED_CATALOGUE,
    Box,
    CatalogueError,
    evaluate_case,
    exceedance_probability,
    load_catalogue,
)
from enspp.evaluation.systems import SystemField, truth_at_valid_time

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("cases"), n_init=8, n_members=5, seed=7)


def _fields(world):
    fc = xr.open_zarr(world.forecast)["t2m"]
    pr = xr.open_zarr(world.product)
    return {"raw_full": SystemField("raw_full", "t2m", "ensemble", ensemble=fc),
            "emos": SystemField("emos", "t2m", "gaussian", mu=pr["t2m_mean"], sigma=pr["t2m_std"])}


def _score(f, o):
    return scoring.crps(f, o, estimator="fair")


def test_shipped_catalogue_has_both_real_cases():
    cases = {c.id: c for c in load_catalogue(SHIPPED_CATALOGUE)}
    assert set(cases) == {"stjude-2013", "winston-2016"}
    sj = cases["stjude-2013"]
    assert sj.variable == "10fg3" and sj.selected_on_outcome and "no verifying analysis" in sj.notes.lower()
    assert sj.window.start.isoformat().startswith("2013-10-28")
    assert all(len(c.how_chosen) > 20 for c in cases.values())
    # Winston's box crosses the date line
    w = cases["winston-2016"].box
    assert w.lon_mask(np.array([175.0, 179.9, -179.5, 182.0, -170.0])).tolist() == [True, True, True, True, False]


def test_synthetic_events_plug_in(world):
    cases = load_catalogue(world.events)
    assert [c.id for c in cases] == ["warm-spell", "far-away"]


@pytest.mark.parametrize("text, match", [
    ("cases: 3\n", "must be a list"),
    ("[1, 2]\n", "top level must be a mapping"),
    ("cases:\n  - {id: a, name: A, variable: t2m, box: {lat_min: 0, lat_max: 1, lon_min: 0, lon_max: 1},"
     " window: {start: 2021-01-01, end: 2021-01-02}}\n", "case a: how_chosen"),
    ("cases:\n  - {id: a, name: A, variable: t2m, how_chosen: by hand, box: {lat_min: 5, lat_max: 1,"
     " lon_min: 0, lon_max: 1}, window: {start: 2021-01-01, end: 2021-01-02}}\n", "lat_max 1.0 < lat_min"),
    ("cases:\n  - {id: a, name: A, variable: t2m, how_chosen: by hand, box: {lat_min: 0, lat_max: 1,"
     " lon_min: 0, lon_max: 1}, window: {start: 2021-01-03, end: 2021-01-02}}\n", "is before start"),
    ("cases:\n  - &c {id: a, name: A, variable: t2m, how_chosen: by hand, box: {lat_min: 0, lat_max: 1,"
     " lon_min: 0, lon_max: 1}, window: {start: 2021-01-01, end: 2021-01-02}}\n  - *c\n", "duplicate case ids"),
    ("cases: [\n", "not valid YAML"),
])
def test_bad_catalogues(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(CatalogueError, match=match):
        load_catalogue(p)


def test_missing_catalogue(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_catalogue(tmp_path / "nope.yaml")


def test_case_scores_maps_and_improvement(world):
    case = load_catalogue(world.events)[0]
    fields = _fields(world)
    truth = xr.open_zarr(world.analysis)["t2m"]
    obs = truth_at_valid_time(truth, fields["raw_full"].template, what="test")
    res = evaluate_case(case, fields, obs, score_fn=_score, reference="raw_full", estimator="fair")
    assert res.status == "ok"
    assert res.crps["emos"] < res.crps["raw_full"]
    assert res.improvement_pct["emos"] == pytest.approx(100 * (1 - res.crps["emos"] / res.crps["raw_full"]))
    assert res.improvement_pct["raw_full"] == 0.0
    # the case CRPS is the mean over the box and the window only: check against a direct mean
    fc = fields["raw_full"].ensemble.load()
    lat, lon = fc.latitude.values, fc.longitude.values
    ilat = (lat >= 20) & (lat <= 50)
    ilon = (lon >= 20) & (lon <= 100)
    c = _score(fields["raw_full"], obs).load().isel(latitude=ilat, longitude=ilon)
    valid = (fc.init_time + fc.lead_time)
    inside = (valid >= np.datetime64(case.window.start)) & (valid <= np.datetime64(case.window.end))
    wlat = xr.DataArray(np.cos(np.deg2rad(lat[ilat])), dims="latitude")
    w = (wlat * inside).broadcast_like(c)
    assert res.crps["raw_full"] == pytest.approx(float((c * w).sum() / w.sum()), rel=1e-10)
    for name in ("raw_full_mean", "raw_full_spread", "raw_full_prob", "raw_full_error", "emos_prob", "truth"):
        assert name in res.maps
    assert float(res.maps["emos_prob"].min()) >= 0 and float(res.maps["emos_prob"].max()) <= 1
    d = res.to_dict()
    assert d["how_chosen"].startswith("fixed in advance") and d["crps_estimator"] == "fair"


def test_case_outside_period_or_domain_is_reported(world):
    fields = _fields(world)
    far = load_catalogue(world.events)[1]
    res = evaluate_case(far, fields, None, score_fn=_score, reference="raw_full", estimator="fair")
    assert res.status == "out_of_range" and "outside the data's valid times" in res.message
    moved = far.model_copy(update={"window": load_catalogue(world.events)[0].window,
                                   "box": Box(lat_min=80, lat_max=89, lon_min=0, lon_max=10)})
    res = evaluate_case(moved, fields, None, score_fn=_score, reference="raw_full", estimator="fair")
    assert res.status == "out_of_range" and "outside the data's domain" in res.message
    res = evaluate_case(far, {}, None, score_fn=_score, reference="raw_full", estimator="fair")
    assert res.status == "out_of_range" and "no system provides" in res.message


def test_exceedance_probability_gaussian_and_ensemble():
    mu = xr.DataArray([0.0, 1.0], dims="x")
    f = SystemField("g", "v", "gaussian", mu=mu, sigma=xr.ones_like(mu))
    np.testing.assert_allclose(exceedance_probability(f, 0.0).values, [0.5, 0.8413447], rtol=1e-6)
    ens = xr.DataArray([[1.0, 2.0, 3.0, np.nan]], dims=("x", "member"))
    e = SystemField("e", "v", "ensemble", ensemble=ens)
    assert float(exceedance_probability(e, 1.5)[0]) == pytest.approx(2 / 3)


def test_stjude_forecast_maps_without_truth(shared_data):
    """The real St Jude ENS: no verifying analysis, so maps and exceedance only."""
    pytest.importorskip("cfgrib")
    path = shared_data / "gridded" / "ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    parts = []
    for dt in ("cf", "pf"):
        ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={
            "indexpath": "", "filter_by_keys": {"dataType": dt, "shortName": "10fg3"}})
        da = ds["fg310"] if "fg310" in ds else ds[list(ds.data_vars)[0]]
        if "number" not in da.dims:
            da = da.expand_dims("number")
        parts.append(da)
    da = xr.concat(parts, "number").rename({"number": "member", "step": "lead_time"})
    da = da.assign_coords(member=np.arange(da.sizes["member"]))
    da = da.expand_dims(init_time=[da["time"].values]).drop_vars(
        [c for c in da.coords if c not in ("init_time", "lead_time", "member", "latitude", "longitude")])
    da = da.transpose("init_time", "lead_time", "member", "latitude", "longitude")
    case = {c.id: c for c in load_catalogue(SHIPPED_CATALOGUE)}["stjude-2013"]
    f = {"raw_full": SystemField("raw_full", "10fg3", "ensemble", ensemble=da)}
    res = evaluate_case(case, f, None, score_fn=_score, reference="raw_full", estimator="fair")
    assert res.status == "no_truth" and "no verifying analysis" in res.message
    assert res.crps == {}
    assert res.map_valid_time.startswith("2013-10-28 06")
    prob = res.maps["raw_full_prob"]
    assert float(prob.max()) > 0.3  # damaging gusts were forecast with high probability
    assert float(res.maps["raw_full_mean"].max()) > 20.0
