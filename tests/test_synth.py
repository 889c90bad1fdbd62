"""The synthetic world: determinism, files the ingest reads, and the designed skill gaps."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import properscoring as ps
import pytest
import xarray as xr
import yaml
from pydantic import ValidationError
from scipy.special import ndtr

from enspp.data import schema
from enspp.data.synth import (
    SynthConfig,
    SynthError,
    build_world,
    generate_world,
    parse_grid,
    parse_years,
    simulate,
)
from enspp.data.synth.world import AnalysisChunk

#: a tiny world for the file tests (weekly inits, one year)
TINY = dict(seed=7, grid=(16, 32), years=(2012, 2012), init_weekdays=(0,), n_perturbed=4,
            variables=("z500", "t850", "t2m"), events_per_year=2)
#: a small in-memory world for the statistical tests (two years: fit on one, score the other)
SMALL = dict(seed=11, grid=(16, 32), years=(2012, 2013), init_weekdays=(0, 3), n_perturbed=10,
             events_per_year=4)


from test_store import digest as _digest  # noqa: E402  (content of a directory, file by file)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("synth") / "a", SynthConfig(**TINY))


@pytest.fixture(scope="module")
def small():
    """In-memory forecasts, oracle and truth of the SMALL world, as arrays per variable/lead."""
    cfg = SynthConfig(**SMALL)
    world = build_world(cfg)
    truth, chunks = {}, []
    for ch in simulate(world):
        if isinstance(ch, AnalysisChunk):
            truth.update({d: {n: ch.fields[n][i] for n in cfg.variables} for i, d in enumerate(ch.days)})
        else:
            chunks.append(ch)
    inits = pd.DatetimeIndex([c.init for c in chunks])
    out = {}
    for name in cfg.variables:
        for j, lead in enumerate(cfg.lead_days):
            out[name, lead] = dict(
                fc=np.stack([c.members[name][j] for c in chunks]).astype(float),
                mu=np.stack([c.mu[name][j] for c in chunks]).astype(float),
                sigma=np.stack([c.sigma[name][j] for c in chunks]).astype(float),
                y=np.stack([truth[c.init + pd.Timedelta(days=lead)][name] for c in chunks]))
    return dict(world=world, inits=inits, data=out, truth=truth, train=np.asarray(inits.year == 2012))


# ------------------------------------------------------------------ files and determinism
def test_same_seed_same_bytes_different_seed_different(tiny_world, tmp_path):
    again = generate_world(tmp_path / "b", SynthConfig(**TINY))
    a, b = _digest(tiny_world.root), _digest(again.root)
    assert a == b
    other = generate_world(tmp_path / "c", SynthConfig(**{**TINY, "seed": 8}))
    c = _digest(other.root)
    assert set(a) == set(c)
    differing = [k for k in a if a[k] != c[k]]
    assert any(k.startswith("forecast/") for k in differing)
    assert any(k.startswith("analysis/") for k in differing)
    assert "static.nc" in differing


def test_worker_processes_write_the_same_bytes(tiny_world, tmp_path):
    """Forecast files computed in 2 worker processes equal those made in this process."""
    pooled = generate_world(tmp_path / "pooled", SynthConfig(**TINY), workers=2)
    assert _digest(pooled.root) == _digest(tiny_world.root)
    assert pooled.forecast_files == tuple(pooled.root / p.relative_to(tiny_world.root)
                                          for p in tiny_world.forecast_files)


def test_negative_workers_rejected(tmp_path):
    with pytest.raises(SynthError, match="workers must be >= 0"):
        generate_world(tmp_path / "w", SynthConfig(**TINY), workers=-1)
    assert not (tmp_path / "w").exists()


def test_layout(tiny_world):
    cfg = SynthConfig(**TINY)
    n_inits = len(pd.date_range("2012-01-01", "2012-12-31", freq="W-MON"))
    assert len(tiny_world.forecast_files) == n_inits
    assert tiny_world.forecast_files[0].name == "ens_2012010200.grib"
    # daily truth, one file per month, covering the last valid time (2013-01-02)
    assert [p.name for p in tiny_world.analysis_files][-1] == "analysis_201301.grib"
    assert tiny_world.static.is_file() and tiny_world.oracle.is_dir() and tiny_world.events.is_file()
    saved = yaml.safe_load(tiny_world.config.read_text())["synth"]
    assert SynthConfig(**saved) == cfg


def test_forecast_files_pass_readers_and_schema(tiny_world):
    from enspp.data.grib import read_grib_eccodes
    from enspp.data.readers import open_ens_grib

    fc = read_grib_eccodes(tiny_world.forecast_files[:3], kind="forecast")
    schema.validate(fc, kind="forecast", source="synth forecast")
    assert fc.sizes["member"] == 5 and fc.sizes["init_time"] == 3
    assert list(pd.to_timedelta(fc.lead_time.values) / pd.Timedelta(hours=1)) == [24, 48]
    assert fc.latitude.values[0] > fc.latitude.values[-1]
    assert set(schema.available_variables(fc)) == {"z500", "z850", "t500", "t850", "t2m"}
    z = schema.select_variable(fc, "z500")
    assert 4.5e4 < float(z.min()) and float(z.max()) < 6.2e4  # geopotential, m2 s-2
    cf = open_ens_grib(tiny_world.forecast_files[0])  # cfgrib, cf + pf
    schema.validate(cf, kind="forecast")
    np.testing.assert_allclose(schema.select_variable(cf, "t2m").values,
                               schema.select_variable(fc, "t2m").isel(init_time=[0]).values, atol=0.01)


def test_analysis_static_oracle_pass_readers_and_schema(tiny_world):
    from enspp.data.readers import open_analysis

    an = open_analysis(tiny_world.analysis_files[:2])
    schema.validate(an.load(), kind="analysis", source="synth analysis")
    assert an.sizes["time"] == 31 + 29
    static = xr.open_dataset(tiny_world.static)
    assert set(np.unique(static.lsm.values)) == {0.0, 1.0}
    assert 0.15 < float(static.lsm.mean()) < 0.5
    assert float(static.orog.where(static.lsm == 0).max()) == 0.0 and float(static.orog.max()) > 1000
    oracle = xr.open_zarr(tiny_world.oracle)
    for v in TINY["variables"]:
        assert oracle[f"{v}_mu"].dims == ("init_time", "lead_time", "latitude", "longitude")
        assert oracle[f"{v}_sigma"].attrs["units"] == oracle[f"{v}_mu"].attrs["units"]
        assert float(oracle[f"{v}_sigma"].min()) > 0
    assert "exact predictive distribution" in oracle.attrs["description"]
    assert oracle.sizes["init_time"] == len(tiny_world.forecast_files)


def test_files_pass_ingest(tiny_world, tmp_path):
    from enspp.data.ingest import ingest
    from enspp.data.store import open_store

    ingest(tiny_world.forecast_files[:4], tmp_path / "forecast.zarr", kind="forecast", progress=False)
    ingest(tiny_world.analysis_files[:2], tmp_path / "analysis.zarr", kind="analysis", progress=False)
    fc = open_store(tmp_path / "forecast.zarr")
    an = open_store(tmp_path / "analysis.zarr")
    assert fc.sizes["init_time"] == 4 and fc.sizes["member"] == 5
    assert an.sizes["time"] == 60
    # the truth in the store is the analysis at valid time, within GRIB packing precision
    t2m = schema.select_variable(an, "t2m").sel(time="2012-01-03").values
    fc_valid = schema.select_variable(fc, "t2m").isel(init_time=0, lead_time=0).mean("member").values
    assert np.sqrt(np.mean((t2m - fc_valid) ** 2)) < 15.0


# ------------------------------------------------------------------ the designed statistics
def _crps_gauss(mu, sigma, y):
    z = (y - mu) / sigma
    return sigma * (z * (2 * ndtr(z) - 1) + 2 * np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi))


def _local_emos(fc: np.ndarray, y: np.ndarray, train: np.ndarray):
    """Moment-fitted local EMOS: mean by OLS on the ensemble mean, variance by OLS of the
    squared residual on the ensemble variance (per grid point, clipped positive)."""
    m, v = fc[:, 1:].mean(1), fc[:, 1:].var(1, ddof=1)
    mt, vt, yt = m[train], v[train], y[train]
    b = ((mt - mt.mean(0)) * (yt - yt.mean(0))).mean(0) / mt.var(0)
    a = yt.mean(0) - b * mt.mean(0)
    r2 = (yt - a - b * mt) ** 2
    d = np.clip(((vt - vt.mean(0)) * (r2 - r2.mean(0))).mean(0) / vt.var(0), 0, None)
    c = np.clip(r2.mean(0) - d * vt.mean(0), 1e-6 * r2.mean(0), None)
    return a + b * m, np.sqrt(c + d * v)


@pytest.mark.parametrize("name", ["z500", "t850", "t2m"])
def test_truth_is_a_draw_from_the_oracle(small, name):
    for lead in (1, 2):
        d = small["data"][name, lead]
        z = (d["y"] - d["mu"]) / d["sigma"]
        assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.06
        pit = ndtr(z).ravel()
        hist = np.histogram(pit, bins=10, range=(0, 1))[0] / pit.size
        assert np.abs(hist - 0.1).max() < 0.01


@pytest.mark.parametrize("name", ["z500", "t850", "t2m"])
def test_raw_ensemble_under_dispersive_and_biased(small, name):
    for lead in (1, 2):
        d = small["data"][name, lead]
        pf = d["fc"][:, 1:]
        err = pf.mean(1) - d["y"]
        ratio = np.sqrt(pf.var(1, ddof=1).mean() / (err**2).mean())
        assert ratio < 0.8, f"{name} +{lead}d spread/skill {ratio:.2f}"
        # a systematic error pattern: the time-mean error is far from zero at many points
        point_bias = err.mean(0) / d["sigma"].mean(0)
        assert np.sqrt((point_bias**2).mean()) > 0.2


@pytest.mark.parametrize("name", ["z500", "t850", "t2m"])
def test_oracle_beats_raw_ensemble_and_local_emos(small, name):
    test = ~small["train"]
    for lead in (1, 2):
        d = small["data"][name, lead]
        y = d["y"][test]
        raw = ps.crps_ensemble(y, np.moveaxis(d["fc"][test, 1:], 1, -1)).mean()
        emu, esig = _local_emos(d["fc"], d["y"], small["train"])
        emos = _crps_gauss(emu[test], esig[test], y).mean()
        oracle = _crps_gauss(d["mu"][test], d["sigma"][test], y).mean()
        assert oracle < 0.8 * raw, f"{name} +{lead}d oracle {oracle:.4g} raw {raw:.4g}"
        assert emos < raw
        assert oracle < 0.95 * emos, f"{name} +{lead}d oracle {oracle:.4g} EMOS {emos:.4g}"


def test_extremes_in_catalogue_and_data(small, tiny_world):
    from enspp.evaluation.cases import load_catalogue

    cases = load_catalogue(tiny_world.events)
    assert len(cases) == 2 and {c.kind for c in cases} == {"heat_dome", "deep_low"}
    assert all(not c.selected_on_outcome and "construction" in c.how_chosen for c in cases)
    world = small["world"]
    assert len(world.events) == 8
    for ev in world.events:
        spec_clim, spec_sd = _climate(world, ev.variable, ev.peak)
        lat_min, lat_max, lon_min, lon_max = ev.box
        box = ((world.lat >= lat_min) & (world.lat <= lat_max))[:, None] & \
              ((world.lon >= lon_min) & (world.lon <= lon_max))[None, :]
        anomaly = (small["truth"][ev.peak][ev.variable] - spec_clim) / spec_sd
        sign = 1 if ev.kind == "heat_dome" else -1
        assert (sign * anomaly)[box].max() > 2.5, ev.id
    # the forecast under-predicts the intensity: at the peaks, the ensemble mean anomaly is
    # smaller than the oracle mean anomaly (which the truth follows)
    under = []
    for ev in world.events:
        for (name, lead), d in small["data"].items():
            if name != ev.variable:
                continue
            k = np.flatnonzero(small["inits"] + pd.Timedelta(days=lead) == ev.peak)
            if k.size:
                i = int(np.argmin(np.abs(world.lat - ev.lat)))
                j = int(np.argmin(np.abs(world.lon - ev.lon)))
                clim, _ = _climate(world, name, ev.peak)
                fc_anom = d["fc"][k[0], 1:, i, j].mean() - clim[i, j]
                mu_anom = d["mu"][k[0], i, j] - clim[i, j]
                under.append(abs(fc_anom) < abs(mu_anom))
    assert under and np.mean(under) >= 0.75


def _climate(world, name, day):
    from enspp.data.synth.physics import VAR_SPECS

    clim, sd = VAR_SPECS[name].climate(world.lat[:, None], world.lon[None, :], world.lsm,
                                       world.orog, np.asarray([day.day_of_year]))
    return clim[0], sd[0]


# ------------------------------------------------------------------ bad input and the CLI
@pytest.mark.parametrize("bad", [
    {"grid": (4, 8)}, {"grid": (16, 33)}, {"years": (2019, 2012)}, {"init_weekdays": (7,)},
    {"init_weekdays": ()}, {"lead_times_h": (12,)}, {"lead_times_h": (24, 24)},
    {"variables": ("z500", "q700")}, {"n_perturbed": 0}, {"unknown_key": 1},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        SynthConfig(**bad)
    assert issubclass(ValidationError, ValueError)


def test_parse_grid_and_years():
    assert parse_grid("181x360") == (181, 360)
    assert parse_years("2012-2019") == (2012, 2019) and parse_years("2015") == (2015, 2015)
    with pytest.raises(SynthError, match="grid '32by64'"):
        parse_grid("32by64")
    with pytest.raises(SynthError, match="years 'soon'"):
        parse_years("soon")
    with pytest.raises(SynthError, match="years '2012-2013-2014'"):
        parse_years("2012-2013-2014")


def test_generate_refuses_foreign_or_existing_output(tiny_world, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        generate_world(foreign, SynthConfig(**TINY))
    with pytest.raises(SynthError, match="already holds a synthetic world"):
        generate_world(tiny_world.root, SynthConfig(**TINY))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SynthError, match="not a directory"):
        generate_world(a_file, SynthConfig(**TINY))


def test_grid_181x360_coordinates():
    from enspp.data.synth.physics import grid_coords

    lat, lon = grid_coords(181, 360)
    assert lat[0] == 90 and lat[-1] == -90 and lat[90] == 0 and lon[-1] == 359
    world = build_world(SynthConfig(grid=(181, 360), years=(2012, 2012)))
    assert world.lsm.shape == (181, 360)


def test_cli_synth(tmp_path, capsys):
    from enspp.flows.cli import main

    out = tmp_path / "w"
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(yaml.safe_dump({"synth": {"events_per_year": 2}}))
    rc = main(["synth", "--out", str(out), "--config", str(cfg), "--grid", "8x16", "--years", "2012",
               "--init-frequency", "weekly", "--members", "2", "--variables", "t2m",
               "--lead-times", "24", "--seed", "3"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "synthetic world in" in captured.out and "53 forecast files" in captured.out
    assert "simulated 2012-01-01..2012-12-31" in captured.err
    assert main(["synth", "--out", str(out), "--grid", "8x16", "--years", "2012",
                 "--init-frequency", "weekly", "--overwrite", "--quiet"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--lead-times", "a,b"], "--lead-times"),
    (["--grid", "big"], "grid 'big'"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--variables", "q700"], "synth config: variables"),
])
def test_cli_synth_errors(tmp_path, capsys, args, message):
    from enspp.flows.cli import main

    assert main(["synth", "--out", str(tmp_path / "w"), *args]) == 1
    assert message in capsys.readouterr().err


def test_cli_config_not_a_mapping(tmp_path, capsys):
    from enspp.flows.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("synth: [1, 2]\n")
    assert main(["synth", "--out", str(tmp_path / "w"), "--config", str(cfg)]) == 1
    assert "'synth' section" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [("synth: {grid: [8, 16]\n", "not valid YAML"),
                                            ("- 1\n- 2\n", "top level must be a mapping with a 'synth' section")])
def test_cli_config_bad_yaml_is_named(tmp_path, capsys, text, message):
    from enspp.flows.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["synth", "--out", str(tmp_path / "w"), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and not (tmp_path / "w").exists()


def test_interrupted_world_is_generated_again(tiny_world, tmp_path):
    """A world without its completion marker (a run killed while generating) is not reused:
    ensure_world generates it again, to the same bytes as an uninterrupted run."""
    from enspp.data.synth import ensure_world
    from enspp.data.synth.writer import COMPLETE_MARKER

    root = tmp_path / "w"
    generate_world(root, SynthConfig(**TINY))
    assert (root / COMPLETE_MARKER).is_file()
    assert ensure_world(root, SynthConfig(**TINY)) is False  # whole: reused
    (root / COMPLETE_MARKER).unlink()  # as if killed after some files
    for grib in sorted((root / "forecast").iterdir())[1:]:
        grib.unlink()
    notes: list[str] = []
    assert ensure_world(root, SynthConfig(**TINY), progress=notes.append) is True
    assert any("not finished" in n for n in notes)
    assert _digest(root) == _digest(tiny_world.root)


#: a very small world for the --overwrite tests (about a second to generate)
MICRO = dict(seed=3, grid=(8, 16), years=(2012, 2012), init_weekdays=(0,), n_perturbed=2,
             variables=("t2m",), lead_times_h=(24,), events_per_year=1)


def _users_data(root):
    """A user's directory: the synth config they pass to --config, named synth.yaml, next to
    their own forecast/ and analysis/ GRIB folders and a static.nc."""
    (root / "forecast").mkdir(parents=True)
    (root / "analysis").mkdir()
    (root / "synth.yaml").write_text(yaml.safe_dump({"synth": {"grid": [8, 16],
                                                               "years": [2012, 2012]}}))
    (root / "forecast" / "ens_2013010100.grib").write_bytes(b"real ECMWF GRIB from MARS")
    (root / "analysis" / "precious_an_2013.grib").write_bytes(b"real analysis")
    (root / "static.nc").write_text("my notes")


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_directory_with_a_synth_yaml_is_no_world(tmp_path, capsys, overwrite):
    """A synth.yaml alone does not make a directory a synthetic world: with or without
    --overwrite the user's files are refused in one line and left byte for byte."""
    from enspp.flows.cli import main

    root = tmp_path / "mydata"
    _users_data(root)
    before = _digest(root)
    with pytest.raises(SynthError, match="holds no synthetic world.*nothing was changed"):
        generate_world(root, SynthConfig(**MICRO), overwrite=overwrite)
    args = ["synth", "--out", str(root), "--config", str(root / "synth.yaml"), "--quiet"]
    assert main(args + (["--overwrite"] if overwrite else [])) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(root) in err and "holds no synthetic world" in err
    assert _digest(root) == before and sorted(p.name for p in root.iterdir()) == [
        "analysis", "forecast", "static.nc", "synth.yaml"]


