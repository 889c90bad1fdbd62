"""Open the systems of an evaluation as xarray and align them with the truth.

Every system becomes, per variable, a :class:`SystemField`: either an ensemble
``(init_time, lead_time, member, *space)`` or a Gaussian ``mu``/``sigma`` pair
``(init_time, lead_time, *space)``, lazily backed by its store.

* ensembles come from forecast stores (``variable`` via :func:`data.schema.select_variable`)
  or from the ECC members ``v`` of a product (a Zarr store, or the NetCDF file of
  ``predict.fmt: netcdf``);
* ``raw_subset`` is K members (or a list) of the forecast store;
* Gaussian products are ``v_mean``/``v_std`` of a product store (ARCHITECTURE.md);
* the synthetic world's oracle is ``<var>_mu``/``<var>_sigma`` of ``oracle.zarr``;
* a ``censored_logistic`` product holding the latent logistic's ``v_loc``/``v_scale`` is
  scored in closed form (CRPS of the zero-censored logistic; its ``v_mean``/``v_std`` for the
  other metrics); one without them (written by an older enspp) through its ECC members;
* station data (a ``station`` dim) are scored like a grid of one column.

The truth at ``valid_time = init_time + lead_time`` is looked up in the analysis ``time``;
a valid time the analysis lacks, or a different grid, is an :class:`AlignmentError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from enspp.data.errors import EnsppError
from enspp.data.schema import (
    INIT_TIME,
    LATITUDE,
    LEAD_TIME,
    LONGITUDE,
    MEMBER,
    STATION,
    TIME,
    select_variable,
    spatial_dims,
)
from enspp.evaluation.aggregate import valid_time_positions
from enspp.evaluation.config import EvaluateConfig, Period, SystemConfig


class AlignmentError(EnsppError):
    """Forecast and truth (or two systems) do not share times or grid points."""


class SystemDataError(EnsppError):
    """A system's store lacks what its configuration asks for."""


@dataclass(frozen=True)
class SystemField:
    """One variable of one system: an ensemble or a Gaussian (mu, sigma)."""

    key: str
    variable: str
    kind: Literal["ensemble", "gaussian", "censored_logistic"]
    ensemble: xr.DataArray | None = None
    #: the predictive mean and std (of a censored distribution: of the censored variable)
    mu: xr.DataArray | None = None
    sigma: xr.DataArray | None = None
    #: ``censored_logistic``: the latent logistic's location and scale
    loc: xr.DataArray | None = None
    scale: xr.DataArray | None = None

    @property
    def template(self) -> xr.DataArray:
        return self.ensemble if self.kind == "ensemble" else self.mu

    def _map(self, fn) -> "SystemField":
        def sub(da: xr.DataArray | None) -> xr.DataArray | None:
            return None if da is None else fn(da)
        return SystemField(self.key, self.variable, self.kind, sub(self.ensemble), sub(self.mu),
                           sub(self.sigma), sub(self.loc), sub(self.scale))

    def isel(self, indexers: dict) -> "SystemField":
        return self._map(lambda da: da.isel({k: v for k, v in indexers.items() if k in da.dims}))

    def sel(self, indexers: dict) -> "SystemField":
        return self._map(lambda da: da.sel({k: v for k, v in indexers.items() if k in da.dims}))

    def mean(self) -> xr.DataArray:
        return self.ensemble.mean(MEMBER) if self.kind == "ensemble" else self.mu

    def spread(self) -> xr.DataArray:
        return self.ensemble.std(MEMBER, ddof=1) if self.kind == "ensemble" else self.sigma

    def load(self) -> "SystemField":
        return self._map(lambda da: da.load())


