"""``predict(...)``: apply a checkpoint to a forecast store and write a product store.

Per target ``v`` the product holds (ARCHITECTURE.md, "Models -> products contract")::

    v(init_time, lead_time, member, latitude, longitude)      M ECC members
    v_mean, v_std(init_time, lead_time, latitude, longitude)  predictive mean and std
    v_quantiles(init_time, lead_time, quantile, latitude, longitude)

with CF attributes and provenance (checkpoint sha256, input members, model version,
distribution, CRPS estimator).  Memory stays bounded: init times are read in groups,
post-processed one at a time (by overlapping tiles when the grid is larger than the training
patch; a point model runs a group in one pass) and written in blocks of ~65536 values
(one init time of a large grid, thousands at a station).

A Zarr product is appended to: init times already in it are rewritten in place, new ones are
appended, and ``enspp_complete`` lists the init times whose write finished.  Everything
written is a function of the checkpoint, the inputs, the options and the init time (the ECC
draws are seeded per init time), so re-running an init time leaves the store identical and a
killed run is repaired by running it again.  NetCDF products are written whole.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from dask.base import is_dask_collection

from enspp.data import schema
from enspp.data.errors import EnsppError
from enspp.data.progress import LOGGER, plural, step
from enspp.models.checkpoint import LoadedCheckpoint, check_store_compatible, load_checkpoint
from enspp.models.ecc import (
    SORT_POINTS,
    ecc_keys,
    output_ecc_members,
    output_ecc_members_many,
    output_quantiles,
)
from enspp.models.heap import reuse_large_blocks
from enspp.models.product import (
    PRODUCT_FIELDS,
    ProductError,
    ProductWriter,
    open_product,
    product_attrs,
    product_block,
)
from enspp.pipeline.align import open_dataset, open_static
from enspp.pipeline.config import PipelineConfig
from enspp.pipeline.features import (
    STATIC_NAMES,
    channel_names,
    doy_encodings,
    lead_target_channels,
    parse_channel,
    static_fields,
)
from enspp.pipeline.members import choose_members
from enspp.pipeline.reader import StoreReader
from enspp.pipeline.station_features import ALL_RECORD_FEATURES, FeatureScales, StationFeatures
from enspp.pipeline.tiles import stitch, tile_slices

__all__ = ["PredictError", "ProductError", "open_product", "predict", "tiling"]


class PredictError(EnsppError):
    """The forecast store cannot be post-processed as asked; the message names the problem."""


#: seconds a predict waits for another writer of the same product (then refuses, naming it)
PRODUCT_LOCK_TIMEOUT = 600.0


def _one_writer(fn: Any) -> Any:
    """Run ``fn`` holding the product's lock (``<dir>/.<product>.lock``, released by the
    kernel if the process dies): the CLI, the predict flow and the validation products
    serialise their writes to one product instead of interleaving them."""
    import functools

    from enspp.data.lock import store_lock

    @functools.wraps(fn)
    def locked(*args: Any, out: str | Path, **kwargs: Any) -> Path:
        with store_lock(Path(out), timeout=PRODUCT_LOCK_TIMEOUT):
            return fn(*args, out=out, **kwargs)

    return locked


@_one_writer
def predict(checkpoint: str | Path, store: str | Path | xr.Dataset, *,
            out: str | Path, init_times: Sequence[Any] | None = None,
            quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), n_members: int = 10,
            fmt: str = "zarr", static: str | Path | xr.Dataset | None = None,
            batch_size: int = 4, seed: int = 0, model_version: str | None = None,
            fields: Collection[str] = PRODUCT_FIELDS, whole_fields: bool = False,
            progress: bool = True, analysis: str | Path | xr.Dataset | None = None,
            deterministic: str | Path | xr.Dataset | None = None) -> Path:
    """Post-process ``store`` with ``checkpoint``; write (or extend) and return ``out``.

    ``init_times`` (default: all complete ones in the store) selects init times; ``n_members``
    is M, the number of ECC members written (may exceed K); ``fmt`` is ``zarr`` (appendable,
    idempotent) or ``netcdf`` (written whole; an existing file is extended); ``static`` overrides the static-field file
    recorded in the checkpoint's pipeline config; ``batch_size`` is tiles per forward pass.

    ``fields`` (of ``PRODUCT_FIELDS``; ``mean`` and ``std`` are always written) leaves out the
    ECC ``members`` and/or the ``quantiles``, which are then neither computed nor written:
    ``("mean", "std")`` is the Gaussian product alone.  ``whole_fields`` runs the model on the
    whole grid of each init time in one pass, as the training pipeline's validation and test
    loaders feed it, instead of the tiles ``tiling`` picks.  ``progress``: a bar on a
    terminal (:mod:`data.progress`; the summary line is logged either way).

    One process writes a product at a time: a second waits for the first (up to
    :data:`PRODUCT_LOCK_TIMEOUT` seconds).

    A station model with record features (``features.past_error``/``hres``) builds them from
    the observations (``analysis``, default the training pipeline's analysis store) and the
    deterministic forecast (``deterministic``, likewise) up to each init time, scaled as in
    training (the scales are in the checkpoint).
    """
    if fmt not in ("zarr", "netcdf"):
        raise PredictError(f"fmt {fmt!r}: expected 'zarr' or 'netcdf'")
    if n_members < 1:
        raise PredictError(f"n_members must be >= 1, got {n_members}")
    levels = _check_quantiles(quantiles)
    wanted = _check_fields(fields)
    n_members = n_members if "members" in wanted else 0
    levels = levels if "quantiles" in wanted else ()
    loaded = load_checkpoint(checkpoint)
    meta = loaded.metadata
    pipeline = PipelineConfig.model_validate(meta.pipeline)
    source = str(store) if not isinstance(store, xr.Dataset) else "forecast store"
    ds = open_dataset(store)
    check_store_compatible(meta, ds, source=source)
    members = choose_members(ds[schema.MEMBER].values, config=pipeline.members,
                             rng=np.random.default_rng(seed))
    inits = _select_inits(ds, init_times, source=source)
    if ds.nbytes <= LOAD_BYTES and len(inits) > _group_size(loaded, ds, members):
        # a small store read in several groups (stations): read once, not group by group
        ds = ds.load()
    # the static planes (numpy, mostly without the GIL) on another core while the product
    # and the input reader are set up
    static_ds = _open_static(static, pipeline)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        static_job = pool.submit(static_fields, ds, static_ds, regrid=pipeline.regrid)
    finally:
        pool.shutdown(wait=False)
    records = _record_features(meta, pipeline, ds, members=members, analysis=analysis,
                               deterministic=deterministic)
    tile, overlap = ((None, 0) if whole_fields else
                     tiling(pipeline, grid_shape=tuple(loaded.model.spec.grid_shape)))
    version = model_version or f"{meta.spec['name']}-{loaded.sha256[:12]}"
    attrs = product_attrs(loaded, members=members, source=source, version=version,
                          n_members=n_members, quantiles=levels)
    extends = Path(out).exists()
    writer = ProductWriter(Path(out), attrs=attrs, fmt=fmt,
                           init_chunk=product_init_chunk(_field_size(ds)))
    if not isinstance(store, xr.Dataset):
        fields_in = [parse_channel(c) for c in meta.channels]
        writer.record_inputs(fields_in, _input_digests(store, fields_in, inits))
    skipped: dict[np.datetime64, list[str]] = {}
    # a store held in memory is read as it is; else through the chunk reader
    in_memory = not any(is_dask_collection(v.data) for v in ds.data_vars.values())
    reader = None if in_memory else _input_reader(ds, meta.channels, store)
    static_fixed = static_job.result()
    with step(f"predict {version}", total=len(inits), unit="init time", progress=progress) as s, \
            torch.inference_mode(), reuse_large_blocks():
        # small fields (stations) are written in blocks of init times: one write per block
        block = max(1, WRITE_BLOCK_VALUES // max(1, _field_size(ds)))
        pending: list[tuple[np.datetime64, dict[int, dict[str, np.ndarray]]]] = []

        def flush() -> None:
            if pending:
                writer.write_block(product_block([f for _, f in pending], targets=meta.targets,
                                                 inits=[t for t, _ in pending],
                                                 quantiles=levels, grid=ds))
                pending.clear()

        point = loaded.model.spec.is_point
        group_size = _group_size(loaded, ds, members)
        for start in range(0, len(inits), group_size):
            group = inits[start:start + group_size]
            # the group's inputs in one read (each chunk decoded once)
            read = read_inputs_many(ds, meta.channels, inits=group, members=members,
                                    source=source, reader=reader)
            # a point model: one forward pass for the whole group (its rows: stations x inits)
            prepared = (_point_params(loaded, pipeline, group, read, static_fixed=static_fixed,
                                      records=records) if point else {})
            # ... and its quantiles and ECC members for the whole group
            done = _point_fields(loaded, pipeline, prepared, quantiles=levels,
                                 n_members=n_members, seed=seed)
            for init, inputs in zip(group, read):
                try:
                    per_lead = done.get(init) or _post_process(
                        loaded, ds, init=init, members=members, static_fixed=static_fixed,
                        pipeline=pipeline, tile=tile, overlap=overlap, quantiles=levels,
                        n_members=n_members, batch_size=batch_size, seed=seed, source=source,
                        records=records, inputs=inputs)
                except _AbsentInputs as e:
                    skipped[init] = e.channels
                    s.update()
                    continue
                pending.append((init, {lead_h: fields
                                       for lead_h, (fields, _) in per_lead.items()}))
                if len(pending) >= block:
                    flush()
                s.update()
        flush()
        if skipped:
            line = _skipped_line(skipped, total=len(inits), source=source)
            writer.mark_skipped(list(skipped))  # recorded in the product (enspp_skipped)
            if len(skipped) == len(inits):
                if fmt == "netcdf" and extends:  # the file it extends records them too
                    writer.finish()
                raise PredictError(line)
            LOGGER.warning(line)
        path = writer.finish()
        s.amount = (f"{plural(len(inits) - len(skipped), 'init time')} of "
                    f"{', '.join(meta.targets)} into {path.name}"
                    + (f" ({len(skipped)} skipped: input fields absent)" if skipped else ""))
    return path


class _AbsentInputs(Exception):
    """An init time lacks whole input fields (absent from the store): skipped, not filled."""

    def __init__(self, channels: list[str]):
        super().__init__(", ".join(channels))
        self.channels = channels


def _skipped_line(skipped: dict[np.datetime64, list[str]], *, total: int, source: Any) -> str:
    """One line naming the init times skipped for want of input fields (the first few)."""
    shown = "; ".join(f"{str(t)[:16]} ({', '.join(c)})" for t, c in list(skipped.items())[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (f"predict: {len(skipped)} of {plural(total, 'init time')} skipped because input "
            f"fields are absent from {source} (not filled, whatever pipeline.nan_policy): "
            f"{shown}{more}")


#: grid points x init times gathered before a product write (a station product: hundreds of
#: init times per write; a 721x1440 grid: one)
WRITE_BLOCK_VALUES = 65536
#: values of one field per product chunk: a chunk spans this many values' worth of init
#: times (a station product: thousands of init times per chunk; a 721x1440 grid: one)
PRODUCT_CHUNK_VALUES = 65536
#: a forecast store up to this size is read into memory once
LOAD_BYTES = 256 * 2**20


def _group_size(loaded: LoadedCheckpoint, ds: xr.Dataset, members: np.ndarray) -> int:
    """Init times :func:`predict` reads (and a point model runs) together."""
    if loaded.model.spec.is_point:
        return min(POINT_GROUP, max(1, POINT_ROWS // _field_size(ds)))
    return read_group_size(_field_size(ds) * len(members) * len(loaded.metadata.channels))


def _field_size(ds: xr.Dataset) -> int:
    """Grid points (or stations) of one field of ``ds``."""
    n = 1
    for d in (schema.LATITUDE, schema.LONGITUDE, schema.STATION):
        if d in ds.dims:
            n *= int(ds.sizes[d])
    return n


def product_init_chunk(field_size: int) -> int:
    """Init times per chunk of a new product whose fields hold ``field_size`` points."""
    return max(1, PRODUCT_CHUNK_VALUES // max(1, field_size))


def tiling(pipeline: PipelineConfig, *, grid_shape: tuple[int, int]) -> tuple[int | None, int]:
    """``(tile, overlap)`` for inference: ``batches.tile_size``/``tile_overlap`` when set;
    else, for a model trained on patches smaller than the grid, tiles of the patch size
    overlapping by a quarter of it; else whole fields (``None``, 0)."""
    b = pipeline.batches
    if b.tile_size is not None:
        return b.tile_size, b.tile_overlap
    if b.patch_size is not None and b.patch_size < max(grid_shape):
        return b.patch_size, max(b.tile_overlap, b.patch_size // 4)
    return None, 0


def _check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    q = tuple(float(x) for x in quantiles)
    if not q or any(not 0.0 < x < 1.0 for x in q) or any(b <= a for a, b in zip(q, q[1:])):
        raise PredictError(f"quantiles must be non-empty, strictly increasing and strictly "
                           f"between 0 and 1, got {list(q)}")
    return q


def _check_fields(fields: Collection[str]) -> frozenset[str]:
    got = frozenset(fields) if not isinstance(fields, str) else frozenset([fields])
    if not got <= set(PRODUCT_FIELDS) or not {"mean", "std"} <= got:
        raise PredictError(f"fields must be of {list(PRODUCT_FIELDS)} and include 'mean' and "
                           f"'std', got {sorted(got)}")
    return got


def _init_time(t: Any) -> np.datetime64:
    """``t`` (``--init-time``: a date/time string, a timestamp) as a UTC ``datetime64[ns]``."""
    try:
        ts = pd.Timestamp(t)
        if pd.isna(ts):
            raise ValueError("not a time")
        return np.datetime64(ts.as_unit("ns").to_datetime64(), "ns")
    except (ValueError, TypeError, OverflowError) as e:
        raise PredictError(f"--init-time {str(t)!r}: not a date/time such as 2019-01-31 or "
                           f"2019-01-31T12:00 ({' '.join(str(e).split())})") from None


def _select_inits(ds: xr.Dataset, init_times: Sequence[Any] | None, *,
                  source: Any) -> list[np.datetime64]:
    have = ds[schema.INIT_TIME].values.astype("datetime64[ns]")
    if have.size == 0:
        raise PredictError(f"{source} holds no (complete) init times")
    if init_times is None:
        return list(have)
    wanted = [_init_time(t) for t in init_times]
    missing = [str(t)[:16] for t in wanted if t not in set(have)]
    if missing:
        raise PredictError(f"init times {missing} are not in {source} "
                           f"({str(have[0])[:16]}..{str(have[-1])[:16]}, {have.size} init times)")
    return list(dict.fromkeys(wanted))


def _input_digests(store: str | Path, fields: Sequence[tuple[str, int]],
                   inits: Sequence[np.datetime64]) -> dict[np.datetime64, str]:
    """Each init time's digest of the source ids of its input ``fields`` in the store
    (recorded in the product: :data:`models.product.INPUTS_ATTR`); none for a store without
    our bookkeeping (a foreign Zarr store opened directly)."""
    from enspp.data.provenance import record_keys
    from enspp.data.store_meta import StoreMetaError, open_meta

    try:
        meta = open_meta(store)
    except (StoreMetaError, OSError):
        return {}
    times = np.asarray(inits, dtype="datetime64[ns]")
    by_key = meta.field_digests(fields, times)
    return {t: by_key[k] for t, k in zip(inits, record_keys(times)) if k in by_key}


def _open_static(static: str | Path | xr.Dataset | None,
                 pipeline: PipelineConfig) -> xr.Dataset | None:
    source = static if static is not None else pipeline.stores.static
    if source is None:
        return None
    if not isinstance(source, xr.Dataset) and not Path(source).exists():
        raise FileNotFoundError(f"static fields {source} (used in training) do not exist; "
                                f"pass the file with --static")
    return open_static(source)


def _post_process(loaded: LoadedCheckpoint, ds: xr.Dataset, *, init: np.datetime64,
                  members: np.ndarray, static_fixed: np.ndarray, pipeline: PipelineConfig,
                  tile: int | None, overlap: int, quantiles: tuple[float, ...],
                  n_members: int, batch_size: int, seed: int, source: Any,
                  records: StationFeatures | None = None, inputs: np.ndarray | None = None
                  ) -> dict[int, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Per target lead (hours; every lead of a model of several), the product fields of one
    init time and the mask of points with NaN inputs (no ``quantiles`` for empty
    ``quantiles``, no ``members`` for ``n_members`` 0).  The inputs (read here unless given,
    as :func:`read_inputs` reads them) are read once for every lead.  (A point model's
    group goes through :func:`_point_params` and :func:`_point_fields` instead.)"""
    model, meta = loaded.model, loaded.metadata
    if inputs is None:
        inputs = read_inputs(ds, meta.channels, init=init, members=members, source=source)
    inputs, masked = _prepared(inputs, meta.channels, model, pipeline, init=init, source=source)
    leads = pipeline.features.target_leads
    channels = (lead_target_channels(meta.channels, meta.targets, leads) if len(leads) > 1
                else (tuple(model.spec.target_channels),))
    return {lead_h: (_lead_fields(loaded, inputs, masked, init=init, lead_h=lead_h,
                                  target_channels=tc, static_fixed=static_fixed, tile=tile,
                                  overlap=overlap, quantiles=quantiles, n_members=n_members,
                                  batch_size=batch_size, seed=seed, records=records), masked)
            for lead_h, tc in zip(leads, channels)}


def _prepared(inputs: np.ndarray, channels: Sequence[str], model: torch.nn.Module,
              pipeline: PipelineConfig, *, init: np.datetime64, source: Any
              ) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of one init time as the model reads them (NaN filled by
    ``pipeline.nan_policy``) and the mask of points with NaN inputs.  A field absent from
    the store reads as NaN everywhere: the init time is skipped (:class:`_AbsentInputs`)."""
    absent = [channels[c] for c in range(inputs.shape[1]) if np.isnan(inputs[:, c]).all()]
    if absent:
        raise _AbsentInputs(absent)
    masked = ~np.isfinite(inputs).all(axis=(0, 1))
    if masked.any():
        if pipeline.nan_policy == "error":
            _raise_nan(inputs, channels, init=init, source=source)
        inputs = _fill_nan(inputs, model)
    return inputs, masked


#: one init time's inputs as the model read them, their NaN mask, the model's output per lead
Prepared = tuple[np.ndarray, np.ndarray, dict[int, dict[str, np.ndarray]]]


def _point_params(loaded: LoadedCheckpoint, pipeline: PipelineConfig,
                  inits: Sequence[np.datetime64], inputs: np.ndarray, *,
                  static_fixed: np.ndarray, records: StationFeatures | None
                  ) -> dict[np.datetime64, Prepared]:
    """For every init time of ``inits`` (``inputs [G, K, C, S, 1]``): its prepared inputs,
    their mask and a point model's output per target lead (``mu``, ``sigma``, ...
    ``[T, n_stations, 1]``), in one forward pass per lead whose rows are stations x init
    times.  Init times whose inputs :func:`_prepared` refuses are left out
    (:func:`_post_process` raises for them as for any other)."""
    model, meta = loaded.model, loaded.metadata
    ready: dict[np.datetime64, tuple[np.ndarray, np.ndarray]] = {}
    for init, x in zip(inits, inputs):
        try:
            ready[init] = _prepared(x, meta.channels, model, pipeline, init=init, source="")
        except (_AbsentInputs, EnsppError):
            continue
    out: dict[np.datetime64, Prepared] = {init: (x, m, {}) for init, (x, m) in ready.items()}
    if not ready:
        return out
    x = np.stack([x for x, _ in ready.values()])
    for lead_h in pipeline.features.target_leads:
        statics = _statics_at(model, static_fixed, inits=list(ready), lead_h=lead_h,
                              records=records)
        per_init = _run_points(model, x, statics, inits=list(ready), lead_h=lead_h)
        for init, params in zip(ready, per_init):
            out[init][2][lead_h] = params
    return out


def _static_at(model: torch.nn.Module, static_fixed: np.ndarray, *, init: np.datetime64,
               lead_h: int, records: StationFeatures | None) -> np.ndarray:
    """The model's static inputs at the valid time ``init + lead_h``."""
    return _statics_at(model, static_fixed, inits=[init], lead_h=lead_h, records=records)[0]