def test_overwrite_replaces_a_world_but_not_files_the_generator_did_not_write(tmp_path):
    """--overwrite replaces a world whose forecast/, analysis/, static.nc, ... are the
    generator's own (a cfgrib index next to a GRIB included; other files in the directory are
    kept); a file of someone else's among them is refused, and nothing is changed."""
    from enspp.data.synth import ensure_world
    from enspp.data.synth.writer import COMPLETE_MARKER

    root = tmp_path / "w"
    generate_world(root, SynthConfig(**MICRO))
    world = _digest(root)
    for name, content in (("forecast/notes.txt", "mine"), ("analysis/an_2013.grib", "mine"),
                          ("forecast/sub/ens_2012010200.grib", "mine")):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(content)
        before = _digest(root)
        with pytest.raises(SynthError, match=f"{root / name.split('/')[0]}.*generator did not "
                                             "write.*nothing was changed"):
            generate_world(root, SynthConfig(**MICRO), overwrite=True)
        assert _digest(root) == before
        (root / name).unlink()
    (root / "forecast" / "sub").rmdir()
    # a static.nc or events.yaml that is not the generator's
    for name in ("static.nc", "events.yaml"):
        saved = (root / name).read_bytes()
        (root / name).write_text("mine")
        with pytest.raises(SynthError, match=f"{root / name}, which the generator did not"):
            generate_world(root, SynthConfig(**MICRO), overwrite=True)
        assert (root / name).read_text() == "mine"
        (root / name).write_bytes(saved)
    assert _digest(root) == world
    # the world's own files (and a cfgrib index of one) are replaced; the user's README stays
    grib = sorted((root / "forecast").iterdir())[0]
    (root / "forecast" / f"{grib.name}.5b7b6.idx").write_bytes(b"index")
    (root / "README.txt").write_text("mine")
    generate_world(root, SynthConfig(**MICRO), overwrite=True)
    assert (root / "README.txt").read_text() == "mine"
    assert {k: v for k, v in _digest(root).items() if k != "README.txt"} == world
    # a world interrupted before its oracle was written is still recognised and regenerated
    (root / COMPLETE_MARKER).unlink()
    shutil.rmtree(root / "oracle.zarr")
    assert ensure_world(root, SynthConfig(**MICRO)) is True
    assert {k: v for k, v in _digest(root).items() if k != "README.txt"} == world
