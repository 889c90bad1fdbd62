"""Every GRIB packing eccodes decodes ingests, with values equal to eccodes' own decode."""

from __future__ import annotations

from pathlib import Path

import eccodes
import numpy as np
import pytest
from test_store import forecast

from enspp.data.grib_writer import write_grib
from enspp.data.ingest import ingest
from enspp.data.ingest_grib import decode_grib
from enspp.data.store import open_store

PACKINGS = ["grid_simple", "grid_complex", "grid_complex_spatial_differencing",
            "grid_second_order", "grid_ccsds", "grid_jpeg", "grid_ieee"]


def repack(src: Path, dst: Path, packing: str) -> Path:
    """``src`` with every message re-encoded in ``packing`` by eccodes."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while (h := eccodes.codes_grib_new_from_file(fin)) is not None:
            values = eccodes.codes_get_values(h)
            eccodes.codes_set(h, "packingType", packing)
            eccodes.codes_set_values(h, values)
            assert eccodes.codes_get(h, "packingType") == packing
            eccodes.codes_write(h, fout)
            eccodes.codes_release(h)
    return dst


def eccodes_decode(path: Path) -> dict[tuple, np.ndarray]:
    """Each message's values as eccodes decodes them (double), rounded to float32, keyed by
    (shortName, step, number, level)."""
    out = {}
    with open(path, "rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            key = tuple(eccodes.codes_get(h, k) for k in ("shortName", "endStep", "number", "level"))
            ny, nx = eccodes.codes_get(h, "Nj"), eccodes.codes_get(h, "Ni")
            out[key] = eccodes.codes_get_double_array(h, "values").astype(np.float32).reshape(ny, nx)
            eccodes.codes_release(h)
    return out


@pytest.mark.parametrize("packing", PACKINGS)
def test_every_packing_ingests_with_eccodes_values(tmp_path, packing):
    plain = tmp_path / "plain.grib"
    write_grib(plain, forecast(["2020-01-01"], nlat=9, nlon=12), kind="forecast")
    packed = repack(plain, tmp_path / f"{packing}.grib", packing)
    reference = eccodes_decode(packed)
    store = tmp_path / "s.zarr"
    summary = ingest([packed], store, progress=False)
    assert len(summary.added) == 1
    out = open_store(store).compute()
    lazy = decode_grib(packed)
    for (short, step, number, level), values in reference.items():
        name, sel = ("t2m", {}) if short == "2t" else ("z", {"level": level})
        sel.update(lead_time=np.timedelta64(step, "h"), member=number)
        np.testing.assert_array_equal(out[name].isel(init_time=0).sel(sel).values, values)
        np.testing.assert_array_equal(lazy[name].isel(init_time=0).sel(sel).values, values)