def open_dataset(path: Path) -> xr.Dataset:
    """Open a store lazily: an enspp store through ``data.store.open_store`` (only its
    complete records), a product through :func:`models.product.open_product` (only the init
    times predict marked complete), any other Zarr (the oracle) with ``xr.open_zarr``, a NetCDF
    file (a product of ``predict.fmt: netcdf``) as predict's products are read back
    (:func:`models.product.open_product`)."""
    import warnings

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"store not found: {path}")
    if path.is_file():
        from enspp.models.product import open_product
        from enspp.models.product_file import is_netcdf

        if not is_netcdf(path):
            raise SystemDataError(f"{path}: a file that is not NetCDF (a system is a Zarr store "
                                  "or a NetCDF product)")
        return open_product(path)
    try:
        from enspp.data.store import is_store, open_store
    except ImportError:  # pragma: no cover - data.store is part of the project
        is_store = open_store = None
    if is_store is not None and is_store(path):
        return open_store(path)
    from enspp.models.product import PRODUCT_KIND, is_product_store, open_product

    if is_product_store(path):  # by its root attributes, before any array is read: only the
        return open_product(path)  # init times marked complete are scored
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        try:
            ds = xr.open_zarr(path, consolidated=None)
        except (OSError, ValueError, KeyError) as e:
            raise SystemDataError(f"{path}: cannot be opened as a Zarr store ({e})") from None
    if ds.attrs.get("enspp_kind") == PRODUCT_KIND:  # became a product since (a first write)
        return open_product(path)
    return ds


def system_field(ds: xr.Dataset, system: SystemConfig, variable: str) -> SystemField:
    """Pick ``variable`` of ``system`` out of its opened store ``ds``."""
    where = f"system {system.key!r} ({system.path})"
    if system.name == "oracle":
        mu_name, sd_name = f"{variable}_mu", f"{variable}_sigma"
        return _gaussian(ds, system, variable, mu_name, sd_name, where)
    if system.type == "gaussian":
        return _gaussian(ds, system, variable, f"{variable}_mean", f"{variable}_std", where)
    if system.type == "censored_logistic" and f"{variable}_loc" in ds.data_vars:
        g = _gaussian(ds, system, variable, f"{variable}_mean", f"{variable}_std", where)
        missing = [n for n in (f"{variable}_scale",) if n not in ds.data_vars]
        if missing:
            raise SystemDataError(f"{where}: variables {missing} needed for {variable!r} are missing")
        return SystemField(system.key, variable, "censored_logistic", mu=g.mu, sigma=g.sigma,
                           loc=ds[f"{variable}_loc"].rename(variable),
                           scale=ds[f"{variable}_scale"].rename(variable))
    try:
        da = select_variable(ds, variable)
    except KeyError as e:
        raise SystemDataError(f"{where}: {e.args[0]}") from None
    if MEMBER not in da.dims:
        raise SystemDataError(f"{where}: variable {variable!r} has no {MEMBER!r} dim "
                              f"(dims {da.dims}); for a Gaussian product set type: gaussian")
    da = _select_members(da, system.members, where)
    return SystemField(system.key, variable, "ensemble", ensemble=da)


def _gaussian(ds: xr.Dataset, system: SystemConfig, variable: str, mu_name: str, sd_name: str,
              where: str) -> SystemField:
    missing = [n for n in (mu_name, sd_name) if n not in ds.data_vars]
    if missing:
        raise SystemDataError(f"{where}: variables {missing} needed for {variable!r} are missing "
                              f"(available: {sorted(map(str, ds.data_vars))})")
    return SystemField(system.key, variable, "gaussian", mu=ds[mu_name].rename(variable),
                       sigma=ds[sd_name].rename(variable))


def _select_members(da: xr.DataArray, members: int | list[int] | None, where: str) -> xr.DataArray:
    if members is None:
        return da
    from enspp.pipeline.members import first_members

    have = [int(m) for m in da[MEMBER].values]
    if isinstance(members, int):
        try:
            wanted = first_members(have, members).tolist()
        except ValueError as e:
            raise SystemDataError(f"{where}: {e}") from None
    else:
        wanted = [int(m) for m in members]
    bad = [m for m in wanted if m not in have]
    if bad:
        raise SystemDataError(f"{where}: members {bad} are out of range: the store holds members "
                              f"{min(have)}..{max(have)}")
    return da.sel({MEMBER: wanted})


