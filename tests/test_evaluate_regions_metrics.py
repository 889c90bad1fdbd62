"""Regions given by name or as lat/lon boxes, regions without grid points skipped with a note,
``extratropics`` of both hemispheres, every library metric requestable (``eecrps`` checked
against ``evaluation.metrics.eecrps``), and config errors that name the key once."""

from __future__ import annotations

import html
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_data import config_dict, make_world  # noqa: E402

from enspp.evaluation import crps_ensemble, crps_gaussian, eecrps, region_weights  # noqa: E402
from enspp.evaluation.config import EvaluateConfigError, config_from_mapping  # noqa: E402
from enspp.evaluation.evaluate import evaluate  # noqa: E402
from enspp.evaluation.weights import REGIONS, Region, RegionError, region_mask  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("regions"), n_init=8, n_members=5, seed=4)


def _cfg(world, **over):
    base = {"metrics": ["crps"], "cases": [], "regions": ["global"],
            "bootstrap": {"n": 20, "block_length": 2}}
    base.update(over)
    return config_from_mapping(config_dict(world, **base))


def _pointwise(world):
    fc = xr.open_zarr(world.forecast)["t2m"].load()
    ana = xr.open_zarr(world.analysis)["t2m"].load()
    obs = ana.sel(time=fc.init_time + fc.lead_time).drop_vars("time")
    return fc, obs


def _wmean(score, weights):
    return float((score * weights).sum() / weights.broadcast_like(score).where(score.notnull()).sum())


# ------------------------------------------------------------------ regions
def test_extratropics_is_both_hemispheres_poleward_of_20():
    lat = xr.DataArray(np.array([60.0, 30.0, 10.0, -10.0, -30.0, -60.0]), dims="latitude")
    lon = xr.DataArray(np.array([0.0, 90.0]), dims="longitude")
    m = region_mask(lat, lon, "extratropics")
    assert m.any("longitude").values.tolist() == [True, True, False, False, True, True]
    both = region_mask(lat, lon, "extratropics_n") | region_mask(lat, lon, "extratropics_s")
    assert (m == both).all()


def test_a_box_region_scores_like_its_mask(world):
    """``regions: [{name: band, ...}]`` in YAML: scores equal a direct weighted mean."""
    box = {"name": "band", "lat_min": -20, "lat_max": 45, "lon_min": 300, "lon_max": 60}
    cfg = _cfg(world, regions=["extratropics", box])
    assert cfg.regions[1] == Region(**box)
    ds = evaluate(cfg).scores["t2m"]
    assert list(ds.region.values) == ["extratropics", "band"]
    fc, obs = _pointwise(world)
    crps = crps_ensemble(fc, obs, estimator="fair")
    for name, reg in (("extratropics", "extratropics"), ("band", Region(**box))):
        direct = _wmean(crps, region_weights(fc.latitude, fc.longitude, reg))
        got = float(ds["crps_all"].sel(system="raw_full", region=name))
        assert got == pytest.approx(direct, rel=1e-10), name


def test_a_region_without_grid_points_is_skipped_with_a_note(world, tmp_path, capsys):
    """The world spans 60N..60S: an Arctic box holds no point."""
    arctic = {"name": "arctic", "lat_min": 70, "lat_max": 90}
    result = evaluate(_cfg(world, regions=["global", arctic]), tmp_path / "rep")
    ds = result.scores["t2m"]
    assert list(ds.region.values) == ["global"]
    assert ds.attrs["regions_skipped"] == "arctic"
    assert len(result.notes) == 1 and result.notes[0].startswith(
        "region 'arctic' holds no grid point of 't2m' (grid 60°S–60°N, all longitudes)")
    assert result.notes[0].endswith(": skipped")
    page = html.unescape((tmp_path / "rep" / "index.html").read_text())
    assert "region 'arctic' holds no grid point" in page
    with pytest.raises(RegionError, match=r"evaluate.regions: none of \['arctic'\] holds a grid point"):
        evaluate(_cfg(world, regions=[arctic]))
    # through the CLI: a note line, exit 0
    from enspp.flows.cli import main

    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": config_dict(
        world, regions=["global", arctic], cases=[], metrics=["crps"], bootstrap={"n": 20})}))
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "cli")]) == 0
    assert "note: region 'arctic' holds no grid point of 't2m'" in capsys.readouterr().out