def _statics_at(model: torch.nn.Module, static_fixed: np.ndarray, *,
                inits: Sequence[np.datetime64], lead_h: int,
                records: StationFeatures | None) -> np.ndarray:
    """:func:`_static_at` of ``G`` init times, ``[G, C_s, ...]``."""
    times = np.asarray(inits, dtype="datetime64[ns]")
    sin_doy, cos_doy = doy_encodings(times + np.timedelta64(lead_h, "h"))
    return _statics(model.spec.static_names, static_fixed, sin_doy, cos_doy,
                    records=None if records is None else np.stack([records.at(t) for t in times]))


def _lead_fields(loaded: LoadedCheckpoint, inputs: np.ndarray, masked: np.ndarray, *,
                 init: np.datetime64, lead_h: int, target_channels: Sequence[int],
                 static_fixed: np.ndarray, tile: int | None, overlap: int,
                 quantiles: tuple[float, ...], n_members: int, batch_size: int, seed: int,
                 records: StationFeatures | None) -> dict[str, np.ndarray]:
    """The product fields of one init time at one target lead (the model run here)."""
    model, meta = loaded.model, loaded.metadata
    static_all = _static_at(model, static_fixed, init=init, lead_h=lead_h, records=records)
    params = run_model(model, inputs, static_all, init=init, lead_h=lead_h, tile=tile,
                       overlap=overlap, batch_size=batch_size)
    keys = _ecc_keys(seed, [init], lead_h=lead_h, n_leads=model.spec.n_leads)
    fields = _fields({k: v[None] for k, v in params.items()},
                     inputs[None][:, :, list(target_channels)], masks=[masked], keys=keys,
                     distribution=meta.distribution, quantiles=quantiles, n_members=n_members)
    return {k: v[0] for k, v in fields.items()}


