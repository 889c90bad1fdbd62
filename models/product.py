"""The product store written by :func:`models.predict.predict`: layout, attributes, writing.

Zarr products grow by blocks of init times.  Init times already in the store are rewritten
in place (region writes), new ones are appended; only then are they added to the root
attribute ``enspp_complete``.  A chunk spans as many init times as hold ~65536 values of one
field (a station product: thousands; a global grid: one), and a chunk file is replaced whole
(zarr's local store writes a temporary file and renames it), so a killed write never damages
init times already complete; an init time already complete that is rewritten from other
inputs is unmarked first, so a rewrite killed half-way leaves it incomplete (and a rerun
completes it), never complete with a mix of old and new fields.  Each init time's inputs are recorded
(``enspp_inputs``) so a caller can tell which were computed from inputs since replaced
(:func:`stale_init_times`).  A store whose arrays were left at different lengths by a killed
append is trimmed back to the init times all arrays hold, so running the same init times
again repairs it.  A brand-new store is built under ``.<name>.partial`` and renamed when its
first init times are written.  :func:`open_product` shows only complete init times.

A NetCDF product (``fmt: netcdf``) is staged as such a store and written whole at the end
(:meth:`ProductWriter.finish`), with the same bookkeeping (skipped init times, inputs; as
JSON text, :mod:`models.product_file`); a predict into an existing NetCDF product stages
its init times first, so it is extended, rewritten and brought up to date as a Zarr product
is.  :func:`read_product_attrs` reads the bookkeeping of either format.
"""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from enspp.data import durable, schema
from enspp.data.errors import EnsppError
from enspp.models.product_file import (
    ProductFileError,
    file_attrs,
    file_variables,
    is_netcdf,
    netcdf_attrs,
    open_file,
    open_product_file,
    read_file_rows,
    read_step,
)

PRODUCT_KIND = "product"
COMPLETE_ATTR = "enspp_complete"
#: init times a predict left out because input fields were absent from the forecast store
#: (removed once such an init time is written)
SKIPPED_ATTR = "enspp_skipped"
#: what each recorded init time was computed from: ``{"fields": [[variable, lead hours],
#: ...], "digests": {init time: digest}}``, the digest a hash of the forecast store's source
#: ids of those fields (:meth:`data.store_meta.StoreMeta.field_digests`): an init time whose
#: inputs now come from other bytes (a store rebuilt from corrected files) is out of date
INPUTS_ATTR = "enspp_inputs"
#: attributes an existing product must share with a new write (else: another product)
#: the largest chunk of a NetCDF product's variable (HDF5 refuses chunks of 4 GiB or more)
NETCDF_CHUNK_BYTES = 2**30
IDENTITY_ATTRS = ("checkpoint_sha256", "input_members", "n_ecc_members", "quantiles",
                  "distribution")
#: the fields a product holds per target ``v``: ``v`` (ECC members), ``v_mean``, ``v_std``,
#: ``v_quantiles``; ``mean`` and ``std`` are always written, ``members``/``quantiles`` may be
#: left out (then ``n_ecc_members`` is 0 / ``quantiles`` empty in the attributes)
PRODUCT_FIELDS = ("members", "mean", "std", "quantiles")


class ProductError(EnsppError):
    """A product store cannot be written or read as asked; the message names the store."""


def product_attrs(loaded: Any, *, members: np.ndarray, source: Any, version: str,
                  n_members: int, quantiles: Sequence[float]) -> dict[str, Any]:
    """CF global attributes and provenance; deterministic (no time stamps), so rewriting an
    init time leaves the store identical.  ``n_members`` 0: no ECC members are written."""
    meta = loaded.metadata
    attrs = {
        "Conventions": "CF-1.8",
        "enspp_kind": PRODUCT_KIND,
        "title": f"post-processed ensemble forecast ({meta.spec['name']})",
        "institution": "enspp",
        "source": f"enspp predict, model {version}, input {source}",
        "model_name": str(meta.spec["name"]),
        "model_version": version,
        "code_version": meta.code_version,
        "distribution": meta.distribution,
        "crps_estimator": meta.estimator,
        "checkpoint": loaded.path.name,
        "checkpoint_sha256": loaded.sha256,
        "input_members": [int(m) for m in members],
        "member_strategy": meta.member_strategy,
        "n_input_members": int(len(members)),
        "n_ecc_members": int(n_members),
        "quantiles": [float(q) for q in quantiles],
        "ensemble_method": "ensemble copula coupling (ECC-Q), ranks of the input members",
        "training_data_version": meta.data_version or "",
        "training_data_hash": meta.data_hash or "",
        # what predict does with NaN inputs: 'mask' writes NaN at such points (validate
        # --deep accepts them only then)
        "nan_policy": str((meta.pipeline or {}).get("nan_policy", "")),
    }
    if not n_members:
        del attrs["ensemble_method"]
    return attrs


def product_dataset(fields: dict[str, np.ndarray], *, targets: Sequence[str],
                    init: np.datetime64, lead_h: int, quantiles: Sequence[float],
                    grid: xr.Dataset) -> xr.Dataset:
    """One init time and lead of the product (:func:`product_block` of one)."""
    return product_block([{lead_h: fields}], targets=targets, inits=[init],
                         quantiles=quantiles, grid=grid)


def _units(grid: xr.Dataset, name: str, short: str) -> str | None:
    """The units the forecast store (``grid``) gives target ``name`` (stored as ``name`` or,
    on levels, as ``short``): a station file's t2m in degC is post-processed in degC."""
    for key in (name, short):
        if key in grid.data_vars and grid[key].attrs.get("units"):
            return str(grid[key].attrs["units"])
    return None


