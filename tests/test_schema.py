"""data.schema: validate, select_variable, split_level_name and friends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from enspp.data import schema
from enspp.data.schema import SchemaError, select_variable, split_level_name, validate


def forecast(rng=None) -> xr.Dataset:
    rng = rng or np.random.default_rng(0)
    dims = ("init_time", "lead_time", "member", "level", "latitude", "longitude")
    return xr.Dataset(
        {"z": (dims, rng.random((2, 2, 3, 2, 4, 5)).astype("float32"), {"units": "m**2 s**-2"}),
         "t2m": (dims[:3] + dims[4:], rng.random((2, 2, 3, 4, 5)).astype("float32"), {"units": "K"})},
        coords={"init_time": pd.to_datetime(["2020-01-01", "2020-01-02"]).as_unit("ns").values,
                "lead_time": pd.to_timedelta([0, 24], unit="h").as_unit("ns").values,
                "member": np.arange(3), "level": [500, 850],
                "latitude": [60.0, 50, 40, 30], "longitude": [0.0, 1, 2, 3, 4]})


def analysis() -> xr.Dataset:
    return xr.Dataset({"t2m": (("time", "station"), np.ones((3, 1), "float32"), {"units": "degC"})},
                      coords={"time": pd.date_range("2020-01-01", periods=3).as_unit("ns"),
                              "station": ["magdeburg"]})


def test_valid_datasets_pass_unchanged():
    ds = forecast()
    assert validate(ds) is ds
    assert validate(analysis(), kind="analysis") is not None
    assert schema.detect_kind(ds) == "forecast" and schema.detect_kind(analysis()) == "analysis"


@pytest.mark.parametrize("mutate, match", [
    (lambda ds: ds.isel(member=0, drop=True), "missing dim 'member'"),
    (lambda ds: ds.drop_vars("level"), "dim 'level' has no coordinate"),
    (lambda ds: ds.isel(latitude=0, longitude=0, drop=True), "no spatial dims"),
    (lambda ds: ds.assign_coords(lead_time=[0, 24]), "'lead_time' must be timedelta64"),
    (lambda ds: ds.assign_coords(init_time=[1, 2]), "'init_time' must be datetime64"),
    (lambda ds: ds.assign_coords(member=[0.0, 1.0, 2.0]), "'member' must be integer"),
    (lambda ds: ds.assign_coords(member=[-1, 0, 1]), "0-based and non-negative"),
    (lambda ds: ds.assign_coords(latitude=[60.0, 30, 40, 50]), "'latitude' is not strictly monotonic"),
    (lambda ds: ds.assign_coords(latitude=[120.0, 100, 90, 80]), "latitudes out of range"),
    (lambda ds: ds.assign_coords(longitude=[4.0, 3, 2, 1, 0]), "'longitude' is not strictly increasing"),
    (lambda ds: ds.assign_coords(init_time=ds.init_time.values[::-1]), "'init_time' is not strictly increasing"),
    (lambda ds: ds.assign_coords(init_time=[ds.init_time.values[0]] * 2), "duplicate values in 'init_time'"),
    (lambda ds: ds.assign(t2m=ds.t2m.assign_attrs(units="furlong")), "'t2m' is in unknown units 'furlong'"),
    (lambda ds: ds.assign(t2m=ds.t2m.assign_attrs(units=None).drop_attrs()), "'t2m' has no 'units'"),
    (lambda ds: ds.assign(t2m=ds.t2m.astype("int32").assign_attrs(units="K")), "must be floating point"),
    (lambda ds: ds.drop_vars(["z", "t2m"]), "no data variables"),
    (lambda ds: ds.assign(t2m=ds.t2m.where(ds.member > 0)), "'t2m' holds 80 NaN values of 240"),
])
def test_validate_errors(mutate, match):
    with pytest.raises(SchemaError, match=match):
        validate(mutate(forecast()), kind="forecast", source="store.zarr")
    with pytest.raises(ValueError, match="^store.zarr: "):
        validate(mutate(forecast()), kind="forecast", source="store.zarr")


def test_validate_allow_nan_and_time_errors():
    ds = forecast()
    ds["t2m"] = ds.t2m.where(ds.member > 0)
    validate(ds, allow_nan=True)
    with pytest.raises(SchemaError, match="missing dim 'time' for an analysis"):
        validate(forecast(), kind="analysis")
    with pytest.raises(SchemaError, match="cannot tell forecast from analysis"):
        schema.detect_kind(xr.Dataset({"x": ("y", [1.0])}))


def test_select_variable():
    ds = forecast()
    z500 = select_variable(ds, "z500")
    assert z500.name == "z500" and "level" not in z500.dims
    np.testing.assert_array_equal(z500.values, ds.z.sel(level=500).values)
    direct = xr.Dataset({"z500": z500.expand_dims(level=[500], axis=3)})
    assert "level" not in select_variable(direct, "z500").dims
    assert select_variable(ds, "t2m").dims == ("init_time", "lead_time", "member", "latitude", "longitude")
    with pytest.raises(KeyError, match="level 700 hPa is not in the data"):
        select_variable(ds, "z700")
    with pytest.raises(KeyError, match="'q500' is not in the dataset"):
        select_variable(ds, "q500")
    assert schema.available_variables(ds) == ["z500", "z850", "t2m"]


@pytest.mark.parametrize("name, expected", [("z500", ("z", 500)), ("t850", ("t", 850)), ("q1000", ("q", 1000)),
                                            ("t2m", ("t2m", None)), ("10fg3", ("10fg3", None)),
                                            ("tp24", ("tp24", None)), ("u10", ("u10", None)),
                                            ("foo12", ("foo12", None)), ("z", ("z", None))])
def test_split_level_name(name, expected):
    assert split_level_name(name) == expected
    if expected[1] is not None:
        assert schema.level_name(*expected) == name


def test_units_and_annotation():
    assert schema.normalise_units(" m**2 s**-2 ") == "m2 s-2"
    assert schema.normalise_units("°C") == "degC"
    da = schema.annotate(xr.DataArray([1.0], dims="x"), "t2m")
    assert da.attrs == {"units": "K", "long_name": "2 metre temperature", "standard_name": "air_temperature"}
    assert schema.annotate(xr.DataArray([1.0], dims="x", attrs={"units": "degC"}), "t2m").attrs["units"] == "degC"


def test_spatial_dims_and_valid_time():
    ds = forecast()
    assert schema.spatial_dims(ds) == ("latitude", "longitude")
    assert schema.spatial_dims(analysis()) == ("station",)
    vt = schema.add_valid_time(ds)["valid_time"]
    assert vt.dims == ("init_time", "lead_time")
    assert vt.values[1, 1] == np.datetime64("2020-01-03", "ns")