def _fields(params: dict[str, np.ndarray], raw: np.ndarray, *, masks: Sequence[np.ndarray],
            keys: np.ndarray, distribution: str,
            quantiles: tuple[float, ...], n_members: int) -> dict[str, np.ndarray]:
    """The product fields of ``G`` init times at one lead from the model's output ``params``
    (arrays ``[G, T, ...]``) and the raw target members ``raw [G, K, T, ...]``: mean, std
    (a censored logistic also loc, scale), quantiles ``[G, Q, ...]`` and ECC members
    ``[G, M, ...]`` (each init time's own draw key of ``keys``), NaN where ``masks[g]``.
    Small fields (stations) take the members of all init times in one call
    (:func:`ecc_members_many`), a large one field by field (the pairwise order is faster
    there); the members are the same either way."""
    fields = {"mean": params["mu"], "std": params["sigma"]}
    if distribution == "censored_logistic":  # the distribution itself (closed-form scores)
        fields["loc"], fields["scale"] = params["loc"], params["scale"]

    def levels() -> np.ndarray:
        return output_quantiles(params, quantiles, level_axis=1, distribution=distribution)

    if n_members and raw[0, 0].size > SORT_POINTS:
        # a grid: the quantiles (numpy, without the GIL) on another core while the members
        # are drawn here
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(levels) if quantiles else None
            each = [output_ecc_members({k: v[g] for k, v in params.items()}, raw[g],
                                       n_out=n_members, member_dim=0, distribution=distribution,
                                       seed=int(key)) for g, key in enumerate(keys)]
            if pending is not None:
                fields["quantiles"] = pending.result()
        # one init time (a grid): no copy of its members
        fields["members"] = each[0][None] if len(each) == 1 else np.stack(each)
    else:
        if quantiles:
            fields["quantiles"] = levels()
        if n_members:
            fields["members"] = output_ecc_members_many(params, raw, n_out=n_members, keys=keys,
                                                        distribution=distribution)
    for g, masked in enumerate(masks):
        if masked.any():
            for arr in fields.values():
                arr[g][..., masked] = np.nan
    return fields