def product_block(fields: Sequence[Mapping[int, Mapping[str, np.ndarray]]], *,
                  targets: Sequence[str], inits: Sequence[np.datetime64],
                  quantiles: Sequence[float], grid: xr.Dataset) -> xr.Dataset:
    """Init times of the product, built in one go: per target ``v``, ``v`` (ECC members),
    ``v_mean``, ``v_std`` and ``v_quantiles`` with CF variable attributes.

    ``fields[i]`` maps each lead (hours; the same leads for every init time) of
    ``inits[i]`` to its fields: ``mean``/``std`` ``[T, Ny, Nx]`` (a censored logistic also
    ``loc``/``scale``, written as ``v_loc``/``v_scale``), ``quantiles`` ``[Q, T, Ny, Nx]``,
    ``members`` ``[M, T, Ny, Nx]`` (stations: ``Nx = 1``); ``members`` and ``quantiles`` may
    be left out (the product then has no such variables, nor the ``member``/``quantile``
    coordinate).
    """
    if len(fields) != len(inits) or not fields:
        raise ValueError(f"{len(fields)} sets of fields for {len(inits)} init times")
    leads = list(fields[0])
    if any(list(f) != leads for f in fields):
        raise ValueError("every init time of a product block needs the same leads")
    # each field [I, L, ...]: init times, then leads (one stack of every init time's leads)
    stacked = {}
    for key in fields[0][leads[0]]:
        flat = np.stack([f[lead][key] for f in fields for lead in leads])
        stacked[key] = flat.reshape(len(fields), len(leads), *flat.shape[1:])
    space = schema.spatial_dims(grid)
    coords: dict[str, Any] = {
        schema.INIT_TIME: np.asarray([np.datetime64(t, "ns") for t in inits]),
        schema.LEAD_TIME: np.asarray([np.timedelta64(h, "h") for h in leads],
                                     dtype="timedelta64[ns]"),
    }
    fields = stacked  # type: ignore[assignment]
    if "members" in fields:
        coords[schema.MEMBER] = np.arange(fields["members"].shape[2])
    if "quantiles" in fields:
        coords["quantile"] = ("quantile", np.asarray(quantiles, dtype=np.float64),
                              {"long_name": "probability level of the predictive distribution",
                               "units": "1"})
    for dim in space:
        coords[dim] = grid[dim].variable.to_base_variable()
    squeeze = (lambda a: a[..., 0]) if space == schema.SPATIAL_DIMS_POINT else (lambda a: a)
    head = (schema.INIT_TIME, schema.LEAD_TIME)
    data: dict[str, Any] = {}
    for t, name in enumerate(targets):
        short, _ = schema.split_level_name(name)
        info = schema.VARIABLES.get(short)
        base = {"units": _units(grid, name, short) or (info.units if info else "1")}
        if info and info.standard_name:
            base["standard_name"] = info.standard_name
        label = info.long_name if info else name
        if "members" in fields:
            data[name] = ((*head, schema.MEMBER, *space),
                          squeeze(fields["members"][:, :, :, t]),
                          {**base, "long_name": f"{label}, calibrated ECC members",
                           "ensemble_method": "ensemble copula coupling"})
        data[f"{name}_mean"] = ((*head, *space), squeeze(fields["mean"][:, :, t]),
                                {**base, "long_name": f"{label}, predictive mean",
                                 "cell_methods": "member: mean"})
        # a standard deviation is not the variable itself: no standard_name of its own
        data[f"{name}_std"] = ((*head, *space), squeeze(fields["std"][:, :, t]),
                               {"units": base["units"],
                                "long_name": f"{label}, predictive standard deviation",
                                "cell_methods": "member: standard_deviation"})
        for param, what in (("loc", "location"), ("scale", "scale")):
            if param in fields:  # a censored logistic: the latent logistic's parameters
                data[f"{name}_{param}"] = (
                    (*head, *space), squeeze(fields[param][:, :, t]),
                    {"units": base["units"], "long_name": f"{label}, {what} of the latent logistic "
                     f"distribution (censored at 0)"})
        if "quantiles" in fields:
            data[f"{name}_quantiles"] = ((*head, "quantile", *space),
                                         squeeze(fields["quantiles"][:, :, :, t]),
                                         {**base, "long_name": f"{label}, predictive quantiles"})
    data = {k: (dims, np.asarray(values, dtype=np.float32), attrs)
            for k, (dims, values, attrs) in data.items()}
    return xr.Dataset(data, coords=coords)


