"""The reader of Zarr stores in our own layout (WeatherBench 2 and CF layouts:
:mod:`data.cf_readers`; station files: :mod:`data.station`)."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from enspp.data import schema
from enspp.data.translate import ReaderError

__all__ = ["open_canonical_zarr"]


def _open_zarr(path: str | os.PathLike) -> xr.Dataset:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such Zarr store")
    try:
        return xr.open_zarr(path, consolidated=None, decode_timedelta=True)
    except Exception as e:  # zarr raises several types for a directory that is not a store
        raise ReaderError(f"{path}: not a readable Zarr store ({type(e).__name__}: {e})") from e


def open_canonical_zarr(path: str | os.PathLike, *, allow_nan: bool = False) -> xr.Dataset:
    """A Zarr store in our own layout, lazily, validated (no completion filtering: see
    :func:`data.store.open_store` for that)."""
    ds = _open_zarr(path)
    kind = ds.attrs.get("enspp_kind")
    if kind not in (None, "forecast", "analysis"):
        raise ReaderError(f"{path}: attribute enspp_kind={kind!r} is neither 'forecast' nor 'analysis'")
    try:
        kind = kind or schema.detect_kind(ds)
        return schema.validate(ds, kind=kind, source=str(path), allow_nan=allow_nan)
    except schema.SchemaError as e:
        raise ReaderError(str(e)) from e
