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
from enspp.data.store import open_store, present_fields

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


def repack_edition(src: Path, dst: Path, packing: str, edition: int) -> Path:
    """``src`` re-encoded by eccodes as GRIB ``edition`` in ``packing`` (headers converted)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while (h := eccodes.codes_grib_new_from_file(fin)) is not None:
            values = eccodes.codes_get_double_array(h, "values")
            if edition != eccodes.codes_get(h, "edition"):
                eccodes.codes_set(h, "edition", edition)
            eccodes.codes_set(h, "packingType", packing)
            eccodes.codes_set_values(h, values)
            assert eccodes.codes_get(h, "packingType") == packing
            eccodes.codes_write(h, fout)
            eccodes.codes_release(h)
    return dst


@pytest.mark.parametrize("edition,packing", [(1, "grid_second_order"), (1, "grid_ieee"),
                                             (2, "grid_jpeg"), (2, "grid_ccsds")])
def test_the_real_storm_file_in_other_packings(tmp_path, shared_data, edition, packing):
    """The St Jude ENS file (GRIB 1, simple packing) as ECMWF also distributes such fields:
    GRIB 1 second-order (MARS archives) and IEEE, GRIB 2 JPEG 2000 (dissemination) and
    CCSDS; every field equals eccodes' own decode, absent fields stay absent."""
    src = shared_data / "gridded" / "ecmwf_ens_stjude-storm_2013102500_10fg3_z850.grib"
    packed = repack_edition(src, tmp_path / f"{packing}.grib", packing, edition)
    store = tmp_path / "s.zarr"
    summary = ingest([packed], store, progress=False)
    assert summary.variables == ("10fg3", "z") and summary.members == 51
    out = open_store(store)
    n = 0
    with open(packed, "rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            short, step, number = (eccodes.codes_get(h, k) for k in ("shortName", "endStep", "number"))
            ref = eccodes.codes_get_double_array(h, "values").astype(np.float32)
            ref = ref.reshape(eccodes.codes_get(h, "Nj"), eccodes.codes_get(h, "Ni"))
            eccodes.codes_release(h)
            field = out[short].isel(init_time=0).sel(lead_time=np.timedelta64(step, "h"), member=number)
            np.testing.assert_array_equal(field.values.reshape(ref.shape), ref)
            n += 1
    assert n == 51 * 4  # gusts at 3 steps, z850 at 1
    assert present_fields(store)["z"].isel(init_time=0).values.tolist() == [False, True, False]