def open_product(path: str | Path) -> xr.Dataset:
    """A product (Zarr: only its complete init times; NetCDF: as written, every init time
    complete, its attributes as the Zarr product holds them), lazily."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"product {path} does not exist")
    if not path.is_dir():
        return open_file(path)
    ds = _open_product_store(path)
    if ds.attrs.get("enspp_kind") != PRODUCT_KIND:
        raise ProductError(f"{path} is not an enspp product store")
    done = np.asarray(ds.attrs.get(COMPLETE_ATTR, []), dtype="datetime64[ns]")
    keep = np.isin(ds[schema.INIT_TIME].values.astype("datetime64[ns]"), done)
    return ds.isel({schema.INIT_TIME: np.flatnonzero(keep)})


def _open_product_store(path: Path, tries: int = 5) -> xr.Dataset:
    """A product store as xarray opens it: from its consolidated metadata; while a predict
    appends to it (the root document is then written without them until the append ends)
    from the arrays' own metadata, tried again while an append leaves its arrays of
    different lengths (init times being appended are not complete: :func:`open_product`
    leaves them out)."""
    import time

    for attempt in range(tries):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return xr.open_zarr(path, consolidated=True)
            except ValueError:
                try:
                    return xr.open_zarr(path, consolidated=False)
                except ValueError:
                    if attempt == tries - 1:
                        raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


class ProductWriter:
    """Writes the init times of one product: Zarr in place (idempotent), NetCDF at the end
    (staged as a Zarr store, an existing file's init times first)."""

    def __init__(self, out: Path, *, attrs: dict[str, Any], fmt: str,
                 init_chunk: int = 1) -> None:
        self.out, self.attrs, self.fmt = Path(out), dict(attrs), fmt
        #: init times per chunk of a new store (an existing one keeps its own chunking)
        self.init_chunk = max(1, int(init_chunk))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.out.parent / f".{self.out.name}.partial"
        shutil.rmtree(self.partial, ignore_errors=True)  # left by a killed first write
        if fmt == "zarr" and self.out.exists():
            self._check_existing()
            _trim_to_common_length(self.out)
        elif fmt == "netcdf" and self.out.exists():
            self._check_existing_file()
        self.target = self.partial if fmt == "netcdf" or not self.out.exists() else self.out
        if fmt == "netcdf" and self.out.exists():
            self._stage_file()
        #: init times complete in the target (xarray's appends replace the root attributes)
        self.done: set[str] = set()
        #: init times left out for want of input fields (:meth:`mark_skipped`)
        self.skipped: set[str] = set()
        #: the recorded input digests (init time -> digest) and the fields they cover;
        #: digests of this run's init times wait in ``_new_inputs`` until they are marked
        self.inputs: dict[str, str] = {}
        self.input_fields: list[list[Any]] = []
        self._new_inputs: dict[str, str] = {}
        if self.target.exists():
            have = zarr.open_group(self.target, mode="r", use_consolidated=False).attrs
            self.done = {str(np.datetime64(t, "ns")) for t in have.get(COMPLETE_ATTR, [])}
            self.skipped = {str(np.datetime64(t, "ns")) for t in have.get(SKIPPED_ATTR, [])}
            recorded = have.get(INPUTS_ATTR) or {}
            self.inputs = dict(recorded.get("digests", {}))
            self.input_fields = [list(f) for f in recorded.get("fields", [])]

    def _check_existing(self) -> None:
        if not self.out.is_dir():
            raise ProductError(f"{self.out} exists and is not a Zarr product store"
                               + (" (a NetCDF file: predict.fmt netcdf extends it)"
                                  if is_netcdf(self.out) else ""))
        try:
            attrs = dict(zarr.open_group(self.out, mode="r", use_consolidated=False).attrs)
        except Exception as e:  # zarr raises several types for a non-store
            raise ProductError(f"{self.out} exists and is not a Zarr store ({e})") from e
        if attrs.get("enspp_kind") != PRODUCT_KIND:
            raise ProductError(f"{self.out} exists and is not an enspp product store")
        self._check_identity(attrs)

    def _check_existing_file(self) -> None:
        """``out`` exists and ``fmt`` is netcdf: a NetCDF product of this product (else one
        line naming it, before anything is computed)."""
        if self.out.is_dir():
            raise ProductError(f"{self.out} exists and is a directory, not a NetCDF product "
                               "file (a Zarr product: predict.fmt zarr extends it); write to "
                               "another --out")
        try:
            with open_product_file(self.out) as ds:
                attrs = dict(ds.attrs)
        except ProductFileError as e:
            raise ProductError(f"{e}; remove it or write to another --out") from None
        if attrs.get("enspp_kind") != PRODUCT_KIND:
            raise ProductError(f"{self.out} exists and is not an enspp product (a NetCDF file "
                               f"whose attribute enspp_kind is {attrs.get('enspp_kind')!r})")
        self._check_identity(attrs)

    def _stage_file(self) -> None:
        """The existing NetCDF product's init times, as complete, with its skipped init
        times and inputs, into the partial store (a bounded block of init times at a time),
        so that this run extends it as it extends a Zarr product; :meth:`finish` writes
        the whole file again."""
        with open_product_file(self.out) as ds:
            n = int(ds.sizes.get(schema.INIT_TIME, 0))
            attrs = {k: v for k, v in ds.attrs.items() if k != "history"}
            step = max(1, read_step(file_variables(ds)) // self.init_chunk) * self.init_chunk
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for r0 in range(0, n, step):
                    block = ds.isel({schema.INIT_TIME: slice(r0, r0 + step)}).load()
                    block = block.drop_encoding().assign_coords(
                        {schema.INIT_TIME: block[schema.INIT_TIME].values.astype("datetime64[ns]")})
                    if schema.LEAD_TIME in block.coords:
                        block = block.assign_coords({schema.LEAD_TIME: block[
                            schema.LEAD_TIME].values.astype("timedelta64[ns]")})
                    if r0 == 0:
                        self._create(block)
                    else:
                        _append(block, self.partial)
            times = ds[schema.INIT_TIME].values.astype("datetime64[ns]") if n else []
        if not n:
            return
        attrs[COMPLETE_ATTR] = sorted(str(np.datetime64(t, "ns")) for t in times)
        group = zarr.open_group(self.partial, mode="r+", use_consolidated=False)
        group.attrs.put(attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.partial)

    def _check_identity(self, attrs: Mapping[str, Any]) -> None:
        for key in IDENTITY_ATTRS:
            if _plain(attrs.get(key)) != _plain(self.attrs[key]):
                raise ProductError(
                    f"{self.out} holds another product: its {key} is {attrs.get(key)!r}, this "
                    f"run's is {self.attrs[key]!r}; write to another --out")

    def record_inputs(self, fields: Sequence[tuple[str, int]],
                      digests: Mapping[np.datetime64, str]) -> None:
        """The input digests of init times this run writes or skips (recorded as each is
        marked): ``fields`` the ``(variable, lead hours)`` pairs they cover."""
        fields = [[str(v), int(h)] for v, h in sorted(set(fields))]
        if self.input_fields and fields != self.input_fields:
            self.inputs = {}  # digests of other fields: not comparable, forgotten
        self.input_fields = fields
        self._new_inputs.update({str(np.datetime64(t, "ns")): d for t, d in digests.items()})

    def write(self, step: xr.Dataset) -> None:
        """Write one init time (``step`` holds a single ``init_time``)."""
        self.write_block(step)

    def write_block(self, block: xr.Dataset) -> None:
        """Write the init times of ``block`` (distinct, in any order): those already in the
        store rewritten in place, one region write per run of consecutive positions, the new
        ones in one append; then they are marked complete.

        The arrays are written from memory (no dask): a chunk holding several init times is
        read, modified and replaced whole, and the local store replaces a chunk file
        atomically, so a killed write leaves every chunk either as it was or as it is now."""
        inits = block[schema.INIT_TIME].values.astype("datetime64[ns]")
        if len(set(inits)) != len(inits):
            raise ProductError(f"{self.out}: a product block holds an init time twice")
        if not len(inits):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            at: dict[np.datetime64, int] = {}
            if self.target.exists():
                have = xr.open_zarr(self.target, consolidated=False)[schema.INIT_TIME].values
                at = {np.datetime64(t, "ns"): i for i, t in enumerate(have)}
            old = sorted((at[t], k) for k, t in enumerate(inits) if t in at)
            # complete init times rewritten from other inputs are unmarked first, so a
            # rewrite killed half-way leaves them incomplete (a rewrite from the same inputs
            # writes the same values: they stay complete throughout)
            again = {t for t in (str(inits[k]) for _, k in old) if t in self.done
                     and t in self._new_inputs and self.inputs.get(t) != self._new_inputs[t]}
            if again:
                self.done -= again
                self._mark_complete()
            if old:
                inside = block.drop_vars([v for v in block.variables
                                          if schema.INIT_TIME not in block[v].dims])
                for run in _runs(old):  # rewritten in place
                    region = inside.isel({schema.INIT_TIME: [k for _, k in run]})
                    region.to_zarr(self.target, mode="r+", consolidated=True,
                                   region={schema.INIT_TIME: slice(run[0][0], run[-1][0] + 1)})
            new = [k for k, t in enumerate(inits) if t not in at]
            if new:
                part = block if len(new) == len(inits) else block.isel({schema.INIT_TIME: new})
                if not self.target.exists():
                    self._create(part)
                else:
                    _append(part, self.target)
        self._mark_complete(*inits)
        if self.target == self.partial and self.fmt == "zarr":
            self.partial.rename(self.out)
            durable.sync_dir(self.out.parent)
            self.target = self.out

    def _create(self, block: xr.Dataset) -> None:
        """A new store from ``block``: ``init_chunk`` init times per chunk along
        ``init_time``, every other dimension whole, every data chunk checksummed (crc32c, as
        in the ingested stores: a chunk damaged on disk is an error on read, not wrong
        numbers; appends keep it)."""
        from enspp.data.store_template import compressors

        def chunks(v: str) -> tuple[int, ...]:
            return tuple(self.init_chunk if d == schema.INIT_TIME else int(block.sizes[d])
                         for d in block[v].dims)

        encoding: dict[str, dict[str, Any]] = {
            str(v): {"compressors": compressors(), "chunks": chunks(str(v))}
            for v in block.data_vars}
        encoding[schema.INIT_TIME] = {"chunks": (self.init_chunk,)}
        block.to_zarr(self.target, mode="w", consolidated=True, zarr_format=3,
                      encoding=encoding)

    def mark_skipped(self, inits: Sequence[np.datetime64]) -> None:
        """Record ``inits`` as left out for want of input fields (in a store that exists, the
        staged one of a NetCDF product included: nothing is recorded where nothing was
        written)."""
        self.skipped.update(str(np.datetime64(t, "ns")) for t in inits)
        if self.target.exists():
            self._mark_complete()

    def _mark_complete(self, *inits: np.datetime64) -> None:
        marked = {str(np.datetime64(init, "ns")) for init in inits}
        self.done.update(marked)
        self.skipped -= self.done
        for t in marked | self.skipped:
            if t in self._new_inputs:
                self.inputs[t] = self._new_inputs.pop(t)
        # the fields it marks reach the disk before the mark, and the mark after them
        # (enspp.data.durable): after a power loss no init time is complete without its data
        durable.sync_filesystem(self.target)
        # opened with its consolidated metadata (when it has it), so that the rewrite of the
        # root document keeps it: without it, readers of the consolidated copy fail until
        # consolidate_metadata below
        group = zarr.open_group(self.target, mode="r+", use_consolidated=None)
        attrs = {**dict(group.attrs), **self.attrs, COMPLETE_ATTR: sorted(self.done)}
        attrs.pop(SKIPPED_ATTR, None)
        attrs.pop(INPUTS_ATTR, None)
        if self.skipped:
            attrs[SKIPPED_ATTR] = sorted(self.skipped)
        recorded = self.done | self.skipped
        kept = {t: d for t, d in sorted(self.inputs.items()) if t in recorded}
        if kept:
            attrs[INPUTS_ATTR] = {"fields": self.input_fields, "digests": kept}
        group.attrs.put(attrs)  # one rewrite of the group's metadata document
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.target)
        durable.sync_filesystem(self.target)

    def finish(self) -> Path:
        """NetCDF: convert the staged Zarr store into ``out`` (replacing it), its complete
        init times, with the skipped ones and the inputs recorded as in the Zarr store
        (:func:`models.product_file.netcdf_attrs`); return ``out``."""
        if self.fmt == "netcdf":
            with open_product(self.partial) as ds:
                attrs = {k: v for k, v in ds.attrs.items() if k != COMPLETE_ATTR}
                attrs["history"] = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} enspp predict"
                tmp = self.out.parent / f".{self.out.name}.tmp.nc"
                product = ds.copy()
                product.attrs = netcdf_attrs(attrs)
                product.to_netcdf(tmp, encoding=self._netcdf_encoding(product))
            durable.replace(tmp, self.out)
            shutil.rmtree(self.partial, ignore_errors=True)
        return self.out


    def _netcdf_encoding(self, product: xr.Dataset) -> dict[str, dict[str, Any]]:
        """Every variable along ``init_time`` chunked as the Zarr product is (``init_chunk``
        init times, every other dimension whole; a chunk at most :data:`NETCDF_CHUNK_BYTES`)
        with HDF5's Fletcher-32 checksum on each chunk: a chunk damaged on disk is an error
        on read (``enspp validate --deep`` names it), not wrong numbers, as the Zarr
        product's CRC-32C makes it."""
        out: dict[str, dict[str, Any]] = {}
        for name, da in product.data_vars.items():
            if da.dims[:1] != (schema.INIT_TIME,) or 0 in da.shape:
                continue  # (an empty variable: nothing to chunk)
            row = int(np.prod(da.shape[1:], dtype=np.int64)) * da.dtype.itemsize
            n = max(1, min(self.init_chunk, NETCDF_CHUNK_BYTES // row, da.shape[0]))
            out[str(name)] = {"chunksizes": (n, *(int(x) for x in da.shape[1:])),
                              "fletcher32": True}
        return out


def stale_init_times(product: str | Path, forecast: str | Path) -> set[str]:
    """Init times recorded in ``product`` (complete or skipped; ``record_key`` strings) whose
    input fields in the forecast store ``forecast`` now come from other bytes than those they
    were computed from (:data:`INPUTS_ATTR`; a product written before inputs were recorded,
    or a store that cannot be read as an enspp store, has none).  Predicting them again
    brings the product up to date."""
    from enspp.data.provenance import record_key
    from enspp.data.store_meta import StoreMetaError, open_meta

    recorded = (read_product_attrs(product) or {}).get(INPUTS_ATTR) or {}
    digests = recorded.get("digests") or {}
    if not digests:
        return set()
    try:
        meta = open_meta(forecast)
    except (StoreMetaError, OSError, FileNotFoundError):
        return set()
    by_key = {record_key(np.datetime64(t, "ns")): d for t, d in digests.items()}
    now = meta.field_digests([(str(v), int(h)) for v, h in recorded.get("fields", [])],
                             np.array(list(digests), dtype="datetime64[ns]"))
    # an init time the store no longer holds keeps its product (nothing to compute it from)
    return {k for k, d in now.items() if by_key.get(k) != d}


def read_product_attrs(path: str | Path) -> dict[str, Any] | None:
    """The attributes of the product at ``path`` as a Zarr product store holds them, for
    whoever reads its bookkeeping (:data:`COMPLETE_ATTR`, :data:`SKIPPED_ATTR`,
    :data:`INPUTS_ATTR`): a Zarr store's root attributes; a NetCDF product's
    (:func:`models.product_file.file_attrs`, JSON text decoded) with :data:`COMPLETE_ATTR`
    the init times it holds (all complete); ``None`` where there is neither (nothing written
    yet).  A NetCDF file that cannot be opened is a :class:`ProductFileError` naming it."""
    from enspp.data.store import read_root_attrs

    p = Path(path)
    if not p.is_file():
        return read_root_attrs(p)
    if not is_netcdf(p):
        return None
    with open_product_file(p) as ds:
        attrs = dict(ds.attrs)
        if attrs.get("enspp_kind") == PRODUCT_KIND and schema.INIT_TIME in ds.coords:
            attrs[COMPLETE_ATTR] = sorted(
                str(t) for t in ds[schema.INIT_TIME].values.astype("datetime64[ns]"))
    return attrs


def _append(block: xr.Dataset, target: Path) -> None:
    """Append ``block`` along ``init_time`` to the store ``target``, the block carrying the
    store's current root attributes: xarray's append replaces the root attributes with the
    block's, and until the init times are marked complete readers of the store (open_product,
    evaluate, validate, the flows' bookkeeping) would find no ``enspp_kind`` and no
    ``enspp_complete`` in it."""
    current = zarr.open_group(target, mode="r", use_consolidated=False).attrs.asdict()
    block = block.copy(deep=False)  # the caller's block keeps its own attributes
    block.attrs = dict(current)
    block.to_zarr(target, append_dim=schema.INIT_TIME, consolidated=True)


def _runs(positions: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Sorted ``(position, item)`` pairs cut into runs of consecutive positions."""
    runs: list[list[tuple[int, int]]] = []
    for p in positions:
        if runs and p[0] == runs[-1][-1][0] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def _trim_to_common_length(path: Path) -> None:
    """Cut every array with an ``init_time`` axis to the shortest such length (an append
    killed half-way leaves some arrays one init time longer than others)."""
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    arrays = []
    for _name, arr in group.arrays():
        dims = list(arr.metadata.dimension_names or arr.attrs.get("_ARRAY_DIMENSIONS", []))
        if schema.INIT_TIME in dims:
            arrays.append((arr, dims.index(schema.INIT_TIME)))
    if not arrays:
        return
    n = min(a.shape[ax] for a, ax in arrays)
    changed = False
    for arr, ax in arrays:
        if arr.shape[ax] != n:
            arr.resize(tuple(n if i == ax else s for i, s in enumerate(arr.shape)))
            changed = True
    if changed:
        times = {str(np.datetime64(t, "ns")) for t in
                 xr.open_zarr(path, consolidated=False)[schema.INIT_TIME].values}
        group.attrs[COMPLETE_ATTR] = sorted(t for t in group.attrs.get(COMPLETE_ATTR, [])
                                            if t in times)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(path)


# --- reading a product's state back (``enspp inspect`` / ``enspp validate`` of a product) ---

#: why an init time is in :data:`SKIPPED_ATTR` (the one reason predict skips one)
SKIPPED_REASON = "input fields absent from the forecast store"
#: per-variable data dims that are not spatial
_NON_SPATIAL = (schema.INIT_TIME, schema.LEAD_TIME, schema.MEMBER, "quantile")
_SHOW = 5


@dataclass(frozen=True)
class ProductState:
    """What a product's attributes and coordinates say (no field read):
    ``complete`` one flag per row of the coordinate (marked in :data:`COMPLETE_ATTR`; every
    row of a NetCDF product, written whole from complete init times), ``skipped`` and
    ``not_in_coordinate`` (marked complete, yet no row holds them) as ``record_key`` strings,
    ``problems`` the attributes that do not parse (one line each), ``variables`` as
    :func:`product_variables` gives them, ``fmt`` ``zarr`` or ``netcdf``."""

    path: Path
    attrs: dict[str, Any]
    init_times: np.ndarray
    complete: np.ndarray
    skipped: tuple[str, ...]
    not_in_coordinate: tuple[str, ...]
    problems: tuple[str, ...]
    lead_times: np.ndarray = field(default_factory=lambda: np.array([], "timedelta64[ns]"))
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    fmt: str = "zarr"

    @property
    def where(self) -> str:
        """How problem lines name the product: ``store PATH`` or ``file PATH``."""
        return f"{'file' if self.fmt == 'netcdf' else 'store'} {self.path}"

    @property
    def incomplete(self) -> tuple[str, ...]:
        """Rows written (allocated) but not marked complete nor skipped: what a killed
        predict leaves, redone by the next one."""
        from enspp.data.provenance import record_keys

        skipped = set(self.skipped)
        return tuple(k for k in record_keys(self.init_times[~self.complete]) if k not in skipped)

    @property
    def kind(self) -> str:
        """``members`` (ECC members written) or ``distribution`` (its parameters, moments and
        quantiles only)."""
        n = self.attrs.get("n_ecc_members")
        return "members" if isinstance(n, int) and n > 0 else "distribution"


def is_product_store(path: str | Path) -> bool:
    """True if ``path`` is a Zarr store whose root attributes say it is an enspp product."""
    from enspp.data.store import read_root_attrs

    p = Path(path)
    return p.is_dir() and (read_root_attrs(p) or {}).get("enspp_kind") == PRODUCT_KIND


def is_product(path: str | Path) -> bool:
    """True if ``path`` is read as a product (:func:`read_product_state`): a Zarr product
    store, or a NetCDF file (predict's ``fmt: netcdf``; one that is no product, or cannot
    be opened, is then a :class:`ProductError` naming it)."""
    return is_product_store(path) or is_netcdf(path)


def read_product_state(path: str | Path) -> ProductState:
    """The :class:`ProductState` of the product at ``path``: a Zarr store (its own metadata,
    not the consolidated copy) or a NetCDF file; :class:`ProductError` for one that is not a
    product, or a file that cannot be opened."""
    from enspp.data.provenance import record_key

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"product {p} does not exist")
    if p.is_file():
        return _read_file_state(p)
    if not is_product_store(p):
        raise ProductError(f"{p} is not an enspp product store (no zarr.json with enspp_kind "
                           f"{PRODUCT_KIND!r})")
    attrs = dict(zarr.open_group(p, mode="r", use_consolidated=False).attrs)
    problems: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with xr.open_zarr(p, consolidated=False) as ds:
                coord = ds[schema.INIT_TIME].values.astype("datetime64[ns]")
                leads = (ds[schema.LEAD_TIME].values if schema.LEAD_TIME in ds.coords
                         else np.array([], dtype="timedelta64[ns]"))
    except Exception as e:  # noqa: BLE001 - zarr/xarray raise many types for a damaged store
        raise ProductError(f"store {p}: the init_time coordinate cannot be read "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    done = _times_attr(attrs, COMPLETE_ATTR, f"store {p}", problems, required=True)
    skipped = _times_attr(attrs, SKIPPED_ATTR, f"store {p}", problems, required=False)
    _check_attrs(attrs, f"store {p}", problems)
    marked = set(done.tolist())
    return ProductState(
        path=p, attrs=attrs, init_times=coord,
        complete=np.array([t in marked for t in coord.tolist()], dtype=bool),
        skipped=tuple(record_key(t) for t in skipped),
        not_in_coordinate=tuple(record_key(t) for t in np.setdiff1d(done, coord)),
        problems=tuple(problems), lead_times=np.asarray(leads, dtype="timedelta64[ns]"),
        variables=product_variables(p))


def _read_file_state(p: Path) -> ProductState:
    """A NetCDF product: every init time it holds is complete (:mod:`models.product_file`);
    its skipped init times and inputs recorded as in a Zarr product."""
    from enspp.data.provenance import record_key

    with open_product_file(p) as ds:
        attrs = file_attrs(ds)
        if attrs.get("enspp_kind") != PRODUCT_KIND:
            raise ProductError(f"{p} is a NetCDF file but not an enspp product (its attribute "
                               f"enspp_kind is {attrs.get('enspp_kind')!r}, not "
                               f"{PRODUCT_KIND!r})")
        if schema.INIT_TIME not in ds.coords:
            raise ProductError(f"file {p}: no init_time coordinate (dims {tuple(ds.dims)})")
        coord = ds[schema.INIT_TIME].values.astype("datetime64[ns]")
        leads = (ds[schema.LEAD_TIME].values if schema.LEAD_TIME in ds.coords
                 else np.array([], dtype="timedelta64[ns]"))
        variables = file_variables(ds)
    problems: list[str] = []
    skipped = _times_attr(attrs, SKIPPED_ATTR, f"file {p}", problems, required=False)
    _check_attrs(attrs, f"file {p}", problems)
    return ProductState(
        path=p, attrs=attrs, init_times=coord, complete=np.ones(len(coord), dtype=bool),
        skipped=tuple(record_key(t) for t in skipped), not_in_coordinate=(),
        problems=tuple(problems),
        lead_times=np.asarray(leads, dtype="timedelta64[ns]"), variables=variables,
        fmt="netcdf")


def _times_attr(attrs: Mapping[str, Any], key: str, where: str, problems: list[str], *,
                required: bool) -> np.ndarray:
    """The init times of attribute ``key`` (``where``: ``store PATH`` or ``file PATH``)."""
    value = attrs.get(key)
    if value is None:
        if required:
            problems.append(f"{where}: attribute {key!r} is missing")
        return np.array([], dtype="datetime64[ns]")
    if not isinstance(value, list):
        problems.append(f"{where}: attribute {key!r} is not a list of init times")
        return np.array([], dtype="datetime64[ns]")
    good = []
    for v in value:
        try:
            good.append(np.datetime64(v, "ns"))
        except (TypeError, ValueError):
            problems.append(f"{where}: attribute {key!r}: {v!r} is not a time")
    return np.array(sorted(set(good)), dtype="datetime64[ns]")


def _check_attrs(attrs: Mapping[str, Any], where: str, problems: list[str]) -> None:
    """The identity attributes a rerun compares, and :data:`INPUTS_ATTR`, parse (``where``:
    ``store PATH`` or ``file PATH``)."""
    kinds = {"checkpoint_sha256": (str, "a string"), "input_members": (list, "a list"),
             "n_ecc_members": (int, "an integer"), "quantiles": (list, "a list"),
             "distribution": (str, "a string")}
    for key in IDENTITY_ATTRS:
        if key not in attrs:
            problems.append(f"{where}: attribute {key!r} is missing")
        elif key in kinds and not isinstance(attrs[key], kinds[key][0]):
            problems.append(f"{where}: attribute {key!r} is {attrs[key]!r}, not "
                            f"{kinds[key][1]}")
    inputs = attrs.get(INPUTS_ATTR)
    if inputs is None:
        return
    fields = inputs.get("fields") if isinstance(inputs, dict) else None
    digests = inputs.get("digests") if isinstance(inputs, dict) else None
    if (not isinstance(fields, list) or not isinstance(digests, dict)
            or not all(isinstance(f, list) and len(f) == 2 and isinstance(f[1], int)
                       for f in fields)):
        problems.append(f"{where}: attribute {INPUTS_ATTR!r} is not "
                        "{'fields': [[variable, lead hours], ...], 'digests': {init time: digest}}")
        return
    for t in digests:
        try:
            np.datetime64(t, "ns")
        except (TypeError, ValueError):
            problems.append(f"{where}: attribute {INPUTS_ATTR!r}: {t!r} is not a time")
            break


def recorded_forecast(attrs: Mapping[str, Any]) -> str | None:
    """The forecast store a product was computed from, as its ``source`` attribute records
    it (``enspp predict, model M, input PATH``); ``None`` when not recorded (a dataset held
    in memory)."""
    source = str(attrs.get("source", ""))
    head, sep, tail = source.partition(", input ")
    if not sep or not head.startswith("enspp predict") or tail in ("", "forecast store"):
        return None
    return tail


def product_variables(path: str | Path) -> dict[str, dict[str, Any]]:
    """The data variables of a product (those along ``init_time``): dims, shape, chunks
    (``None``: a contiguous NetCDF variable) and CF attributes, in name order."""
    if Path(path).is_file():
        with open_product_file(path) as ds:
            return file_variables(ds)
    group = zarr.open_group(Path(path), mode="r", use_consolidated=False)
    out = {}
    for name, arr in sorted(group.arrays(), key=lambda kv: kv[0]):
        dims = list(arr.metadata.dimension_names or arr.attrs.get("_ARRAY_DIMENSIONS", []))
        if name == schema.INIT_TIME or dims[:1] != [schema.INIT_TIME]:
            continue
        attrs = dict(arr.attrs)
        out[name] = {"dims": dims, "shape": [int(n) for n in arr.shape],
                     "chunks": [int(c) for c in arr.chunks], "units": attrs.get("units"),
                     "long_name": attrs.get("long_name")}
    return out


def product_summary(path: str | Path, *, forecast: str | Path | None = None
                    ) -> dict[str, Any]:
    """What ``enspp inspect PRODUCT`` reports, as a JSON-able dict: the product kind, the
    model and checkpoint, variables, lead times, init times complete / skipped (and why) /
    incomplete, the stale ones when the forecast store (``forecast``, else the recorded one)
    can be read, the chunking."""
    from enspp.data.inspect import bytes_on_disk
    from enspp.data.provenance import record_keys

    state = read_product_state(path)
    a = state.attrs
    variables = state.variables
    leads = state.lead_times
    done = record_keys(np.sort(state.init_times[state.complete]))
    info: dict[str, Any] = {
        "path": str(state.path), "kind": PRODUCT_KIND, "format": state.fmt,
        "product": state.kind,
        "distribution": a.get("distribution"), "crps_estimator": a.get("crps_estimator"),
        "ecc_members": a.get("n_ecc_members"), "quantiles": a.get("quantiles"),
        "targets": sorted(n[:-len("_mean")] for n in variables if n.endswith("_mean")),
        "model": {k: a.get(k) for k in ("model_name", "model_version", "checkpoint",
                                        "checkpoint_sha256", "code_version",
                                        "training_data_version")},
        "input_members": a.get("input_members"),
        "forecast": recorded_forecast(a),
        "lead_times_hours": [float(x / np.timedelta64(1, "h")) for x in np.sort(leads)],
        "init_times": {
            "rows": int(len(state.init_times)), "complete": len(done),
            "first": done[0] if done else None, "last": done[-1] if done else None,
            "skipped": len(state.skipped), "skipped_examples": list(state.skipped[:_SHOW]),
            "skipped_reason": SKIPPED_REASON if state.skipped else None,
            "incomplete": len(state.incomplete),
            "incomplete_examples": list(state.incomplete[:_SHOW]),
            "not_in_coordinate": list(state.not_in_coordinate)},
        "variables": variables,
        "chunking": _chunking(variables),
        "problems": list(state.problems),
    }
    info["stale"] = _stale(state, forecast)
    info["bytes_on_disk"] = bytes_on_disk(state.path)
    return info


def _chunking(variables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per = {v["chunks"][0] for v in variables.values() if v["chunks"]}
    whole = all(v["chunks"] is None or v["chunks"][1:] == v["shape"][1:]
                for v in variables.values())
    return {"init_times_per_chunk": sorted(per), "other_dims_whole": whole,
            "chunks": {name: v["chunks"] for name, v in variables.items()}}


def _stale(state: ProductState, forecast: str | Path | None) -> dict[str, Any]:
    """The stale init times (:func:`stale_init_times`) when the forecast store is given or
    recorded and is an enspp store; else why they were not looked for."""
    from enspp.data.store import is_store, read_root_attrs

    given = forecast if forecast is not None else recorded_forecast(state.attrs)
    if given is None:
        return {"forecast": None, "checked": False, "why": "no forecast store recorded"}
    if not (state.attrs.get(INPUTS_ATTR) or {}).get("digests"):
        return {"forecast": str(given), "checked": False, "why": "no inputs recorded"}
    if not is_store(given) or (read_root_attrs(given) or {}).get("enspp_kind") != "forecast":
        return {"forecast": str(given), "checked": False,
                "why": "not found or not an enspp forecast store"}
    stale = sorted(stale_init_times(state.path, given))
    return {"forecast": str(given), "checked": True, "count": len(stale),
            "examples": stale[:_SHOW]}


@dataclass(frozen=True)
class ProductReport:
    """What ``enspp validate PRODUCT`` says: ``problems`` (one line each, ``kind: message``;
    ``counts`` per kind) make it invalid, ``notes`` (incomplete init times a killed predict
    left, skipped ones, masked points) do not."""

    path: str
    kind: str
    complete: int
    variables: tuple[str, ...]
    notes: tuple[str, ...] = ()
    counts: Mapping[str, int] | None = None
    problems: tuple[str, ...] = ()
    deep: bool = False
    #: chunks read by the deep check (a NetCDF product: reads of a block of init times)
    chunks_checked: int = 0
    fmt: str = "zarr"

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "valid" if self.ok else "INVALID"
        if self.fmt == "netcdf":  # written whole from complete init times
            line = (f"{self.path}: {state} NetCDF product ({self.kind}), {self.complete} init "
                    f"times, variables {list(self.variables)}")
            line += ("; deep check: every value read" if self.deep else
                     "; values not read (--deep reads every one)")
        else:
            line = (f"{self.path}: {state} product store ({self.kind}), {self.complete} "
                    f"complete init times, variables {list(self.variables)}")
            line += (f"; deep check: {self.chunks_checked} chunks read" if self.deep else
                     "; chunks not read (--deep decodes every one)")
        lines = [line, *(f"{self.path}: note: {n}" for n in self.notes)]
        if self.counts:
            lines.append("problems: " + ", ".join(f"{n} {k}" for k, n in self.counts.items()))
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


def check_product(path: str | Path, *, deep: bool = False) -> ProductReport:
    """Check a product: its attributes parse, the init times marked complete are in the
    ``init_time`` coordinate and every variable the attributes call for is there and holds
    them; ``deep`` also reads every chunk holding a complete init time (a chunk file missing
    or not decoding is a problem) and checks its values: a point is NaN in every field of an
    init time (its inputs were NaN, ``pipeline.nan_policy: mask``) or in none, and no field
    is NaN everywhere.  Init times written but not marked complete are a note (the next
    predict over them redoes them), not a problem.  A NetCDF product (every init time
    complete) gets the same checks, ``deep`` reading every value block by block."""
    from enspp.data.store_check import Problems

    state = read_product_state(path)
    problems = Problems()
    for p in state.problems:
        problems.add("attribute", p)
    for t in state.not_in_coordinate:
        problems.add("inconsistent", f"{state.where}: init time {t} is marked complete "
                                     "but the init_time coordinate does not hold it")
    variables = state.variables
    _check_variables(state, variables, problems)
    notes = _product_notes(state)
    checked, masked = (_check_product_chunks(state, variables, problems) if deep else (0, 0))
    if masked and state.attrs.get("nan_policy") == "error":
        problems.add("inconsistent", f"{state.where}: {masked} complete init time"
                     f"{'s' * (masked != 1)} hold points that are NaN in every field, but the "
                     "model's pipeline.nan_policy is 'error' (predict writes no NaN then)")
    elif masked:
        notes.append(f"{masked} complete init time{'s' * (masked != 1)} "
                     f"hold{'s' * (masked == 1)} points that are "
                     "NaN in every field (inputs NaN there, pipeline.nan_policy 'mask')")
    return ProductReport(path=str(state.path), kind=state.kind,
                         complete=int(state.complete.sum()), variables=tuple(variables),
                         notes=tuple(notes), counts=dict(problems.counts),
                         problems=tuple(problems.examples), deep=deep, chunks_checked=checked,
                         fmt=state.fmt)


def _product_notes(state: ProductState) -> list[str]:
    notes = []
    if state.incomplete:
        n = len(state.incomplete)
        notes.append(f"{n} incomplete init time{'s' * (n != 1)} (written but not marked "
                     f"complete: a killed predict; hidden from readers, the next predict over "
                     f"them redoes them): {', '.join(state.incomplete[:_SHOW])}"
                     f"{', ...' if n > _SHOW else ''}")
    if state.skipped:
        n = len(state.skipped)
        notes.append(f"{n} init time{'s' * (n != 1)} skipped ({SKIPPED_REASON}): "
                     f"{', '.join(state.skipped[:_SHOW])}{', ...' if n > _SHOW else ''}")
    return notes


def _check_variables(state: ProductState, variables: Mapping[str, Mapping[str, Any]],
                     problems: Any) -> None:
    """The variables the attributes call for exist, with the members and quantiles they
    say, and hold every complete init time."""
    from enspp.data.provenance import record_key

    a, where = state.attrs, state.where
    targets = sorted(n[:-len("_mean")] for n in variables if n.endswith("_mean"))
    if not targets:
        problems.add("inconsistent", f"{where}: no product variable (<target>_mean) found")
    n_members = a.get("n_ecc_members") if isinstance(a.get("n_ecc_members"), int) else None
    levels = a.get("quantiles") if isinstance(a.get("quantiles"), list) else None
    sizes = {schema.MEMBER: n_members, "quantile": None if levels is None else len(levels)}
    for t in targets:
        want = [f"{t}_std"]
        want += [t] if n_members else []
        want += [f"{t}_quantiles"] if levels else []
        want += [f"{t}_loc", f"{t}_scale"] if a.get("distribution") == "censored_logistic" else []
        for name in want:
            if name not in variables:
                problems.add("inconsistent", f"{where}: variable {name!r} is missing (the "
                                             "attributes call for it)")
    rows = np.flatnonzero(state.complete)
    for name, v in variables.items():
        for dim, n in sizes.items():
            if n is not None and dim in v["dims"] and v["shape"][v["dims"].index(dim)] != n:
                problems.add("inconsistent", f"{where}: variable {name!r} has "
                                             f"{v['shape'][v['dims'].index(dim)]} {dim}s, the "
                                             f"attributes say {n}")
        short = rows[rows >= v["shape"][0]]
        if len(short):
            problems.add("inconsistent", f"{where}: variable {name!r} holds {v['shape'][0]} "
                                         f"init times, not init time "
                                         f"{record_key(state.init_times[short[0]])} marked "
                                         f"complete ({len(short)} such)")


#: reads rows ``r0:stop`` of a variable for the deep check, ``rows`` the complete ones among
#: them: ``(values or None when unreadable, chunks read)``; what cannot be read is a problem
_Reader = Callable[[str, int, int, np.ndarray], tuple["np.ndarray | None", int]]


def _check_product_chunks(state: ProductState, variables: Mapping[str, Mapping[str, Any]],
                          problems: Any) -> tuple[int, int]:
    """Read every chunk holding a complete init time, block of init times by block (a
    NetCDF product: every value, a bounded block of init times at a time); return the chunks
    read and the complete init times with masked points."""
    names = [n for n, v in variables.items() if v["shape"][0]]
    if not names:
        return 0, 0
    if state.fmt == "netcdf":
        with open_product_file(state.path) as ds:
            return _check_blocks(state, variables, names, problems,
                                 step=read_step({n: variables[n] for n in names}),
                                 read=_file_reader(ds, state, problems))
    group = zarr.open_group(state.path, mode="r", use_consolidated=False)
    return _check_blocks(state, variables, names, problems,
                         step=int(variables[names[0]]["chunks"][0]),
                         read=_zarr_reader(group, state, variables, problems))


def _check_blocks(state: ProductState, variables: Mapping[str, Mapping[str, Any]],
                  names: Sequence[str], problems: Any, *, step: int,
                  read: _Reader) -> tuple[int, int]:
    from enspp.data.provenance import record_key

    done = state.complete
    checked = masked_inits = 0
    for r0 in range(0, len(done), step):
        r1 = min(r0 + step, len(done))
        rows = np.flatnonzero(done[r0:r1]) + r0
        if not len(rows):
            continue
        masks: dict[str, np.ndarray] = {}  # variable -> [rows, points]: NaN in all its values
        for name in names:
            v = variables[name]
            stop = min(r1, v["shape"][0])
            if stop <= r0:
                continue
            values, n = read(name, r0, stop, rows)
            checked += n
            if values is None:
                continue
            masks[name] = _nan_points(values[rows[rows < stop] - r0], v["dims"],
                                      name=name, keys=[record_key(state.init_times[r])
                                                       for r in rows if r < stop],
                                      where=state.where, problems=problems)
        masked_inits += _compare_masks(masks, rows=rows, state=state, problems=problems)
    return checked, masked_inits


def _zarr_reader(group: Any, state: ProductState, variables: Mapping[str, Mapping[str, Any]],
                 problems: Any) -> _Reader:
    """Rows of a Zarr product, chunk by chunk: a chunk file missing or not decoding is a
    problem naming the chunk and its complete init times."""
    from enspp.data.provenance import record_key
    from enspp.data.store_check import read_rows

    def read(name: str, r0: int, stop: int, rows: np.ndarray) -> tuple[np.ndarray | None, int]:
        v = variables[name]
        c0 = v["chunks"][0]
        count = (-(-stop // c0) - r0 // c0) * int(np.prod(
            [-(-n // c) for n, c in zip(v["shape"][1:], v["chunks"][1:])]))
        values, bad = read_rows(group[name], r0, stop)
        for coords, why in bad:
            lo = coords[0] * c0
            hit = [record_key(state.init_times[r]) for r in rows if lo <= r < lo + c0]
            if not hit:
                continue
            kind = "missing" if why == "the chunk file is missing" else "corrupt"
            problems.add(kind, f"{state.where}: variable {name!r}, chunk "
                               f"{'/'.join(map(str, coords))} (init time {_span(hit)}): {why}")
        return values, count

    return read


def _file_reader(ds: xr.Dataset, state: ProductState, problems: Any) -> _Reader:
    """Rows of a NetCDF product: a block that cannot be read (damaged compression, a file
    cut short) is a problem naming the variable and its init times."""
    from enspp.data.provenance import record_key

    def read(name: str, r0: int, stop: int, rows: np.ndarray) -> tuple[np.ndarray | None, int]:
        try:
            return read_file_rows(ds, name, r0, stop), 1
        except Exception as e:  # noqa: BLE001 - netCDF4/HDF5 raise many types for damage
            hit = [record_key(state.init_times[r]) for r in rows if r < stop]
            why = ("; a chunk's checksum or compression does not match: the file is damaged"
                   if "HDF error" in str(e) else "")
            problems.add("corrupt", f"{state.where}: variable {name!r} (init time "
                                    f"{_span(hit)}) cannot be read: {type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:160]}{why}")
            return None, 1

    return read


def _span(keys: list[str]) -> str:
    """Init times first..last (rows are in the order predicted: a catch-up writes earlier
    init times after later ones)."""
    keys = sorted(keys)
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)} complete)"


def _nan_points(values: np.ndarray, dims: Sequence[str], *, name: str, keys: Sequence[str],
                where: str, problems: Any) -> np.ndarray:
    """Per init time (first axis), the points NaN in every value of the variable (all leads,
    members, quantiles); a point NaN in some of them only, or a field NaN everywhere, is a
    problem."""
    space = [i for i, d in enumerate(dims) if d not in _NON_SPATIAL]
    other = tuple(i for i in range(1, len(dims)) if i not in space)
    nan = np.isnan(values)
    flat = (lambda x: x.reshape(x.shape[0], -1))  # noqa: E731
    every, some = flat(nan.all(axis=other)), flat(nan.any(axis=other))
    for k, key in enumerate(keys):
        if every[k].all():
            problems.add("nan", f"{where}: variable {name!r} at init time {key} (marked "
                                "complete) holds only NaN")
        elif (some[k] & ~every[k]).any():
            n = int((some[k] & ~every[k]).sum())
            problems.add("nan", f"{where}: variable {name!r} at init time {key} (marked "
                                f"complete) is NaN at {n} point{'s' * (n != 1)} in some of its "
                                "values only (a masked point is NaN in all of them)")
    return every


def _compare_masks(masks: Mapping[str, np.ndarray], *, rows: np.ndarray, state: ProductState,
                   problems: Any) -> int:
    """A point NaN in one field of an init time is NaN in all of them; return the init times
    with points masked in every field."""
    from enspp.data.provenance import record_key

    if not masks:
        return 0
    n = min(len(m) for m in masks.values())
    common = np.logical_and.reduce([m[:n] for m in masks.values()])
    for name, m in masks.items():
        extra = m[:n] & ~common
        for k in np.flatnonzero(extra.any(axis=1) & ~m[:n].all(axis=1)):
            c = int(extra[k].sum())
            problems.add("nan", f"{state.where}: variable {name!r} at init time "
                                f"{record_key(state.init_times[rows[k]])} (marked complete) is "
                                f"NaN at {c} point{'s' * (c != 1)} where the other fields hold "
                                "values")
    return int((common.any(axis=1) & ~common.all(axis=1)).sum())