def product_system(path: str | Path, *, label: str | None = None) -> SystemConfig:
    """A product store as an evaluation system: named after its model's method
    (``models.base.system_name``: ``emos_global`` -> ``emos``) and typed by its distribution
    (a ``censored_logistic`` product is scored in closed form); ``label`` keys it in the
    results (default: the system name)."""
    from enspp.models.base import system_name

    ds = open_dataset(Path(path))
    model = ds.attrs.get("model_name")
    if model is None:
        raise SystemDataError(f"{path}: not a product store of enspp predict (no 'model_name' attribute)")
    name = system_name(str(model))
    distribution = str(ds.attrs.get("distribution", "gaussian"))
    return SystemConfig(name=name, label=label if label not in (None, name) else None, path=Path(path),
                        type="censored_logistic" if distribution == "censored_logistic" else "gaussian")


def open_systems(config: EvaluateConfig) -> dict[str, dict[str, SystemField]]:
    """``{system key: {variable: SystemField}}`` for every configured system and variable."""
    cache: dict[Path, xr.Dataset] = {}
    out: dict[str, dict[str, SystemField]] = {}
    for system in config.systems:
        if system.path not in cache:
            cache[system.path] = open_dataset(system.path)
        ds = cache[system.path]
        variables = system.variables or config.variables
        out[system.key] = {v: system_field(ds, system, v) for v in variables}
    return out


def open_truth(path: Path, variables: list[str]) -> dict[str, xr.DataArray]:
    """The analysis fields ``(time, *space)`` of ``variables``."""
    ds = open_dataset(path)
    if TIME not in ds.dims:
        raise AlignmentError(f"truth {path}: expected an analysis store with a {TIME!r} dim, "
                             f"found dims {tuple(ds.dims)}")
    out = {}
    for v in variables:
        try:
            out[v] = select_variable(ds, v)
        except KeyError as e:
            raise SystemDataError(f"truth {path}: {e.args[0]}") from None
    return out


def select_period(field: SystemField, period: Period | None,
                  lead_hours: list[int] | None) -> SystemField:
    """Restrict to init dates in ``period`` (both ends included) and to ``lead_hours``."""
    tmpl = field.template
    idx: dict[str, np.ndarray] = {}
    if period is not None:
        init = tmpl[INIT_TIME].values.astype("datetime64[D]")
        keep = (init >= np.datetime64(period.start)) & (init <= np.datetime64(period.end))
        idx[INIT_TIME] = np.flatnonzero(keep)
    if lead_hours is not None:
        leads = (tmpl[LEAD_TIME].values / np.timedelta64(1, "h")).astype(float)
        missing = [h for h in lead_hours if not np.any(np.isclose(leads, h))]
        if missing:
            raise AlignmentError(f"system {field.key!r}, {field.variable!r}: lead times {missing} h "
                                 f"are not in the store (available: {leads.tolist()} h)")
        idx[LEAD_TIME] = np.array([int(np.flatnonzero(np.isclose(leads, h))[0]) for h in lead_hours])
    return field.isel(idx) if idx else field


def recent_period(init_times: np.ndarray, lead_times: np.ndarray, truth_times: np.ndarray, *,
                  days: int) -> Period:
    """The last ``days`` init dates ending at the latest of ``init_times`` whose valid times
    (the init time plus each of ``lead_times``) the truth holds, both ends included."""
    init = np.asarray(init_times, dtype="datetime64[ns]")
    valid = init[:, None] + np.asarray(lead_times, dtype="timedelta64[ns]")[None, :]
    ok = np.isin(valid, np.asarray(truth_times, dtype="datetime64[ns]")).all(axis=1)
    if not ok.any():
        raise AlignmentError("evaluate.recent_days: the truth holds the valid times of no init "
                             "time; ingest the analyses first")
    end = init[ok].max().astype("datetime64[D]")
    start = end - np.timedelta64(days - 1, "D")
    return Period(start=start.astype(object), end=end.astype(object))


