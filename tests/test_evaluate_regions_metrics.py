"""Regions given by name or as lat/lon boxes, regions without grid points skipped with a note,
``extratropics`` of both hemispheres, every library metric requestable (``eecrps`` checked
against ``evaluation.metrics.eecrps``), and config errors that name the key once."""

from __future__ import annotations

import html
import sys
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
