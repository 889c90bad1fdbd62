"""EMOS (non-homogeneous regression, Gneiting et al. 2005), global and local.

Per target ``t`` with raw ensemble mean ``m`` and std ``s`` of the target's channel::

    mu      = m + std_t * alpha + beta * (m - mean_t)          (linear in m)
    sigma^2 = exp(2 delta) * s^2 + std_t^2 * softplus(gamma)   (linear in s^2)

``alpha = beta = delta = 0`` and ``gamma = -18`` at initialisation, so an untrained EMOS is the
raw ensemble (to ~1e-6 relative). Fitted by minimum CRPS through the common training loop.
``emos_global`` has one parameter set per target; ``emos_local`` one per target and grid point
(or station), looked up with the batch's ``y0``/``x0`` (``mean_t``/``std_t`` are then the
local target statistics for the slope, the global std for the offset and the variance floor).
``emos_lagged`` is ``emos_global`` whose mean is also linear in the spec's static features
(e.g. past forecast errors at a station).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from enspp.models.base import ModelSpec, ModelSpecError, PostProcessor, ensemble_moments
from enspp.models.normalize import gather_patch

_GAMMA_INIT = -18.0


class _EMOS(PostProcessor):
    local: bool = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        n_t = len(spec.targets)
        shape = (4, n_t, *spec.grid_shape) if self.local else (4, n_t, 1, 1)
        init = torch.zeros(shape)
        init[3] = _GAMMA_INIT
        #: rows: alpha, beta, delta, gamma
        self.params = nn.Parameter(init)

    def _params(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[4, B or 1, T, H or 1, W or 1]``."""
        if not self.local:
            return self.params[:, None]
        n_t = self.params.shape[1]
        h, w = batch["inputs"].shape[3:]
        table = self.params.reshape(4 * n_t, *self.params.shape[2:])
        patch = gather_patch(table, batch["y0"], batch["x0"], h, w, point=self.spec.is_point)
        return patch.reshape(patch.shape[0], 4, n_t, h, w).transpose(0, 1)

    def _target_mean(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.local:
            return self.norm.target_mean[None, :, None, None]
        h, w = batch["inputs"].shape[3:]
        return self.norm.lookup("target_mean_local", batch["y0"], batch["x0"], h, w)

    def _offset(self, batch: Mapping[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        """The mean's offset in target stds: ``alpha`` (``emos_lagged`` adds its features' term)."""
        return alpha

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        alpha, beta, delta, gamma = self._params(batch)
        m, s = ensemble_moments(self.raw_target_members(batch))
        std = self._tstd()
        s = torch.maximum(s, self.options["sigma_eps"] * std)
        mu = m + std * self._offset(batch, alpha) + beta * (m - self._target_mean(batch))
        var = torch.exp(2.0 * delta.clamp(-20.0, 20.0)) * s * s + std * std * F.softplus(gamma)
        return self.finish(mu, var.sqrt())


class GlobalEMOS(_EMOS):
    """``emos_global``: one (alpha, beta, delta, gamma) per target."""

    local = False


class LocalEMOS(_EMOS):
    """``emos_local``: one (alpha, beta, delta, gamma) per target and grid point or station."""

    local = True


class LaggedEMOS(GlobalEMOS):
    """``emos_lagged``: global EMOS whose mean is also linear in the static (past-error)
    features, ``mu = EMOS mu + std_t * (w . static)`` (AR-EMOS-like, Moeller & Gross 2016);
    ``w = 0`` at initialisation, so it starts as plain EMOS."""

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.static_names:
            raise ModelSpecError("emos_lagged needs static features (spec.static_names is empty)")
        super().__init__(spec)
        self.weights = nn.Parameter(torch.zeros(len(spec.targets), len(spec.static_names)))

    def _offset(self, batch: Mapping[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        return alpha + torch.einsum("bshw,ts->bthw", self.static(batch), self.weights)
