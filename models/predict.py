"""``predict(...)``: apply a checkpoint to a forecast store and write a product store.

Per target ``v`` the product holds (ARCHITECTURE.md, "Models -> products contract")::

    v(init_time, lead_time, member, latitude, longitude)      M ECC members
    v_mean, v_std(init_time, lead_time, latitude, longitude)  predictive mean and std
    v_quantiles(init_time, lead_time, quantile, latitude, longitude)

with CF attributes and provenance (checkpoint sha256, input members, model version,
distribution, CRPS estimator).  Memory stays bounded: one init time is read, post-processed
(by overlapping tiles when the grid is larger than the training patch) and written at a time.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from data import schema
from models.checkpoint import LoadedCheckpoint, check_store_compatible, load_checkpoint
from models.ecc import output_ecc_members, output_quantiles
from pipeline.align import open_dataset
from pipeline.config import PipelineConfig
from pipeline.features import STATIC_NAMES, doy_encoding, parse_channel, static_fields
from pipeline.members import choose_members
from pipeline.tiles import stitch, tile_slices


class PredictError(ValueError):
    """The forecast store cannot be post-processed as asked; the message names the problem."""


def predict(checkpoint: str | Path, forecast_store: str | Path | xr.Dataset, *,
            out: str | Path, init_times: Sequence[Any] | None = None,
            quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), n_members: int = 10,
            fmt: str = "zarr", static: str | Path | xr.Dataset | None = None,
            batch_size: int = 4, seed: int = 0, model_version: str | None = None) -> Path:
    """Post-process ``forecast_store`` with ``checkpoint``; write and return the product ``out``.

    ``init_times`` (default: all in the store) selects init times; ``n_members`` is M, the
    number of ECC members written (may exceed K); ``fmt`` is ``zarr`` or ``netcdf``;
    ``static`` overrides the static-field file recorded in the checkpoint's pipeline config.
    """
    if fmt not in ("zarr", "netcdf"):
        raise PredictError(f"fmt {fmt!r}: expected 'zarr' or 'netcdf'")
    if n_members < 1:
        raise PredictError(f"n_members must be >= 1, got {n_members}")
    loaded = load_checkpoint(checkpoint)
    meta = loaded.metadata
    pipeline = PipelineConfig.model_validate(meta.pipeline)
    source = forecast_store if not isinstance(forecast_store, xr.Dataset) else "forecast store"
    ds = open_dataset(forecast_store)
    check_store_compatible(meta, ds, source=source)
    members = choose_members(ds[schema.MEMBER].values, config=pipeline.members,
                             rng=np.random.default_rng(seed))
    inits = _select_inits(ds, init_times, source=source)
    lead_h = pipeline.features.target_lead_time
    static_fixed = static_fields(ds, _open_static(static, pipeline), regrid=pipeline.regrid)
    tile = pipeline.batches.tile_size or (meta.patch_shape[0] if meta.patch_shape else None)
    overlap = min(pipeline.batches.tile_overlap, (tile - 1) // 2) if tile else 0
    out = Path(out)
    version = model_version or f"{meta.spec['name']}-{loaded.sha256[:12]}"
    attrs = _provenance(loaded, members=members, source=source, version=version,
                        n_members=n_members)
    zarr_path = out if fmt == "zarr" else Path(tempfile.mkdtemp(prefix="enspp-predict-")) / "p.zarr"
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nan_policy = pipeline.nan_policy
    with torch.inference_mode():
        for i, init in enumerate(inits):
            inputs = _inputs(ds, meta.channels, init=init, members=members, source=source)
            masked = ~np.isfinite(inputs).all(axis=(0, 1))
            if masked.any():
                if nan_policy == "error":
                    _raise_nan(inputs, meta.channels, init=init, source=source)
                inputs = _fill_nan(inputs, loaded.model)
            sin_doy, cos_doy = doy_encoding(init + np.timedelta64(lead_h, "h"))
            static_all = _static(loaded.model.spec.static_names, static_fixed, sin_doy, cos_doy)
            mu, sigma, extra = _run_model(loaded.model, inputs, static_all, init=init,
                                          lead_h=lead_h, tile=tile, overlap=overlap,
                                          batch_size=batch_size)
            raw = inputs[:, list(loaded.model.spec.target_channels)]
            params = {"mu": mu, "sigma": sigma, **extra}
            fields = {"mean": mu, "std": sigma,
                      "quantiles": output_quantiles(params, quantiles,
                                                    distribution=meta.distribution),
                      "members": output_ecc_members(params, raw, n_out=n_members, member_dim=0,
                                                    distribution=meta.distribution, seed=rng)}
            for arr in fields.values():
                arr[..., masked] = np.nan
            step = product_dataset(fields, targets=meta.targets, init=init, lead_h=lead_h,
                                   quantiles=quantiles, grid=ds, attrs=attrs)
            if i == 0:
                step.to_zarr(zarr_path, mode="w", consolidated=True)
            else:
                step.to_zarr(zarr_path, append_dim=schema.INIT_TIME, consolidated=True)
    if fmt == "netcdf":
        with xr.open_zarr(zarr_path) as product:
            product.to_netcdf(out)
        shutil.rmtree(zarr_path.parent, ignore_errors=True)
    return out


def _select_inits(ds: xr.Dataset, init_times: Sequence[Any] | None, *,
                  source: Any) -> list[np.datetime64]:
    have = ds[schema.INIT_TIME].values.astype("datetime64[ns]")
    if init_times is None:
        if have.size == 0:
            raise PredictError(f"{source} holds no init times")
        return list(have)
    wanted = [np.datetime64(pd.Timestamp(t).to_datetime64(), "ns") for t in init_times]
    missing = [str(t) for t in wanted if t not in set(have)]
    if missing:
        raise PredictError(f"init times {missing} are not in {source} "
                           f"({str(have[0])[:16]}..{str(have[-1])[:16]}, {have.size} init times)")
    return wanted


def _open_static(static: str | Path | xr.Dataset | None,
                 pipeline: PipelineConfig) -> xr.Dataset | None:
    if isinstance(static, xr.Dataset):
        return static
    path = static if static is not None else pipeline.stores.static
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"static fields {path} (used in training) do not exist; pass "
                                f"the file with --static")
    return xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)


def _inputs(ds: xr.Dataset, channels: Sequence[str], *, init: np.datetime64,
            members: np.ndarray, source: Any) -> np.ndarray:
    """``[K, C, Ny, Nx]`` float32 physical inputs of one init time."""
    leads = ds[schema.LEAD_TIME].values
    planes = []
    for name in channels:
        var, hours = parse_channel(name)
        lead = np.timedelta64(hours, "h").astype("timedelta64[ns]")
        if lead not in set(leads):
            raise PredictError(f"channel {name}: lead time {hours} h is not in {source} "
                               f"(lead times: {[int(x / np.timedelta64(1, 'h')) for x in leads]} h)")
        da = schema.select_variable(ds, var).sel({schema.INIT_TIME: init, schema.LEAD_TIME: lead,
                                                  schema.MEMBER: members})
        planes.append(np.asarray(da.transpose(schema.MEMBER, *schema.spatial_dims(ds)).values,
                                 dtype=np.float32))
    arr = np.stack(planes, axis=1)
    return arr[..., None] if arr.ndim == 3 else arr  # stations: [K, C, n, 1]


def _raise_nan(inputs: np.ndarray, channels: Sequence[str], *, init: np.datetime64,
               source: Any) -> None:
    bad = [channels[c] for c in range(inputs.shape[1]) if not np.isfinite(inputs[:, c]).all()]
    raise PredictError(f"{source}: NaN in input {bad} at init time {str(init)[:16]} "
                       f"(pipeline nan_policy 'error'; set 'mask' to fill them)")


def _fill_nan(inputs: np.ndarray, model: torch.nn.Module) -> np.ndarray:
    """The pipeline's ``mask`` policy: NaN inputs become the channel's training mean there."""
    mean = model.norm.channel_mean_local.cpu().numpy()
    return np.where(np.isfinite(inputs), inputs, mean[None]).astype(np.float32)


def _static(names: Sequence[str], fixed: np.ndarray, sin_doy: float, cos_doy: float) -> np.ndarray:
    planes = dict(zip(STATIC_NAMES, [*fixed, np.full(fixed.shape[1:], sin_doy, np.float32),
                                     np.full(fixed.shape[1:], cos_doy, np.float32)]))
    unknown = [n for n in names if n not in planes]
    if unknown:
        raise PredictError(f"the model uses static features {unknown} that predict cannot "
                           f"build (known: {list(STATIC_NAMES)})")
    return np.stack([planes[n] for n in names]).astype(np.float32) if names else \
        np.zeros((0, *fixed.shape[1:]), np.float32)


def _run_model(model: torch.nn.Module, inputs: np.ndarray, static: np.ndarray, *,
               init: np.datetime64, lead_h: int, tile: int | None, overlap: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``mu``, ``sigma`` ``[T, Ny, Nx]`` (and further distribution parameters), by tiles."""
    ny, nx = inputs.shape[-2:]
    point = model.spec.is_point
    slices = tile_slices((ny, nx), tile=None if point else tile, overlap=overlap)
    x = torch.from_numpy(inputs)
    s = torch.from_numpy(static)
    init_ns = int(init.astype("datetime64[ns]").astype(np.int64))
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(slices), batch_size):
        group = slices[start:start + batch_size]
        batch = {
            "inputs": torch.stack([x[..., sy, sx] for sy, sx in group]),
            "static": torch.stack([s[:, sy, sx] for sy, sx in group]),
            "init_time": torch.full((len(group),), init_ns, dtype=torch.int64),
            "lead_time": torch.full((len(group),), lead_h * 3_600_000_000_000, dtype=torch.int64),
            "y0": torch.tensor([sy.start for sy, _ in group], dtype=torch.int64),
            "x0": torch.tensor([sx.start for _, sx in group], dtype=torch.int64),
        }
        result = model(batch)
        for key, val in result.items():
            outs.setdefault(key, []).extend(v.numpy() for v in val.float())
    fields = {k: stitch(v, slices, shape=(ny, nx), overlap=overlap) for k, v in outs.items()}
    mu, sigma = fields.pop("mu"), fields.pop("sigma")
    return mu, sigma, fields