def _ecc_keys(seed: int, inits: Sequence[np.datetime64], *, lead_h: int,
              n_leads: int) -> np.ndarray:
    """The ECC draw keys of init times at one lead (:func:`~models.ecc.ecc_keys`): each
    init time's (and lead's) own, so a product does not depend on which init times are
    predicted together."""
    ns = np.asarray(inits, dtype="datetime64[ns]").astype(np.int64)
    if n_leads > 1:  # each lead's ECC draws its own
        return ecc_keys(seed, ns, lead_h)
    return ecc_keys(seed, ns)


def _point_fields(loaded: LoadedCheckpoint, pipeline: PipelineConfig,
                  prepared: dict[np.datetime64, Prepared], *, quantiles: tuple[float, ...],
                  n_members: int, seed: int
                  ) -> dict[np.datetime64, dict[int, tuple[dict[str, np.ndarray], np.ndarray]]]:
    """What :func:`_post_process` returns for each init time of ``prepared`` (a point
    model's group), computed for the whole group at once by :func:`_fields` (the same
    fields as one init time at a time)."""
    model, meta = loaded.model, loaded.metadata
    inits = list(prepared)
    out: dict[np.datetime64, dict[int, tuple[dict[str, np.ndarray], np.ndarray]]] = {
        init: {} for init in inits}
    if not inits:
        return out
    leads = pipeline.features.target_leads
    channels = (lead_target_channels(meta.channels, meta.targets, leads) if len(leads) > 1
                else (tuple(model.spec.target_channels),))
    for lead_h, tc in zip(leads, channels):
        params = {k: np.stack([prepared[i][2][lead_h][k] for i in inits])
                  for k in prepared[inits[0]][2][lead_h]}
        fields = _fields(params, np.stack([prepared[i][0][:, list(tc)] for i in inits]),
                         masks=[prepared[i][1] for i in inits],
                         keys=_ecc_keys(seed, inits, lead_h=lead_h, n_leads=model.spec.n_leads),
                         distribution=meta.distribution, quantiles=quantiles,
                         n_members=n_members)
        for g, init in enumerate(inits):
            out[init][lead_h] = ({k: v[g] for k, v in fields.items()}, prepared[init][1])
    return out


