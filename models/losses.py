"""CRPS kernels and losses in torch (at least float32: half precision is promoted, float64
stays float64; autocast off).

Every kernel is *pointwise*: it returns the CRPS per forecast case with the shape of the
target (members reduced away); :func:`reduce_crps` is the one reduction (NaN-masked mean of
the CRPS divided by a per-target scale, so variables in different units weigh alike).

Estimator names, used wherever a CRPS appears:

* ``gaussian``: closed-form CRPS of a normal distribution (Gneiting et al. 2005).
* ``censored_logistic``: closed-form CRPS of a logistic distribution censored at ``lower``
  (a point mass ``F(lower)`` at ``lower``; used for precipitation with ``lower = 0``).
* ``fair`` / ``standard``: ensemble CRPS of M members. ``standard`` is the CRPS of the
  empirical distribution, ``E|X - y| - E|X - X'| / 2`` with the ``1 / M**2`` pair weight;
  ``fair`` (Ferro 2014) uses ``1 / (M (M - 1))`` and is unbiased for the CRPS of the
  distribution the members are drawn from. With ``M = 1`` both are the absolute error.
  Both are computed in ``O(M log M)`` time and ``O(M)`` memory per case by sorting the
  members (no ``M x M`` pair tensor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Literal

import torch
import torch.nn.functional as F

from enspp.data.errors import EnsppError

Estimator = Literal["fair", "standard"]
ENSEMBLE_ESTIMATORS: tuple[str, ...] = ("fair", "standard")
DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "censored_logistic")

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class LossError(EnsppError):
    """A loss was asked for with an unknown estimator/distribution or mismatched inputs."""


def _no_autocast(t: torch.Tensor) -> AbstractContextManager:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in float32, or all in float64 if any is (the exact EMOS fit's precision)."""
    wide = any(t.dtype == torch.float64 for t in tensors)
    return [t.double() if wide else t.float() for t in tensors]


