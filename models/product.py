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
"""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from enspp.data import schema
from enspp.data.errors import EnsppError

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
        base = {"units": info.units if info else "1"}
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
    """A product (Zarr: only its complete init times; NetCDF: as written), lazily."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"product {path} does not exist")
    if not path.is_dir():
        return xr.open_dataset(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(path, consolidated=True)
    if ds.attrs.get("enspp_kind") != PRODUCT_KIND:
        raise ProductError(f"{path} is not an enspp product store")
    done = np.asarray(ds.attrs.get(COMPLETE_ATTR, []), dtype="datetime64[ns]")
    keep = np.isin(ds[schema.INIT_TIME].values.astype("datetime64[ns]"), done)
    return ds.isel({schema.INIT_TIME: np.flatnonzero(keep)})


class ProductWriter:
    """Writes the init times of one product: Zarr in place (idempotent), NetCDF at the end."""

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
        self.target = self.partial if fmt == "netcdf" or not self.out.exists() else self.out
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
            raise ProductError(f"{self.out} exists and is not a Zarr product store")
        try:
            attrs = dict(zarr.open_group(self.out, mode="r", use_consolidated=False).attrs)
        except Exception as e:  # zarr raises several types for a non-store
            raise ProductError(f"{self.out} exists and is not a Zarr store ({e})") from e
        if attrs.get("enspp_kind") != PRODUCT_KIND:
            raise ProductError(f"{self.out} exists and is not an enspp product store")
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
                    part.to_zarr(self.target, append_dim=schema.INIT_TIME, consolidated=True)
        self._mark_complete(*inits)
        if self.target == self.partial and self.fmt == "zarr":
            self.partial.rename(self.out)
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
        """Record ``inits`` as left out for want of input fields (a Zarr store that exists:
        nothing is recorded where nothing was written)."""
        self.skipped.update(str(np.datetime64(t, "ns")) for t in inits)
        if self.fmt == "zarr" and self.target.exists():
            self._mark_complete()

    def _mark_complete(self, *inits: np.datetime64) -> None:
        marked = {str(np.datetime64(init, "ns")) for init in inits}
        self.done.update(marked)
        self.skipped -= self.done
        for t in marked | self.skipped:
            if t in self._new_inputs:
                self.inputs[t] = self._new_inputs.pop(t)
        group = zarr.open_group(self.target, mode="r+", use_consolidated=False)
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

    def finish(self) -> Path:
        """NetCDF: convert the staged Zarr store into ``out`` (replacing it); return ``out``."""
        if self.fmt == "netcdf":
            with open_product(self.partial) as ds:
                attrs = {k: v for k, v in ds.attrs.items()
                         if k not in (COMPLETE_ATTR, SKIPPED_ATTR, INPUTS_ATTR)}
                attrs["history"] = f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} enspp predict"
                tmp = self.out.parent / f".{self.out.name}.tmp.nc"
                product = ds.copy()
                product.attrs = attrs
                product.to_netcdf(tmp)
            tmp.replace(self.out)
            shutil.rmtree(self.partial, ignore_errors=True)
        return self.out


def stale_init_times(product: str | Path, forecast: str | Path) -> set[str]:
    """Init times recorded in ``product`` (complete or skipped; ``record_key`` strings) whose
    input fields in the forecast store ``forecast`` now come from other bytes than those they
    were computed from (:data:`INPUTS_ATTR`; a product written before inputs were recorded,
    or a store that cannot be read as an enspp store, has none).  Predicting them again
    brings the product up to date."""
    from enspp.data.provenance import record_key
    from enspp.data.store import read_root_attrs
    from enspp.data.store_meta import StoreMetaError, open_meta

    path = Path(product)
    attrs = read_root_attrs(path) if path.is_dir() else None
    recorded = (attrs or {}).get(INPUTS_ATTR) or {}
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