#: init times read (and written) together by :func:`predict`, at most
READ_GROUP = 16
#: input values (members x channels x grid points) of one read group, at most: a global
#: 0.25 deg grid reads one init time at a time, so memory does not grow with the group
READ_VALUES = 1 << 23


def read_group_size(values_per_init: int) -> int:
    """Init times :func:`predict` reads together when one init time's inputs hold
    ``values_per_init`` values: ``READ_GROUP``, fewer for large grids (at least one)."""
    return max(1, min(READ_GROUP, READ_VALUES // max(1, values_per_init)))


#: init times read together, and run through a point model in one forward pass, up to
#: ``POINT_ROWS`` rows (stations x init times) per pass
POINT_GROUP = 512
POINT_ROWS = 16384


def _run_points(model: torch.nn.Module, inputs: np.ndarray, static: np.ndarray, *,
                inits: Sequence[np.datetime64], lead_h: int) -> list[dict[str, np.ndarray]]:
    """A point model's parameters ``[T, S, 1]`` for each init time of ``inits`` (``inputs
    [G, K, C, S, 1]`` and ``static [G, C_s, S, 1]``) in one forward pass: every station of
    every init time is a row (the pipeline's point batches: ``H = W = 1``, ``x0`` the station
    index, each row its own init time)."""
    n, g = inputs.shape[3], len(inputs)

    def rows(stacked: np.ndarray, axis: int) -> np.ndarray:
        """``[G, ..., S (at axis), ..., 1]`` -> ``[G * S, ...]`` (init-major)."""
        by_point = np.moveaxis(stacked, axis, 1)  # [G, S, ...]
        return np.ascontiguousarray(by_point).reshape(g * n, *by_point.shape[2:])

    init_ns = np.repeat(np.asarray(inits, dtype="datetime64[ns]").astype(np.int64), n)
    lead_ns = int(np.timedelta64(lead_h, "h").astype("timedelta64[ns]").astype(np.int64))
    batch = {
        "inputs": torch.from_numpy(rows(inputs, 3))[..., None],
        "static": torch.from_numpy(rows(static, 2))[..., None],
        "init_time": torch.from_numpy(init_ns),
        "lead_time": torch.full((len(init_ns),), lead_ns),
        "y0": torch.zeros(len(init_ns), dtype=torch.int64),
        "x0": torch.arange(n, dtype=torch.int64).repeat(len(inits)),
    }
    # [G*S, T, 1, 1] -> [G, T, S, 1]: per init time a [T, S, 1] view
    out = {k: v.float().numpy()[:, :, :, 0].reshape(g, n, -1, 1).transpose(0, 2, 1, 3)
           for k, v in model(batch).items()}
    return [{k: v[i] for k, v in out.items()} for i in range(g)]


def _input_reader(ds: xr.Dataset, channels: Sequence[str], store: Any) -> StoreReader | None:
    """The pipeline's chunk reader of ``channels`` (each chunk decoded once, no dask), or
    None where it does not apply (channels not in its per-lead order, an in-memory store)."""
    if isinstance(store, xr.Dataset) or schema.LEAD_TIME not in ds.dims:
        return None
    parsed = [parse_channel(c) for c in channels]
    variables = tuple(dict.fromkeys(v for v, _ in parsed))
    leads = tuple(dict.fromkeys(h for _, h in parsed))
    if channel_names(variables, leads) != tuple(channels):
        return None
    have = set(ds[schema.LEAD_TIME].values.astype("timedelta64[ns]"))
    for name in channels:
        _channel_lead(name, have, store)
    no_analysis = xr.Dataset(coords={schema.TIME: np.array([], dtype="datetime64[ns]")})
    try:
        return StoreReader(store, no_analysis, variables=variables, leads_h=leads, targets=(),
                           forecast_ds=ds, analysis_ds=no_analysis)
    except (EnsppError, KeyError, ValueError):
        return None


def read_inputs_many(ds: xr.Dataset, channels: Sequence[str], *, inits: Sequence[np.datetime64],
                     members: np.ndarray, source: Any = "forecast store",
                     reader: StoreReader | None = None) -> np.ndarray:
    """``[G, K, C, Ny, Nx]``: :func:`read_inputs` of every init time of ``inits`` (through
    ``reader``, :func:`_input_reader`, when given; else each channel read for all of them at
    once through xarray)."""
    if reader is not None:
        out = np.stack([reader.read_inputs(np.datetime64(i, "ns"), members=members, region={})
                        for i in inits])
        return out[..., None] if out.ndim == 4 else out
    leads = set(ds[schema.LEAD_TIME].values.astype("timedelta64[ns]"))
    planes = []
    for name in channels:
        lead = _channel_lead(name, leads, source)
        da = schema.select_variable(ds, parse_channel(name)[0]).sel(
            {schema.INIT_TIME: list(inits), schema.LEAD_TIME: lead, schema.MEMBER: members})
        planes.append(np.asarray(da.transpose(schema.INIT_TIME, schema.MEMBER,
                                              *schema.spatial_dims(ds)).values, dtype=np.float32))
    arr = np.stack(planes, axis=2)
    return arr[..., None] if arr.ndim == 4 else arr


def _channel_lead(name: str, leads: set, source: Any) -> np.timedelta64:
    hours = parse_channel(name)[1]
    lead = np.timedelta64(hours, "h").astype("timedelta64[ns]")
    if lead not in leads:
        have = sorted(int(x / np.timedelta64(1, "h")) for x in leads)
        raise PredictError(f"channel {name}: lead time {hours} h is not in {source} "
                           f"(lead times: {have} h)")
    return lead


def read_inputs(ds: xr.Dataset, channels: Sequence[str], *, init: np.datetime64,
                members: np.ndarray, source: Any = "forecast store") -> np.ndarray:
    """``[K, C, Ny, Nx]`` float32 physical inputs of one init time (stations: ``[K, C, n, 1]``)."""
    leads = set(ds[schema.LEAD_TIME].values.astype("timedelta64[ns]"))
    planes = []
    for name in channels:
        var, hours = parse_channel(name)
        lead = np.timedelta64(hours, "h").astype("timedelta64[ns]")
        if lead not in leads:
            have = sorted(int(x / np.timedelta64(1, "h")) for x in leads)
            raise PredictError(f"channel {name}: lead time {hours} h is not in {source} "
                               f"(lead times: {have} h)")
        da = schema.select_variable(ds, var).sel({schema.INIT_TIME: init, schema.LEAD_TIME: lead,
                                                  schema.MEMBER: members})
        planes.append(np.asarray(da.transpose(schema.MEMBER, *schema.spatial_dims(ds)).values,
                                 dtype=np.float32))
    arr = np.stack(planes, axis=1)
    return arr[..., None] if arr.ndim == 3 else arr


def _raise_nan(inputs: np.ndarray, channels: Sequence[str], *, init: np.datetime64,
               source: Any) -> None:
    bad = [channels[c] for c in range(inputs.shape[1]) if not np.isfinite(inputs[:, c]).all()]
    raise PredictError(f"{source}: inputs {bad} have missing values (NaN) at init time "
                       f"{str(init)[:16]}: values inside the field are missing (NaN in the source, "
                       f"or lost; pipeline.nan_policy 'error', 'mask' fills them)")


def _fill_nan(inputs: np.ndarray, model: torch.nn.Module) -> np.ndarray:
    """The pipeline's ``mask`` policy: NaN inputs become the channel's training mean there."""
    mean = model.norm.channel_mean_local.cpu().numpy()
    return np.where(np.isfinite(inputs), inputs, mean[None]).astype(np.float32)


def _record_features(meta: Any, pipeline: PipelineConfig, ds: xr.Dataset, *, members: np.ndarray,
                     analysis: Any, deterministic: Any) -> StationFeatures | None:
    """The station record features of a model trained with them (None otherwise)."""
    feats = pipeline.features
    if feats.past_error is None and not feats.hres:
        return None
    if not meta.feature_scales:
        raise PredictError("the checkpoint uses station record features but holds no feature "
                           "scales (trained by an older enspp?)")

    def opened(given: Any, configured: Path | None, what: str) -> xr.Dataset | None:
        src = given if given is not None else configured
        if src is None:
            return None
        if not isinstance(src, xr.Dataset) and not Path(src).exists():
            raise FileNotFoundError(f"{what} {src} (used in training) does not exist; pass it "
                                    f"with --{what.split()[0]}")
        return open_dataset(src)

    an = opened(analysis, pipeline.stores.analysis, "analysis store") if feats.past_error else None
    det = opened(deterministic, pipeline.stores.deterministic, "deterministic store") if feats.hres else None
    return StationFeatures(ds, an, variable=feats.targets[0],
                           lead_time=np.timedelta64(feats.target_lead_time, "h").astype("timedelta64[ns]"),
                           members=members, features=feats, deterministic=det,
                           scales=FeatureScales.from_dict(meta.feature_scales))


def _static(names: Sequence[str], fixed: np.ndarray, sin_doy: float, cos_doy: float, *,
            records: np.ndarray | None = None) -> np.ndarray:
    """The static planes ``names`` of one init time; ``records``: ``[F, S]`` station record
    features in the order of :func:`pipeline.station_features.feature_names`."""
    return _statics(names, fixed, np.array([sin_doy]), np.array([cos_doy]),
                    records=None if records is None else np.asarray(records)[None])[0]


def _statics(names: Sequence[str], fixed: np.ndarray, sin_doy: np.ndarray, cos_doy: np.ndarray,
             *, records: np.ndarray | None = None) -> np.ndarray:
    """The static planes ``names`` of ``G`` init times, ``[G, C_s, ...]``: ``fixed``
    ``[C_fixed, ...]`` the same for all, ``sin_doy``/``cos_doy`` ``[G]``, ``records``
    ``[G, F, S]`` station record features (order of
    :func:`pipeline.station_features.feature_names`)."""
    shape, g = fixed.shape[1:], len(sin_doy)
    ones = (1,) * len(shape)
    planes = {n: np.broadcast_to(p, (g, *shape)) for n, p in zip(STATIC_NAMES, fixed)}
    for n, v in (("sin_doy", sin_doy), ("cos_doy", cos_doy)):
        planes[n] = np.broadcast_to(np.asarray(v, np.float32).reshape(g, *ones), (g, *shape))
    if records is not None:
        record_names = [n for n in names if n in ALL_RECORD_FEATURES]
        planes.update({n: records[:, i, :, None] for i, n in enumerate(record_names)})
    unknown = [n for n in names if n not in planes]
    if unknown:
        raise PredictError(f"the model uses static features {unknown} that predict cannot "
                           f"build (known: {list(STATIC_NAMES)} and the station record "
                           f"features {list(ALL_RECORD_FEATURES)})")
    if not names:
        return np.zeros((g, 0, *shape), np.float32)
    return np.stack([planes[n] for n in names], axis=1).astype(np.float32)


def run_model(model: torch.nn.Module, inputs: np.ndarray, static: np.ndarray, *,
              init: np.datetime64, lead_h: int, tile: int | None, overlap: int,
              batch_size: int = 4) -> dict[str, np.ndarray]:
    """The model's parameters (``mu``, ``sigma``, ...) ``[T, Ny, Nx]`` for one init time, by
    (overlapping, blended) tiles, ``batch_size`` tiles per forward pass.  A point model
    (``inputs [K, C, n_stations, 1]``) gets every station at once, one row each (the
    pipeline's point batches: ``H = W = 1``, ``x0`` the station index)."""
    ny, nx = inputs.shape[-2:]
    if model.spec.is_point:
        return _run_points(model, inputs[None], static[None], inits=[init], lead_h=lead_h)[0]
    slices = tile_slices((ny, nx), tile=None if model.spec.is_point else tile, overlap=overlap)
    x, s = torch.from_numpy(inputs), torch.from_numpy(static)
    init_ns = int(init.astype("datetime64[ns]").astype(np.int64))
    lead_ns = int(np.timedelta64(lead_h, "h").astype("timedelta64[ns]").astype(np.int64))
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(slices), batch_size):
        group = slices[start:start + batch_size]
        n = len(group)
        batch = {
            "inputs": torch.stack([x[..., sy, sx] for sy, sx in group]),
            "static": torch.stack([s[:, sy, sx] for sy, sx in group]),
            "init_time": torch.full((n,), init_ns, dtype=torch.int64),
            "lead_time": torch.full((n,), lead_ns, dtype=torch.int64),
            "y0": torch.tensor([sy.start for sy, _ in group], dtype=torch.int64),
            "x0": torch.tensor([sx.start for _, sx in group], dtype=torch.int64),
        }
        for key, val in model(batch).items():
            outs.setdefault(key, []).extend(v.numpy() for v in val.float())
    if len(slices) == 1:
        return {k: v[0] for k, v in outs.items()}
    return {k: stitch(v, slices, shape=(ny, nx), overlap=overlap) for k, v in outs.items()}