@pytest.mark.parametrize("regions, match", [
    (["extratropic"], "evaluate.regions: unknown region 'extratropic' .known: global, tropics, "
                      "extratropics"),
    ([{"name": "x", "lat_min": 50, "lat_max": 40}], r"evaluate.regions: region 'x': need -90 <= lat_min"),
    ([{"name": "x", "lat_mn": 40}], "evaluate.regions: region 'x': lat_mn: unknown key"),
    ([{"name": "../x"}], r"evaluate.regions: region name '../x'"),
    (["global", {"name": "global", "lat_min": 0}], r"duplicate region names \['global'\]"),
    ([], "at least one region"),
])
def test_region_errors_name_the_key_once(tmp_path, regions, match):
    from enspp.flows.config import ConfigError, load_config

    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"systems": [{"name": "raw_full", "path": "f"}],
                                                "regions": regions}}))
    with pytest.raises(ConfigError, match=match) as e:
        load_config(cfg)
    assert str(e.value).count("evaluate") == 1, e.value  # no doubled prefix


def test_every_named_region_is_valid():
    assert {"global", "tropics", "extratropics", "extratropics_n", "extratropics_s"} <= set(REGIONS)
    with pytest.raises(ValueError, match="northern band"):
        Region(name="bad", lat_min=-30, lat_max=30, symmetric=True)


# ------------------------------------------------------------------ metrics
def test_metric_errors_name_the_key_once(tmp_path):
    from enspp.flows.config import ConfigError, load_config

    cfg = tmp_path / "enspp.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"systems": [{"name": "raw_full", "path": "f"}],
                                                "metrics": ["crps", "brier"]}}))
    with pytest.raises(ConfigError, match=r"^\S+: evaluate.metrics: unknown \['brier'\] "
                                          r"\(known: crps, twcrps, eecrps,"):
        load_config(cfg)


def test_registry_names_are_accepted():
    cfg = config_from_mapping({"systems": [{"name": "raw_full", "path": "f"}],
                               "metrics": ["crps_standard", "eecrps", "pit_histogram",
                                           "spread_skill_ratio", "twcrps_gaussian"]})
    assert cfg.metrics == ["crps", "eecrps", "rank_histogram", "spread_skill", "twcrps"]
    assert cfg.crps_estimator == "standard"
    with pytest.raises(EvaluateConfigError, match=r"^evaluate: metrics: \['standard'\] and "
                                                  "crps_estimator 'fair' ask for different"):
        config_from_mapping({"systems": [{"name": "raw_full", "path": "f"}],
                             "metrics": ["crps_standard"], "crps_estimator": "fair"})


def test_every_library_metric_can_be_requested():
    """Every name of the metric registry (evaluation.METRICS) is accepted by evaluate.metrics,
    except the censored CRPS, which products of a censored model get automatically."""
    from enspp.evaluation import METRICS

    names = [m for m in METRICS if not m.startswith("crps_censored")]
    for estimator in ("fair", "standard"):  # one ensemble CRPS estimator per evaluation
        other = "standard" if estimator == "fair" else "fair"
        cfg = config_from_mapping({"systems": [{"name": "raw_full", "path": "f"}],
                                   "metrics": [m for m in names if not m.endswith(other)]})
        assert cfg.crps_estimator == estimator
        assert set(cfg.metrics) == {"crps", "twcrps", "bias", "mae", "rmse", "spread_skill",
                                    "rank_histogram"} | ({"eecrps"} if estimator == "fair" else set())


