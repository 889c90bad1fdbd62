"""EMOS (non-homogeneous regression, Gneiting et al. 2005), global and local, and its exact fit.

Per target ``t`` with raw ensemble mean ``m`` and std ``s`` of the target's channel::

    mu      = m + std_t * alpha + beta * (m - mean_t)          (linear in m)
    sigma^2 = exp(2 delta) * s^2 + std_t^2 * softplus(gamma)   (linear in s^2)

``alpha = beta = delta = 0`` and ``gamma = -18`` at initialisation, so an untrained EMOS is the
raw ensemble (to ~1e-6 relative). ``emos_global`` has one parameter set per target;
``emos_local`` one per target and grid point (or station), looked up with the batch's
``y0``/``x0`` (``mean_t``/``std_t`` are then the local target statistics for the slope, the
global std for the offset and the variance floor). ``emos_lagged`` is ``emos_global`` whose
mean is also linear in the spec's static features (e.g. past forecast errors at a station).
The option ``season`` (``none`` | ``doy``) adds day-of-year terms (``sin_doy``/``cos_doy``
static features): ``mu += std_t * (a_s sin + a_c cos)`` and ``sigma^2`` scaled by
``exp(d_s sin + d_c cos)``, one set per parameter group, zero at initialisation.

:func:`fit_emos` fits any of them *exactly*: the minimum of the mean closed-form CRPS over the
training data, by a damped Newton method on the independent parameter groups (one per target,
or per target and grid point/station), started from a closed-form least-squares solution, so
neither a large bias nor a collapsed spread slows it down (an Adam fit from the raw ensemble
needs thousands of steps there and early stopping ends it long before the minimum).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from enspp.models.base import (
    _LOGISTIC_SCALE_PER_STD,
    ModelSpec,
    ModelSpecError,
    PostProcessor,
    ensemble_moments,
)
from enspp.models.losses import distribution_crps
from enspp.models.normalize import gather_patch

_GAMMA_INIT = -18.0
_DEBUG = False
#: iterations over which fit_emos's convergence test looks back
_WINDOW = 3
#: ``season`` options of the EMOS models
SEASONS: tuple[str, ...] = ("none", "doy")
#: the static features the ``doy`` season reads
DOY_FEATURES: tuple[str, str] = ("sin_doy", "cos_doy")
#: keys of a fit chunk (:func:`emos_chunk`): raw moments instead of the members
CHUNK_KEYS: tuple[str, ...] = ("m", "s", "target", "y0", "x0")


class _EMOS(PostProcessor):
    local: bool = False
    DEFAULTS = {"season": "none"}

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if self.options["season"] not in SEASONS:
            raise ModelSpecError(f"option season={self.options['season']!r}: expected one of {list(SEASONS)}")
        self.season_index: tuple[int, ...] = ()
        if self.options["season"] == "doy":
            missing = [f for f in DOY_FEATURES if f not in spec.static_names]
            if missing:
                raise ModelSpecError(f"option season='doy' needs the static features {missing} "
                                     f"(spec.static_names is {list(spec.static_names)})")
            self.season_index = tuple(spec.static_names.index(f) for f in DOY_FEATURES)
        n_t = len(spec.targets) * spec.n_leads  # several target leads: lead-major rows
        n_p = 4 + 2 * len(self.season_index)
        shape = (n_p, n_t, *spec.grid_shape) if self.local else (n_p, n_t, 1, 1)
        init = torch.zeros(shape)
        init[3] = _GAMMA_INIT
        #: rows: alpha, beta, delta, gamma (then with season=doy: a_sin, a_cos, d_sin, d_cos)
        self.params = nn.Parameter(init)

    def _params(self, batch: Mapping[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        """``[P, B or 1, T, H or 1, W or 1]`` (several target leads: each sample's lead's)."""
        if not self.local:
            p = self.params[:, None]
        else:
            n_p, n_t = self.params.shape[:2]
            table = self.params.reshape(n_p * n_t, *self.params.shape[2:])
            patch = gather_patch(table, batch["y0"], batch["x0"], h, w, point=self.spec.is_point)
            p = patch.reshape(patch.shape[0], n_p, n_t, h, w).transpose(0, 1)
        if self.spec.n_leads > 1:
            p = torch.stack([self.by_lead(q, batch) for q in p])
        return p

    def _target_mean(self, batch: Mapping[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        if not self.local:
            return self.norm.target_mean[None, :, None, None]
        return self.norm.lookup("target_mean_local", batch["y0"], batch["x0"], h, w)

    def _offset(self, batch: Mapping[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        """The mean's offset in target stds: ``alpha`` (``emos_lagged`` adds its features' term)."""
        return alpha

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, s = ensemble_moments(self.raw_target_members(batch))
        return self.from_moments(batch, m, s)

    def from_moments(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor,
                     s: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict from the raw target moments ``m``, ``s`` ``[B, T, H, W]``; ``batch``
        needs only ``y0``, ``x0`` and (lagged, seasonal) ``static``."""
        mu, var = self.moments_from(batch, m, s)
        return self.finish(mu, var.sqrt())

    def moments_from(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor,
                     s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EMOS mean and variance (before :meth:`finish`'s floor), ``[B, T, H, W]`` each."""
        h, w = m.shape[-2:]
        p = self._params(batch, h, w)
        std = self._tstd()
        s = torch.maximum(s, self.options["sigma_eps"] * std)
        offset = self._offset(batch, p[0])
        if self.season_index:
            sin, cos = self._season(batch, m.dtype)
            offset = offset + p[4] * sin + p[5] * cos
        mu = m + std * offset + p[1] * (m - self._target_mean(batch, h, w))
        var = torch.exp(self._log_spread(batch, p).clamp(-40.0, 40.0)) * s * s + std * std * F.softplus(p[3])
        return mu, var

    def _season(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``sin_doy``, ``cos_doy`` as ``[B, 1, H, W]``."""
        st = batch["static"].to(dtype)
        i, j = self.season_index
        return st[:, i:i + 1], st[:, j:j + 1]

    def _log_spread(self, batch: Mapping[str, torch.Tensor], p: torch.Tensor) -> torch.Tensor:
        """``L``, the log of the raw variance's factor: ``2 delta (+ d_s sin + d_c cos)``."""
        out = 2.0 * p[2]
        if self.season_index:
            sin, cos = self._season(batch, p.dtype)
            out = out + p[6] * sin + p[7] * cos
        return out

    # ---- the exact fit's view of the parameters ----------------------------------------------
    def fit_parameters(self) -> list[nn.Parameter]:
        """The parameters :func:`fit_emos` fits (the learned floor stays at its tiny init)."""
        return [self.params]

    @property
    def n_groups(self) -> int:
        """Independent parameter groups: targets (global) or targets x grid points (local)."""
        return int(self.params[0].numel())

    def group_matrix(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors shaped like :meth:`fit_parameters` as ``[G, P]`` (one row per group)."""
        (t,) = tensors
        return t.reshape(t.shape[0], -1).transpose(0, 1)

    def set_group_matrix(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            self.params.copy_(theta.transpose(0, 1).reshape(self.params.shape))

    def group_index(self, batch: Mapping[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        """The parameter group of every case, broadcastable to ``[B, T, H, W]``."""
        n_t = self.params.shape[1]
        ids = torch.arange(self.n_groups, device=self.params.device).reshape(n_t, *self.params.shape[2:])
        if not self.local:
            return self.by_lead(ids[None], batch)
        return self.by_lead(gather_patch(ids, batch["y0"], batch["x0"], h, w, point=self.spec.is_point),
                            batch)

    def design(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor) -> torch.Tensor:
        """The mean's regressors ``[Q, B, T, H, W]``: ``mu - m = sum_q theta_q x_q`` for the
        group rows :meth:`mean_rows` of :meth:`group_matrix` (the closed-form start)."""
        h, w = m.shape[-2:]
        std = self._tstd().to(m.dtype).expand_as(m)
        cols = [std, m - self._target_mean(batch, h, w).to(m.dtype)]
        if self.season_index:
            st = batch["static"].to(m.dtype)
            cols += [std * st[:, i:i + 1] for i in self.season_index]
        return torch.stack(cols)

    @property
    def mean_rows(self) -> list[int]:
        """Columns of :meth:`group_matrix` that :meth:`design`'s regressors multiply."""
        return [0, 1] + ([4, 5] if self.season_index else [])


class GlobalEMOS(_EMOS):
    """``emos_global``: one parameter set per target."""

    local = False


class LocalEMOS(_EMOS):
    """``emos_local``: one parameter set per target and grid point or station."""

    local = True


class LaggedEMOS(GlobalEMOS):
    """``emos_lagged``: global EMOS whose mean is also linear in the static (past-error)
    features, ``mu = EMOS mu + std_t * (w . static)`` (AR-EMOS-like, Moeller & Gross 2016);
    ``w = 0`` at initialisation, so it starts as plain EMOS."""

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.static_names:
            raise ModelSpecError("emos_lagged needs static features (spec.static_names is empty)")
        if spec.n_leads > 1:
            raise ModelSpecError("emos_lagged serves one target lead (spec.target_leads has "
                                 f"{list(spec.target_leads)})")
        super().__init__(spec)
        self.weights = nn.Parameter(torch.zeros(len(spec.targets), len(spec.static_names)))

    def _offset(self, batch: Mapping[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        st = batch["static"].to(alpha.dtype)
        return alpha + torch.einsum("bshw,ts->bthw", st, self.weights)

    def fit_parameters(self) -> list[nn.Parameter]:
        return [self.params, self.weights]

    def group_matrix(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        p, wts = tensors
        return torch.cat([p.reshape(p.shape[0], -1).transpose(0, 1), wts], dim=1)

    def set_group_matrix(self, theta: torch.Tensor) -> None:
        n_p = self.params.shape[0]
        with torch.no_grad():
            self.params.copy_(theta[:, :n_p].transpose(0, 1).reshape(self.params.shape))
            self.weights.copy_(theta[:, n_p:])

    def design(self, batch: Mapping[str, torch.Tensor], m: torch.Tensor) -> torch.Tensor:
        base = super().design(batch, m)
        std = self._tstd().to(m.dtype)
        st = batch["static"].to(m.dtype)
        extra = torch.stack([(std * st[:, j:j + 1]).expand_as(m) for j in range(st.shape[1])])
        return torch.cat([base, extra])

    @property
    def mean_rows(self) -> list[int]:
        n_p = self.params.shape[0]
        return super().mean_rows + list(range(n_p, n_p + self.weights.shape[1]))


EMOS = _EMOS


# ---- the exact fit ---------------------------------------------------------------------------
class EMOSFitError(ModelSpecError):
    """An EMOS fit was given no model it can fit, or no valid data."""


@dataclass(frozen=True)
class EMOSFitResult:
    """How an exact fit ended."""

    #: mean closed-form CRPS over the valid training cases, each divided by its target's std
    #: (the model's :meth:`~models.base.PostProcessor.loss` on all the data)
    loss: float
    #: the same at the closed-form start
    start_loss: float
    iterations: int
    #: no group's CRPS fell by more than ``tol`` (relative) over the last iterations
    converged: bool
    #: valid training cases
    cases: int = 0
    #: ranges of groups fitted one after another (1: every case in memory at once)
    ranges: int = 1
    #: bytes of cases written to the spill folder (0: none)
    spilled_bytes: int = 0
    #: the fewest valid cases of a group that has any, and each group's parameters
    min_group_cases: int = 0
    parameters: int = 0

    @property
    def overfits(self) -> bool:
        """A group was fitted from fewer than :data:`OVERFIT_CASES_PER_PARAMETER` cases per
        parameter (a local EMOS from a few init times: its fit follows the training noise)."""
        return 0 < self.min_group_cases < OVERFIT_CASES_PER_PARAMETER * self.parameters


def emos_chunk(model: _EMOS, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pipeline batch reduced to what an EMOS fit reads: the raw target moments ``m``, ``s``
    (``[B, T, H, W]``), ``target``, ``y0``, ``x0`` and ``static`` (float64, detached)."""
    with torch.no_grad():
        m, s = ensemble_moments(model.raw_target_members(batch).double())
    out = {"m": m, "s": s, "target": batch["target"].detach().double(),
           "y0": batch["y0"], "x0": batch["x0"]}
    if model.spec.n_leads > 1:  # which lead's parameter group a sample belongs to
        out["lead_time"] = batch["lead_time"]
    if batch.get("static") is not None:
        out["static"] = batch["static"].detach().double()
    return out


def fit_emos(model: _EMOS, chunks: Iterable[Mapping[str, torch.Tensor]], *, max_iter: int = 100,
             tol: float = 1e-8, memory: int | None = None,
             spill_dir: str | os.PathLike[str] | None = None) -> EMOSFitResult:
    """Fit ``model`` in place to the minimum of its mean closed-form CRPS over ``chunks``
    (:func:`emos_chunk` of every training batch, consumed once, one at a time).

    Every parameter group (a target, or a target at one grid point or station) is an
    independent problem of ``P`` parameters (4; 8 with ``season="doy"``; plus one per static
    feature for ``emos_lagged``). The fit starts from a closed-form least-squares solution
    (the target regressed on the mean's regressors, then the squared residuals on ``s^2`` to
    split the variance between the raw spread and a constant), then takes damped Newton steps
    with each group's exact gradient and ``P x P`` Hessian (:func:`_derivatives`), accepting a
    step per group only where it lowers that group's CRPS (Levenberg-Marquardt damping
    otherwise). It stops when no group's CRPS fell by more than ``tol`` (relative) over the
    last ``_WINDOW`` iterations. float64 throughout; the model keeps its dtype. The learned
    floor (``sigma_floor``) stays at its ~1e-7 init: it duplicates ``gamma``.

    The valid cases are held compactly (:data:`CASE_BYTES` each, the group's constants in
    tables), in memory up to ``memory`` bytes (default :func:`fit_memory`). Beyond that they
    are spilled to files in ``spill_dir`` (a temporary folder by default; removed afterwards)
    by contiguous ranges of groups, and the ranges are fitted one after another, each with
    its cases in memory: the groups are independent, so the result is the same (a single
    group larger than ``memory``, e.g. a global EMOS, is still read whole).
    """
    if not isinstance(model, _EMOS):
        raise EMOSFitError(f"fit_emos fits an EMOS model, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    model.double()
    try:
        with _CaseStore(model, memory=fit_memory() if memory is None else memory,
                        spill_dir=spill_dir) as store:
            for c in chunks:
                store.add(c)
            if store.n_chunks == 0:
                raise EMOSFitError("fit_emos: no training data (no chunks)")
            if store.n_cases == 0:
                raise EMOSFitError("fit_emos: the training data hold no valid (finite) target")
            rows = _Rows(model)
            theta = _theta(model)
            loss = start = 0.0
            iterations, converged, runs, fewest = 0, True, 0, store.n_cases
            for lo, hi, cases in store.ranges():
                fitted, r = _fit(theta[lo:hi], rows, cases, max_iter=max_iter, tol=tol)
                cases.pieces = []  # the range's cases go now
                theta[lo:hi] = fitted
                loss, start = loss + r.loss, start + r.start_loss
                iterations, converged = max(iterations, r.iterations), converged and r.converged
                runs += 1
                fewest = min(fewest, r.min_cases or fewest)
            model.set_group_matrix(theta.to(model.params.dtype))
            return EMOSFitResult(loss=loss / store.n_cases, start_loss=start / store.n_cases,
                                 iterations=iterations, converged=converged, cases=store.n_cases,
                                 ranges=runs, spilled_bytes=store.spilled_bytes,
                                 min_group_cases=fewest, parameters=int(theta.shape[1]))
    finally:
        model.to(dtype)


def fit_memory() -> int:
    """The exact fit's default memory for its cases: a quarter of this machine's memory
    (1 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2**30


#: cases per parameter below which a group's exact fit overfits (:attr:`EMOSFitResult.overfits`;
#: ``flows.preflight.LOCAL_CASES_PER_PARAMETER`` notes it before training)
OVERFIT_CASES_PER_PARAMETER = 5
#: bytes one valid training case takes in the exact fit (its group, raw mean, floored raw
#: variance and target as float64), plus 8 per static feature the model reads
CASE_BYTES = 32
#: contiguous ranges of groups the cases are spilled by when they exceed the fit's memory
SPILL_RANGES = 256
#: cases the fit's loops expand to float64 at a time (at most; a chunk of a 0.25 deg field
#: holds 1 M: its temporaries would be ~1 GiB)
PIECE_CASES = 1 << 18
#: bytes of the fit's temporaries per case of a piece (the derivatives' P x P terms, P <= 8)
PIECE_TEMP_BYTES = 1024


@dataclass(frozen=True)
class _Layout:
    """Which columns of a compact case's static features (``z``) the model reads where: the
    day-of-year ``sin``/``cos`` (``season="doy"``) and ``emos_lagged``'s features."""

    static: tuple[int, ...]   # the columns of the batch's ``static`` kept in ``z``
    season: tuple[int, ...]   # positions of sin_doy, cos_doy in ``z``
    lagged: tuple[int, ...]   # positions of emos_lagged's features in ``z``

    @classmethod
    def of(cls, model: _EMOS) -> _Layout:
        if isinstance(model, LaggedEMOS):
            every = tuple(range(len(model.spec.static_names)))
            return cls(static=every, season=model.season_index, lagged=every)
        return cls(static=model.season_index, season=tuple(range(len(model.season_index))), lagged=())


def _compact(model: _EMOS, c: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's valid cases (finite target, mean and spread) as rows ``[N, 4 + E]`` of
    float64: group, raw mean ``m``, floored raw variance ``s2``, target ``y`` and the ``E``
    static features the model reads (:class:`_Layout`); and the per-case values of the
    group's constants ``[3, N]``: target std ``ts``, learned floor ``floor`` and the target
    mean the slope's regressor subtracts ``tm``."""
    missing = [k for k in CHUNK_KEYS if k not in c]
    if missing:
        raise EMOSFitError(f"fit_emos: a chunk lacks {missing} (build chunks with emos_chunk)")
    m, s, y = (c[k].double() for k in ("m", "s", "target"))
    keep = torch.isfinite(y) & torch.isfinite(m) & torch.isfinite(s)
    layout = _Layout.of(model)
    with torch.no_grad():
        std = model._tstd()
        groups = model.group_index(c, *m.shape[-2:]).expand_as(m)
        tm = model._target_mean(c, *m.shape[-2:]).to(torch.float64)
        floor = F.softplus(model.sigma_floor)[None, :, None, None] * std
        cols = [groups[keep].double(), m[keep],
                torch.maximum(s, model.options["sigma_eps"] * std).square()[keep], y[keep]]
        if layout.static:
            st = c["static"].double()
            cols += [_cases(st[:, j:j + 1], keep) for j in layout.static]
        consts = torch.stack([_cases(std, keep), _cases(floor, keep), _cases(tm, keep)])
    return torch.stack(cols, 1), consts


def _expand(rows: torch.Tensor, tables: torch.Tensor, layout: _Layout, lo: int = 0) -> dict[str, torch.Tensor]:
    """Compact cases (:func:`_compact`) as the float64 arrays the fit's loops read: group
    ``g`` (relative to ``lo``), ``m``, ``s2``, ``y``, the mean's regressors ``X`` ``[N, Q]``
    (:meth:`_EMOS.design`), the log-spread's ``D`` ``[N, 1 or 3]`` (2 for ``delta``;
    ``sin``/``cos`` with ``season="doy"``), the target's std ``ts`` and the learned floor
    ``floor`` (fixed during the fit); ``tables`` ``[3, G]`` holds each group's ``ts``,
    ``floor`` and ``tm``."""
    g = rows[:, 0].long()
    m, z = rows[:, 1], rows[:, 4:]
    ts, floor, tm = tables[:, g]
    x = [ts, m - tm] + [ts * z[:, j] for j in layout.season] + [ts * z[:, j] for j in layout.lagged]
    d = [torch.full_like(m, 2.0)] + [z[:, j] for j in layout.season]
    return {"g": g - lo, "m": m, "s2": rows[:, 2], "y": rows[:, 3], "X": torch.stack(x, 1),
            "D": torch.stack(d, 1), "ts": ts, "floor": floor}


def _prepare(model: _EMOS, c: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The chunk's valid cases as the fit reads them (:func:`_compact`, :func:`_expand`)."""
    rows, consts = _compact(model, c)
    tables = torch.full((3, model.n_groups), math.nan, dtype=torch.float64)
    tables[:, rows[:, 0].long()] = consts
    return _expand(rows, tables, _Layout.of(model))


def _cases(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The valid cases of ``t`` broadcast to the chunk's ``[B, T, H, W]``, flat."""
    return t.expand_as(keep)[keep]


class _Cases:
    """The compact cases of the groups ``lo .. lo + n`` as pieces; iterating expands one
    piece at a time (:func:`_expand`), group ids relative to ``lo``."""

    def __init__(self, pieces: list[torch.Tensor], tables: torch.Tensor, layout: _Layout, lo: int) -> None:
        self.pieces, self.tables, self.layout, self.lo = pieces, tables, layout, lo

    def __iter__(self):
        for p in self.pieces:
            yield _expand(p, self.tables, self.layout, self.lo)

    def counts(self, n_g: int) -> torch.Tensor:
        out = torch.zeros(n_g, dtype=torch.float64)
        for p in self.pieces:
            out += torch.bincount(p[:, 0].long() - self.lo, minlength=n_g)[:n_g].double()
        return out

    def keep(self, groups: torch.Tensor) -> None:
        """Keep only the cases of the groups where ``groups`` (relative) is true, one piece
        at a time (no second copy of the cases)."""
        for i, p in enumerate(self.pieces):
            self.pieces[i] = p[groups[p[:, 0].long() - self.lo]]
        self.pieces = [p for p in self.pieces if p.shape[0]]


class _CaseStore:
    """The valid training cases of an exact fit, compact (:func:`_compact`): in memory up to
    ``memory`` bytes; beyond, in files of a temporary folder under ``spill_dir``, one per
    contiguous range of groups (:data:`SPILL_RANGES`), read back a few ranges at a time
    (:meth:`ranges`). The folder is removed on exit, whatever happened."""

    def __init__(self, model: _EMOS, *, memory: int, spill_dir: str | os.PathLike[str] | None) -> None:
        self.layout = _Layout.of(model)
        self.n_groups = model.n_groups
        self.model, self.memory, self.spill_dir = model, max(int(memory), 1), spill_dir
        self.tables = torch.full((3, self.n_groups), math.nan, dtype=torch.float64)
        self.n_cols = 4 + len(self.layout.static)
        self.n_ranges = min(self.n_groups, SPILL_RANGES)
        self.width = -(-self.n_groups // self.n_ranges)
        self.pieces: list[torch.Tensor] = []
        self.n_chunks = self.n_cases = self.held = self.spilled_bytes = 0
        self.folder: str | None = None
        self.files: list[Any] = []
        self.sizes = [0] * self.n_ranges
        #: cases per piece read back: the pieces' temporaries within an eighth of ``memory``
        #: (at least 32768 cases: ~32 MiB of temporaries; smaller pieces cost more in per-piece
        #: overhead than they save)
        self.piece = max(1 << 15, min(PIECE_CASES, self.memory // (8 * PIECE_TEMP_BYTES)))

    def __enter__(self) -> _CaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.files:
            f.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, c: Mapping[str, torch.Tensor]) -> None:
        rows, consts = _compact(self.model, c)
        self.n_chunks += 1
        if rows.shape[0] == 0:
            return
        self.tables[:, rows[:, 0].long()] = consts
        self.n_cases += rows.shape[0]
        if not self.files and self.held + rows.numel() * 8 > self.memory and self.n_ranges > 1:
            self._spill()
        if self.files:
            self._write(rows)
        else:
            self.pieces += list(rows.split(self.piece))
            self.held += rows.numel() * 8

    def _spill(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="enspp-exact-fit-", dir=self.spill_dir)
        self.files = [open(os.path.join(self.folder, f"{i:03d}.f64"), "wb") for i in range(self.n_ranges)]
        for p in self.pieces:
            self._write(p)
        self.pieces, self.held = [], 0

    def _write(self, rows: torch.Tensor) -> None:
        which = rows[:, 0].long() // self.width
        order = torch.argsort(which, stable=True)
        rows = rows[order].contiguous().numpy()
        counts = torch.bincount(which, minlength=self.n_ranges).tolist()
        start = 0
        for i, n in enumerate(counts):
            if n:
                self.files[i].write(rows[start:start + n].tobytes())
                self.sizes[i] += n
                start += n
        self.spilled_bytes += rows.nbytes

    def ranges(self) -> Iterator[tuple[int, int, _Cases]]:
        """``(lo, hi, cases)`` for consecutive ranges of groups whose cases fit in memory
        together (all the groups at once when nothing was spilled)."""
        if not self.files:
            pieces, self.pieces = self.pieces, []  # the fit drops finished groups' cases
            yield 0, self.n_groups, _Cases(pieces, self.tables, self.layout, 0)
            return
        for f in self.files:
            f.close()
        row = self.n_cols * 8
        i = 0
        while i < self.n_ranges:
            j, size = i + 1, self.sizes[i] * row
            while j < self.n_ranges and size + self.sizes[j] * row <= self.memory:
                size += self.sizes[j] * row
                j += 1
            data = np.empty((sum(self.sizes[i:j]), self.n_cols), dtype="<f8")
            at = 0
            for k in range(i, j):  # the range's files one after another into one array
                if self.sizes[k]:
                    with open(os.path.join(self.folder, f"{k:03d}.f64"), "rb") as f:
                        f.readinto(memoryview(data[at:at + self.sizes[k]]).cast("B"))
                    at += self.sizes[k]
            pieces = list(torch.from_numpy(data).split(self.piece))
            lo, hi = i * self.width, min(j * self.width, self.n_groups)
            yield lo, hi, _Cases(pieces, self.tables, self.layout, lo)
            i = j


class _Rows:
    """Where the mean's and the log-spread's parameters sit in a group's row of ``theta``."""

    def __init__(self, model: _EMOS) -> None:
        self.mean = model.mean_rows
        self.log = [2] + ([6, 7] if model.season_index else [])
        self.gamma = 3
        self.k = 1.0 if model.distribution == "gaussian" else _LOGISTIC_SCALE_PER_STD
        self.distribution = model.distribution


def _case_terms(rows: _Rows, theta: torch.Tensor, c: Mapping[str, torch.Tensor]):
    """Per case: location ``u``, scale ``v`` and the pieces of ``v``'s derivatives."""
    th = theta[c["g"]]
    u = c["m"] + (c["X"] * th[:, rows.mean]).sum(1)
    a = torch.exp((c["D"] * th[:, rows.log]).sum(1).clamp(-40.0, 40.0)) * c["s2"]
    gam = th[:, rows.gamma]
    tv = c["ts"] * c["ts"]
    sig = torch.sqrt(a + tv * F.softplus(gam))
    v = rows.k * (sig + c["floor"])
    return u, v, a, sig, tv, gam


def _crps(rows: _Rows, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    keys = ("mu", "sigma") if rows.distribution == "gaussian" else ("loc", "scale")
    return distribution_crps({keys[0]: u, keys[1]: v}, y, distribution=rows.distribution)


def _losses(rows: _Rows, theta: torch.Tensor, chunks: Iterable[dict[str, torch.Tensor]], n_g: int) -> torch.Tensor:
    """Summed normalised CRPS per group, ``[G]``."""
    total = torch.zeros(n_g, dtype=torch.float64)
    for c in chunks:
        u, v, *_ = _case_terms(rows, theta, c)
        total.index_add_(0, c["g"], _crps(rows, u, v, c["y"]) / c["ts"])
    return total


def _derivatives(rows: _Rows, theta: torch.Tensor, chunks: Iterable[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group gradient ``[G, P]`` and Hessian ``[G, P, P]`` (:func:`_derivative_terms`)."""
    grad, upper = _derivative_terms(rows, theta, chunks)
    return grad, upper.block()


def _derivative_terms(rows: _Rows, theta: torch.Tensor, chunks: Iterable[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, _Upper]:
    """Per-group gradient ``[G, P]`` and Hessian (its unique entries, :class:`_Upper`) of the
    summed normalised CRPS (the groups are independent, so the Hessian of the total is block
    diagonal).

    By the chain rule through the two distribution parameters of every case, ``u`` (mean or
    location) and ``v`` (std or logistic scale): ``u`` is linear in the mean's parameters
    (:meth:`_EMOS.design`); ``v = k (sqrt(a + b) + floor)`` with ``a = exp(L) s^2``, ``L``
    linear in the log-spread parameters, and ``b = std^2 softplus(gamma)``. The CRPS's own
    derivatives in ``(u, v)`` are closed form (Gaussian) or from automatic differentiation of
    the closed-form CRPS, elementwise (censored logistic)."""
    n_g, n_p = theta.shape
    # a case's derivatives are weighted products of its features f = [X, D, 1] (placed at the
    # rows mean, log, gamma of theta): the gradient's weights by kind (u, l, g) and the
    # Hessian's by pair of kinds, summed over the unique pairs i <= j only
    pos = list(rows.mean) + list(rows.log) + [rows.gamma]
    kind = torch.tensor([0] * len(rows.mean) + [1] * len(rows.log) + [2])
    iu, ju = torch.triu_indices(len(pos), len(pos))
    pair = torch.tensor([[0, 1, 2], [1, 3, 4], [2, 4, 5]])[kind[iu], kind[ju]]
    grad = torch.zeros(n_g, len(pos), dtype=torch.float64)
    upper = torch.zeros(n_g, len(iu), dtype=torch.float64)
    k = rows.k
    for c in chunks:
        if c["g"].shape[0] == 0:
            continue
        u, v, a, sig, tv, gam = _case_terms(rows, theta, c)
        cu, cv, cuu, cuv, cvv = (t / c["ts"] for t in _crps_derivatives(rows, u, v, c["y"]))
        b1 = tv * torch.sigmoid(gam)
        b2 = b1 * torch.sigmoid(-gam)
        s3 = 4.0 * sig ** 3
        v_l, v_g = k * a / (2 * sig), k * b1 / (2 * sig)
        v_ll, v_lg, v_gg = k * (a / (2 * sig) - a * a / s3), -k * a * b1 / s3, k * (b2 / (2 * sig) - b1 * b1 / s3)
        f = torch.cat([c["X"], c["D"], torch.ones_like(u)[:, None]], 1)
        grad.index_add_(0, c["g"], f * torch.stack([cu, cv * v_l, cv * v_g], 1)[:, kind])
        # J^T C J with J = [du; dv], C the CRPS's Hessian in (u, v), plus v's own curvature
        w = torch.stack([cuu, cuv * v_l, cuv * v_g, cvv * v_l * v_l + cv * v_ll,
                         cvv * v_l * v_g + cv * v_lg, cvv * v_g * v_g + cv * v_gg], 1)
        upper.index_add_(0, c["g"], f[:, iu] * f[:, ju] * w[:, pair])
    out_g = torch.zeros(n_g, n_p, dtype=torch.float64)
    out_g[:, pos] = grad
    return out_g, _Upper(upper, torch.tensor(pos)[iu], torch.tensor(pos)[ju], n_p)


class _Upper(NamedTuple):
    """Per-group Hessians as their unique entries ``values`` ``[G, U]`` at rows ``i`` and
    columns ``j`` of the ``P x P`` matrix (:meth:`block` builds the matrices of some groups)."""

    values: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    n_p: int

    def block(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        v = self.values[lo:hi]
        out = torch.zeros(v.shape[0], self.n_p, self.n_p, dtype=v.dtype)
        out[:, self.i, self.j] = v
        out[:, self.j, self.i] = v
        return out


_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _crps_derivatives(rows: _Rows, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """First and second derivatives of the pointwise closed-form CRPS in its location ``u``
    and scale ``v``: ``(c_u, c_v, c_uu, c_uv, c_vv)``."""
    if rows.distribution == "gaussian":
        z = (y - u) / v
        pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
        cdf = 0.5 * torch.erfc(-z / math.sqrt(2.0))
        two_pdf_v = 2.0 * pdf / v
        return 1.0 - 2.0 * cdf, 2.0 * pdf - _INV_SQRT_PI, two_pdf_v, two_pdf_v * z, two_pdf_v * z * z
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        v = v.detach().clone().requires_grad_(True)
        crps = _crps(rows, u, v, y)
        cu, cv = torch.autograd.grad(crps.sum(), (u, v), create_graph=True)
        cuu, cuv = torch.autograd.grad(cu.sum(), (u, v), retain_graph=True)
        (cvv,) = torch.autograd.grad(cv.sum(), (v,))
    return cu.detach(), cv.detach(), cuu, cuv, cvv


def _theta(model: _EMOS) -> torch.Tensor:
    return model.group_matrix([p.detach() for p in model.fit_parameters()]).clone().double()


def _closed_form_start(theta0: torch.Tensor, rows: _Rows, chunks: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Least-squares start ``[G, P]``: the mean's parameters by (ridge-stabilised) least
    squares of ``y - m`` on :meth:`_EMOS.design` per group; then ``E[r^2] = c^2 s^2 + d^2`` by
    least squares of the squared residuals on ``s^2``, each term kept at >= 5 % of the mean
    squared residual (``delta = log c``, ``gamma = softplus^-1(d^2 / std^2)``); the seasonal
    log-spread terms start at 0."""
    n_g, q = theta0.shape[0], len(rows.mean)
    xtx = torch.zeros(n_g, q * q, dtype=torch.float64)
    xty = torch.zeros(n_g, q, dtype=torch.float64)
    for c in chunks:
        x = c["X"]
        xtx.index_add_(0, c["g"], (x[:, :, None] * x[:, None, :]).reshape(-1, q * q))
        xty.index_add_(0, c["g"], x * (c["y"] - c["m"])[:, None])
    xtx = xtx.reshape(n_g, q, q)
    ridge = 1e-9 * torch.diagonal(xtx, dim1=1, dim2=2).mean(dim=1) + 1e-12
    coef = torch.linalg.solve(xtx + ridge[:, None, None] * torch.eye(q, dtype=torch.float64), xty[..., None])[..., 0]
    theta = theta0.clone()
    theta[:, rows.mean] = coef
    sums = torch.zeros(n_g, 6, dtype=torch.float64)  # n, s2, s4, r2, r2 s2, std^2
    for c in chunks:
        u, *_ = _case_terms(rows, theta, c)
        s2, r2 = c["s2"], (c["y"] - u).square()
        sums.index_add_(0, c["g"], torch.stack([torch.ones_like(s2), s2, s2 * s2, r2, r2 * s2, c["ts"].square()], 1))
    n, s2, s4, r2, r2s2, tv = sums.unbind(1)
    n = n.clamp(min=1.0)
    ms2, mr2, tv = s2 / n, r2 / n, tv / n
    var_s2 = s4 / n - ms2 * ms2
    tiny = 1e-300
    slope = (r2s2 / n - mr2 * ms2) / var_s2.clamp(min=tiny)
    slope = torch.where(var_s2 > 1e-12 * ms2.square(), slope, mr2 / (2 * ms2.clamp(min=tiny)))
    c2 = torch.minimum(slope.clamp(min=0.05 * mr2 / ms2.clamp(min=tiny)), 0.95 * mr2 / ms2.clamp(min=tiny))
    d2 = (mr2 - c2 * ms2).clamp(min=0.05 * mr2)
    ok = mr2 > 0
    theta[:, 2] = torch.where(ok, 0.5 * torch.log(c2.clamp(min=tiny)), theta[:, 2])
    ratio = (d2 / tv.clamp(min=tiny)).clamp(min=1e-12)
    theta[:, 3] = torch.where(ok, ratio + torch.log(-torch.expm1(-ratio)), theta[:, 3])  # softplus^-1
    return theta


#: groups whose P x P Newton systems are built and solved at a time (a 0.25 deg grid has
#: ~1 M groups per target and lead: [G, P, P] copies of all of them were ~130 MiB each)
GROUP_BLOCK = 1 << 16


def _damped_steps(hess: torch.Tensor, grad: torch.Tensor, lam: torch.Tensor,
                  active: torch.Tensor) -> torch.Tensor:
    """Levenberg-Marquardt steps ``[B, P]`` of the active groups of a block: ``lam`` (updated
    in place) is raised until every group's damped system is positive definite."""
    diag = torch.diagonal(hess, dim1=1, dim2=2).abs()
    diag = diag + 1e-9 * diag.amax(dim=1, keepdim=True) + 1e-300
    step = torch.zeros_like(grad)
    todo = active.clone()
    for _ in range(40):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        a = hess[idx] + torch.diag_embed(lam[idx, None] * diag[idx])
        chol, info = torch.linalg.cholesky_ex(a)
        ok = info == 0
        if ok.any():
            step[idx[ok]] = -torch.cholesky_solve(grad[idx[ok]][..., None], chol[ok])[..., 0]
        lam[idx[~ok]] *= 10.0
        todo[idx[ok]] = False
    return step


class _RangeFit(NamedTuple):
    """How the fit of one range of groups ended: summed normalised CRPS, at the start too."""

    loss: float
    start_loss: float
    iterations: int
    converged: bool
    #: the fewest cases of a group with any (0 when none has one)
    min_cases: int


def _fit(theta0: torch.Tensor, rows: _Rows, cases: _Cases, *, max_iter: int,
         tol: float) -> tuple[torch.Tensor, _RangeFit]:
    """The damped Newton fit (:func:`fit_emos`) of the groups of ``theta0`` ``[G, P]`` (their
    start) on ``cases``; groups without a case keep their start."""
    n_g = theta0.shape[0]
    counts = cases.counts(n_g)
    active = counts > 0
    if not bool(active.any()):
        return theta0, _RangeFit(0.0, 0.0, 0, True, 0)
    fewest = int(counts[active].min())
    theta = _closed_form_start(theta0, rows, cases)
    loss = _losses(rows, theta, cases, n_g)
    start = float(loss.sum())
    lam = torch.full((n_g,), 1e-4, dtype=torch.float64)
    n_kept = int(active.sum())
    history = [loss]
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        grad, upper = _derivative_terms(rows, theta, cases)
        step = torch.zeros_like(theta)
        pred = torch.zeros(n_g, dtype=torch.float64)
        for lo in range(0, n_g, GROUP_BLOCK):  # P x P systems a block of groups at a time
            hi = min(n_g, lo + GROUP_BLOCK)
            hess = upper.block(lo, hi)
            step[lo:hi] = _damped_steps(hess, grad[lo:hi], lam[lo:hi], active[lo:hi])
            # the decrease the damped quadratic model predicts for the step
            s_b, g_b = step[lo:hi], grad[lo:hi]
            pred[lo:hi] = -(g_b * s_b).sum(1) - 0.5 * torch.einsum("gi,gij,gj->g", s_b, hess, s_b)
        del grad, upper
        new = _losses(rows, theta + step, cases, n_g)
        better = active & torch.isfinite(new) & (new <= loss)
        theta = torch.where(better[:, None], theta + step, theta)
        loss = torch.where(better, new, loss)
        lam = torch.where(better, (lam / 3.0).clamp(min=1e-12), lam * 4.0)
        if _DEBUG:
            print(it, float(loss.sum()) / float(counts.sum()), int((~better[active]).sum()), int(active.sum()))
        history = [*history[-_WINDOW:], loss]
        # a group is done (and left as it is) when its CRPS fell by no more than tol
        # (relative) over the last _WINDOW iterations and the quadratic model predicts no
        # more than that either (a step rejected at the minimum only meets rounding)
        if len(history) > _WINDOW:
            scale = tol * loss.abs().clamp(min=1e-300)
            active &= ~((history[-1 - _WINDOW] - loss <= scale) & (pred <= scale))
            if not bool(active.any()):
                converged = True
                break
            if int(active.sum()) < 0.5 * n_kept:  # drop the finished groups' cases
                cases.keep(active)
                n_kept = int(active.sum())
    return theta, _RangeFit(float(loss.sum()), start, it, converged, fewest)


def fit_anchor(model: PostProcessor, batches: Iterable[Mapping[str, torch.Tensor]], *,
               max_iter: int = 100, tol: float = 1e-8, memory: int | None = None,
               spill_dir: str | os.PathLike[str] | None = None) -> EMOSFitResult | None:
    """Fit a network's anchor EMOS (``model.anchor``, see :class:`~models.base.PostProcessor`)
    exactly on ``batches`` (the training data; :func:`fit_emos`); ``None`` when the network
    has no anchor (``anchor="raw"``) or ``model`` is not a network. Afterwards the untrained
    network's output is that EMOS's."""
    anchor = getattr(model, "anchor", None)
    if anchor is None:
        return None
    return fit_emos(anchor, (emos_chunk(anchor, b) for b in batches), max_iter=max_iter, tol=tol,
                    memory=memory, spill_dir=spill_dir)