def recent_window(truth: Path, times: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                  days: int) -> Period | None:
    """``evaluate.recent_days`` as a period: per variable of ``times`` (its init times and
    the lead times evaluated), the last ``days`` init dates whose valid times the ``truth``
    store holds (:func:`recent_period`); the earliest ending of them, so that every variable
    is verified.  ``None`` when ``times`` names no variable.  What the evaluate flow scores
    and what predict starts a new product with."""
    if not times:
        return None
    fields = open_truth(Path(truth), list(times))
    periods = [recent_period(init, leads, fields[v][TIME].values, days=days)
               for v, (init, leads) in times.items()]
    return min(periods, key=lambda p: p.end)


def common_init_times(fields: list[SystemField]) -> np.ndarray:
    """Init times every system has (paired comparison needs the same dates)."""
    common: np.ndarray | None = None
    for f in fields:
        t = f.template[INIT_TIME].values
        common = t if common is None else np.intersect1d(common, t)
    if common is None or common.size == 0:
        names = sorted({f.key for f in fields})
        raise AlignmentError(f"systems {names} share no init time in the evaluation period")
    return common


def check_same_grid(a: xr.DataArray, b: xr.DataArray, *, what: str) -> None:
    """Raise :class:`AlignmentError` unless the spatial coordinates of ``a`` and ``b`` agree."""
    for dim in spatial_dims(a):
        if dim not in b.dims:
            raise AlignmentError(f"{what}: dim {dim!r} is missing from one side")
        va, vb = a[dim].values, b[dim].values
        if va.shape != vb.shape or (va.dtype.kind == "f" and not np.allclose(va, vb, atol=1e-6)) \
                or (va.dtype.kind != "f" and not np.array_equal(va, vb)):
            raise AlignmentError(f"{what}: {dim!r} differs ({va.size} points "
                                 f"{_span(va)} vs {vb.size} points {_span(vb)}); regrid first")


def _span(v: np.ndarray) -> str:
    return f"{v.min()}..{v.max()}" if v.size else "empty"


def _valid_positions(truth: xr.DataArray, template: xr.DataArray, *,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the truth's ``time`` of the forecast's valid times (see
    :func:`evaluation.aggregate.valid_time_positions`); raises :class:`AlignmentError`
    listing the first valid times the truth lacks, or if the grids differ."""
    check_same_grid(template, truth, what=what)
    have = truth[TIME].values
    positions, index, missing = valid_time_positions(have, template[INIT_TIME].values,
                                                     template[LEAD_TIME].values)
    if missing.size:
        shown = ", ".join(str(np.datetime_as_string(t, unit="h")) for t in missing[:3])
        raise AlignmentError(f"{what}: {missing.size} valid times (init_time + lead_time) are not "
                             f"in the truth's 'time' ({_span(have)}): {shown}"
                             f"{' ...' if missing.size > 3 else ''}")
    return positions, index


def truth_at_valid_time(truth: xr.DataArray, template: xr.DataArray, *, what: str) -> xr.DataArray:
    """The truth on the forecast's ``(init_time, lead_time)`` by ``valid_time = init + lead``
    (lazy on dask).  Raises :class:`AlignmentError` listing the first valid times missing
    from the analysis."""
    positions, index = _valid_positions(truth, template, what=what)
    at = xr.DataArray(positions[index], dims=(INIT_TIME, LEAD_TIME),
                      coords={INIT_TIME: template[INIT_TIME].values, LEAD_TIME: template[LEAD_TIME].values})
    out = truth.isel({TIME: at}).drop_vars(TIME, errors="ignore")
    for dim in (LATITUDE, LONGITUDE):
        if dim in out.dims and dim in template.dims:
            out = out.assign_coords({dim: template[dim].values})
    return out.transpose(INIT_TIME, LEAD_TIME, *[d for d in out.dims if d not in (INIT_TIME, LEAD_TIME)])


def truth_values(truth: xr.DataArray, template: xr.DataArray, *,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """The truth at the forecast's distinct valid times as numpy ``(time, lat, lon)`` (station
    data: ``(time, station, 1)``), read in one request, and ``index[i, l]``, the row of
    ``init_i + lead_l`` in it."""
    positions, index = _valid_positions(truth, template, what=what)
    space = spatial_dims(template)
    values = truth.isel({TIME: positions}).transpose(TIME, *space).values
    return (values[..., None] if space == (STATION,) else values), index