def test_eecrps_equals_the_library_with_the_reference_weights(world):
    """EECRPS of every system is |EFI(raw_full)| x its CRPS, area-weighted; for raw_full it is
    the library's ``eecrps`` with the same model climate (quantiles of the members over the
    evaluated init times), computed here independently with xarray."""
    cfg = _cfg(world, metrics=["crps", "eecrps"], regions=["global", "tropics"],
               eecrps={"n_quantiles": 19})
    result = evaluate(cfg)
    ds = result.scores["t2m"]
    assert any(n.startswith("eecrps of 't2m': weights |EFI| of 'raw_full'") for n in result.notes)
    fc, obs = _pointwise(world)
    levels = np.arange(1, 20) / 20
    clim = (fc.stack(sample=("init_time", "member")).reset_index("sample", drop=True)
            .quantile(levels, dim="sample").rename(quantile="quantile"))
    ref = eecrps(fc, obs, clim, estimator="fair")
    from enspp.evaluation import efi

    weight = np.abs(efi(fc, clim))
    mu = xr.open_zarr(world.product)["t2m_mean"].load()
    sd = xr.open_zarr(world.product)["t2m_std"].load()
    prod = weight * crps_gaussian(mu, sd, obs)
    for region in ("global", "tropics"):
        w = region_weights(fc.latitude, fc.longitude, region)
        got = ds["eecrps_all"].sel(region=region)
        assert float(got.sel(system="raw_full")) == pytest.approx(_wmean(ref, w), rel=1e-9)
        assert float(got.sel(system="emos")) == pytest.approx(_wmean(prod, w), rel=1e-9)
    # a smaller weight than 1 on average: EECRPS below CRPS, and non-zero
    crps = ds["crps_all"].sel(region="global")
    assert (ds["eecrps_all"].sel(region="global") < crps).all()
    assert (ds["eecrps_all"].sel(region="global") > 0).all()


def test_eecrps_with_a_climatology_period_and_without_an_ensemble(world):
    cfg = _cfg(world, metrics=["eecrps"],
               eecrps={"climatology": {"start": "2021-01-01", "end": "2021-01-04"}})
    ds = evaluate(cfg).scores["t2m"]
    assert np.isfinite(ds["eecrps_all"]).all()
    only_gaussian = config_dict(world, metrics=["eecrps"], cases=[], regions=["global"])
    only_gaussian["systems"] = [s for s in only_gaussian["systems"] if s.get("type") == "gaussian"]
    only_gaussian["reference"] = "emos"
    with pytest.raises(EvaluateConfigError, match="eecrps of 't2m' needs an ensemble system"):
        evaluate(config_from_mapping(only_gaussian))


# ------------------------------------------------------------------ regions of stations
def _stations() -> xr.Dataset:
    """Stations in no order of latitude (a grid's checks would refuse them), one without
    coordinates, one in each hemisphere's extratropics, one on each side of the dateline."""
    lat = [52.1, 48.0, -35.0, 10.0, np.nan, 55.0, -17.5]
    lon = [11.6, 2.3, 150.0, -75.0, np.nan, -3.0, 178.0]
    return xr.Dataset(coords={"station": [f"S{i}" for i in range(len(lat))],
                              "latitude": ("station", np.asarray(lat)),
                              "longitude": ("station", np.asarray(lon))})