def _provenance(loaded: LoadedCheckpoint, *, members: np.ndarray, source: Any, version: str,
                n_members: int) -> dict[str, Any]:
    meta = loaded.metadata
    return {
        "Conventions": "CF-1.8",
        "enspp_kind": "product",
        "title": f"post-processed ensemble forecast ({meta.spec['name']})",
        "history": f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}: enspp predict",
        "source": str(source),
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
        "training_data_hash": meta.data_hash or "",
    }


def product_dataset(fields: dict[str, np.ndarray], *, targets: Sequence[str], init: np.datetime64,
                    lead_h: int, quantiles: Sequence[float], grid: xr.Dataset,
                    attrs: dict[str, Any]) -> xr.Dataset:
    """One init time of the product store: per target ``v``, ``v`` (ECC members), ``v_mean``,
    ``v_std`` and ``v_quantiles``, CF attributes, provenance in ``attrs``.

    ``fields``: ``mean``/``std`` ``[T, Ny, Nx]``, ``quantiles`` ``[Q, T, Ny, Nx]``, ``members``
    ``[M, T, Ny, Nx]`` (stations: ``Nx = 1``).
    """
    space = schema.spatial_dims(grid)
    coords: dict[str, Any] = {
        schema.INIT_TIME: [np.datetime64(init, "ns")],
        schema.LEAD_TIME: [np.timedelta64(lead_h, "h").astype("timedelta64[ns]")],
        schema.MEMBER: np.arange(fields["members"].shape[0]),
        "quantile": ("quantile", np.asarray(quantiles, dtype=np.float64),
                     {"long_name": "probability level of the predictive distribution",
                      "units": "1"}),
    }
    for dim in space:
        coords[dim] = grid[dim]
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
        data[name] = ((*head, schema.MEMBER, *space),
                      squeeze(fields["members"][None, None, :, t]),
                      {**base, "long_name": f"{label}, calibrated ECC members",
                       "ensemble_method": "ensemble copula coupling"})
        data[f"{name}_mean"] = ((*head, *space), squeeze(fields["mean"][None, None, t]),
                                {**base, "long_name": f"{label}, predictive mean",
                                 "cell_methods": "member: mean"})
        data[f"{name}_std"] = ((*head, *space), squeeze(fields["std"][None, None, t]),
                               {**base, "long_name": f"{label}, predictive standard deviation",
                                "cell_methods": "member: standard_deviation"})
        data[f"{name}_quantiles"] = ((*head, "quantile", *space),
                                     squeeze(fields["quantiles"][None, None, :, t]),
                                     {**base, "long_name": f"{label}, predictive quantiles"})
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    return ds.chunk({schema.INIT_TIME: 1})