def crps_gaussian(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed-form CRPS (estimator ``gaussian``) of N(mu, sigma**2) at ``target``, pointwise.

    ``sigma`` must be positive; the result has the broadcast shape of the inputs.
    """
    with _no_autocast(mu):
        mu, sigma, target = _f32(mu, sigma, target)
        z = (target - mu) / sigma
        cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2))
        pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
        return sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI)


def _int_phi2(z: torch.Tensor) -> torch.Tensor:
    """``A(z) = int_{-inf}^z Phi(u)^2 du = z Phi^2 + 2 phi Phi - Phi(z sqrt 2) / sqrt(pi)``."""
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    return z * cdf * cdf + 2.0 * pdf * cdf - _INV_SQRT_PI * 0.5 * (1.0 + torch.erf(z))


def twcrps_gaussian(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, threshold: torch.Tensor,
                    *, tail: str = "upper") -> torch.Tensor:
    """Closed-form threshold-weighted CRPS (weight ``1{x > t}``, or ``1{x < t}`` for the
    ``lower`` tail) of N(mu, sigma**2) at ``target``, pointwise: the CRPS of the normal
    censored at ``t`` against ``max(y, t)``, ``sigma (A(z) - A(l) + A(-z))`` with
    ``z = (max(y, t) - mu) / sigma``, ``l = (t - mu) / sigma`` (:func:`_int_phi2`); the lower
    tail is the mirror image."""
    if tail not in ("upper", "lower"):
        raise LossError(f"twcrps_gaussian: tail must be 'upper' or 'lower', got {tail!r}")
    with _no_autocast(mu):
        mu, sigma, target, threshold = _f32(mu, sigma, target, threshold)
        sign = 1.0 if tail == "upper" else -1.0
        m, y, t = sign * mu, sign * target, sign * threshold
        z = (torch.maximum(y, t) - m) / sigma
        low = (t - m) / sigma
        return sigma * (_int_phi2(z) - _int_phi2(low) + _int_phi2(-z))


def crps_censored_logistic(
    loc: torch.Tensor, scale: torch.Tensor, target: torch.Tensor, *, lower: float = 0.0
) -> torch.Tensor:
    """Closed-form CRPS (estimator ``censored_logistic``) of a logistic(loc, scale) censored at
    ``lower`` (mass ``F(lower)`` at ``lower``), pointwise.

    With ``z = (max(y, lower) - loc) / scale`` and ``l = (lower - loc) / scale``:
    ``CRPS = max(lower - y, 0) + scale * (sp(z) + sp(-z) - 1 - sp(l) + sigmoid(l))`` where
    ``sp`` is softplus; for ``lower -> -inf`` this is the logistic CRPS.
    """
    with _no_autocast(loc):
        loc, scale, target = _f32(loc, scale, target)
        y = torch.clamp(target, min=lower)
        z = (y - loc) / scale
        low = (lower - loc) / scale
        inner = F.softplus(z) + F.softplus(-z) - 1.0 - F.softplus(low) + torch.sigmoid(low)
        return torch.clamp(lower - target, min=0.0) + scale * inner


def crps_ensemble(
    members: torch.Tensor,
    target: torch.Tensor,
    *,
    member_dim: int = 1,
    estimator: Estimator = "fair",
) -> torch.Tensor:
    """Ensemble CRPS with a named ``estimator`` (``fair`` or ``standard``), pointwise.

    ``members`` has the shape of ``target`` plus a member axis at ``member_dim``. Sort-based:
    ``sum_{i,j} |x_i - x_j| = 2 sum_i (2 i - M + 1) x_(i)`` over the sorted members (0-based).
    """
    if estimator not in ENSEMBLE_ESTIMATORS:
        raise LossError(
            f"unknown ensemble CRPS estimator {estimator!r}: expected one of {ENSEMBLE_ESTIMATORS}"
        )
    if members.dim() != target.dim() + 1:
        raise LossError(
            f"crps_ensemble: members have {members.dim()} dims, expected target dims "
            f"({target.dim()}) + 1 member dim"
        )
    with _no_autocast(members):
        members, target = _f32(members, target)
        x = members.movedim(member_dim, -1)
        m = x.shape[-1]
        if m < 1:
            raise LossError("crps_ensemble: the member dim is empty (M = 0)")
        skill = (x - target.unsqueeze(-1)).abs().mean(dim=-1)
        if m == 1:
            return skill
        xs, _ = torch.sort(x, dim=-1)
        weights = 2.0 * torch.arange(m, device=x.device, dtype=x.dtype) - (m - 1)
        half_pair_sum = (xs * weights).sum(dim=-1)  # = sum_{i<j} |x_i - x_j|
        denom = m * m if estimator == "standard" else m * (m - 1)
        return skill - half_pair_sum / denom


def distribution_crps(
    out: Mapping[str, torch.Tensor], target: torch.Tensor, *, distribution: str
) -> torch.Tensor:
    """Closed-form CRPS of a model output dict for its ``distribution``, pointwise.

    ``gaussian`` reads ``mu``/``sigma``; ``censored_logistic`` reads ``loc``/``scale``
    (censored at 0). NaN targets give NaN (mask them with :func:`reduce_crps`).
    """
    if distribution == "gaussian":
        _require(out, ("mu", "sigma"), distribution)
        return crps_gaussian(out["mu"], out["sigma"], target)
    if distribution == "censored_logistic":
        _require(out, ("loc", "scale"), distribution)
        return crps_censored_logistic(out["loc"], out["scale"], target, lower=0.0)
    raise LossError(f"unknown distribution {distribution!r}: expected one of {DISTRIBUTIONS}")


def _require(out: Mapping[str, torch.Tensor], keys: tuple[str, ...], distribution: str) -> None:
    missing = [k for k in keys if k not in out]
    if missing:
        raise LossError(
            f"model output lacks {missing} needed by the {distribution!r} CRPS "
            f"(it has {sorted(out)})"
        )


def reduce_crps(
    crps_fn: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    *,
    target_scale: torch.Tensor,
    target_dim: int = 1,
) -> torch.Tensor:
    """Mean over the valid (non-NaN) targets of ``crps_fn(safe_target) / target_scale``.

    ``crps_fn`` maps a NaN-free target (NaNs replaced by 0 so gradients stay finite) to the
    pointwise CRPS; ``target_scale`` ``[T]`` is each target's global std (axis ``target_dim``).
    Returns a float32 scalar; 0 (with a graph) when no target is valid.
    """
    if target_scale.dim() != 1 or target_scale.shape[0] != target.shape[target_dim]:
        raise LossError(
            f"target_scale has shape {tuple(target_scale.shape)}, expected "
            f"[{target.shape[target_dim]}] (one scale per target on axis {target_dim})"
        )
    with _no_autocast(target):
        valid = torch.isfinite(target)
        safe = torch.where(valid, target.float(), torch.zeros((), device=target.device))
        crps = crps_fn(safe)
        shape = [1] * target.dim()
        shape[target_dim] = -1
        crps = crps / target_scale.float().reshape(shape)
        crps = torch.where(valid, crps, torch.zeros((), device=crps.device))
        return crps.sum() / valid.sum().clamp(min=1)