@pytest.mark.parametrize("region, inside", [
    ("global", ["S0", "S1", "S2", "S3", "S4", "S5", "S6"]),
    ("europe", ["S0", "S1", "S5"]),
    ({"name": "north_of_50", "lat_min": 50, "lat_max": 90}, ["S0", "S5"]),
    ({"name": "east", "lon_min": 0, "lon_max": 180}, ["S0", "S1", "S2", "S6"]),
    ("extratropics", ["S0", "S1", "S2", "S5"]),
    ("fiji", ["S6"]),
    ("tropics", ["S3", "S6"]),
])
def test_a_region_of_stations_holds_exactly_the_stations_inside(region, inside):
    """Station data (``latitude(station)``, ``longitude(station)``): one mask value per
    station from its own coordinates, not a latitude x longitude product (which warned of
    duplicate ``station`` dims and mixed one station's latitude with another's longitude);
    the station weights agree, a symmetric region included."""
    from enspp.evaluation.weights import split_regions, station_weights

    st = _stations()
    reg = Region(**region) if isinstance(region, dict) else region
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = region_mask(st["latitude"], st["longitude"], reg)
        weights = region_weights(st["latitude"], st["longitude"], reg)
        kept, empty = split_regions(st["latitude"], st["longitude"], [reg, "north_america"])
        per_station = station_weights(st, reg)
    assert mask.dims == ("station",) and mask.dtype == bool
    assert list(st.station.values[mask.values]) == inside
    assert weights.values.tolist() == mask.values.astype(float).tolist()  # uniform inside
    assert per_station.values.tolist() == weights.values.tolist()
    assert [r.name for r in kept] == [Region(**region).name if isinstance(region, dict) else region]
    assert [r.name for r in empty] == ["north_america"]


def test_a_region_without_stations_raises_and_bad_station_latitudes_are_named():
    st = _stations().isel(station=[0, 1])
    with pytest.raises(RegionError, match="'tropics' contains no point of the points"):
        region_weights(st["latitude"], st["longitude"], "tropics")
    bad = st.assign_coords(latitude=("station", [52.0, 95.0]))
    with pytest.raises(RegionError, match=r"point latitudes outside -90..90: min 52.0, max 95.0"):
        region_mask(bad["latitude"], bad["longitude"], "europe")


def test_validate_of_a_station_config_checks_regions_per_station(tmp_path, capsys):
    """``enspp validate`` on station stores (3 stations at 45, 50, 55 N): a region holding
    only the middle station is kept, one holding none is a note naming the stations, and
    nothing warns of duplicate ``station`` dims."""
    from station_data import write_station_stores

    from enspp.flows.cli import main
    from enspp.flows.config import load_config
    from enspp.flows.preflight import check_config

    write_station_stores(tmp_path / "stores", n_stations=3, n_days=120)
    middle = {"name": "middle", "lat_min": 49, "lat_max": 51, "lon_min": 9, "lon_max": 11}
    corner = {"name": "corner", "lat_min": 49, "lat_max": 51, "lon_min": 14, "lon_max": 16}
    path = tmp_path / "enspp.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": {"stores": {"forecast": "stores/forecast.zarr", "analysis": "stores/analysis.zarr"},
                     "features": {"variables": ["t2m"], "targets": ["t2m"], "target_lead_time": 24},
                     "members": {"k": 5},
                     "split": {"train": {"start": "2010-01-01", "end": "2010-02-28"},
                               "val": {"start": "2010-03-01", "end": "2010-03-15"},
                               "test": {"start": "2010-03-16", "end": "2010-04-30"}}},
        "evaluate": {"truth": "stores/analysis.zarr", "variables": ["t2m"], "split": "test",
                     "systems": [{"name": "raw_full", "path": "stores/forecast.zarr"}],
                     "regions": ["global", middle, corner, "tropics"], "metrics": ["crps"]}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_config(load_config(path))
    assert report.problems == []
    regions = [n for n in report.notes if n.startswith("evaluate.regions")]
    # the outer product of the stations' latitudes and longitudes put the 50 N station's
    # latitude with the 55 N station's 15 E: 'corner' seemed to hold a station
    assert regions == [f"evaluate.regions: {name!r} holds no station of the stores (3 stations, "
                       "45°N–55°N, 5°E–15°E): evaluate skips it" for name in ("corner", "tropics")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["validate", str(path)]) == 0
    assert not [w for w in seen if "Duplicate dimension" in str(w.message)]
    assert "'tropics' holds no station" in capsys.readouterr().out
