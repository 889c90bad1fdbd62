"""The model contract: :class:`ModelSpec`, :func:`build_model`, :class:`PostProcessor`.

Every model maps a pipeline batch (``inputs [B,K,C,H,W]`` physical units, ``static
[B,S,H,W]``, ``y0``/``x0`` ``[B]``) to the predictive distribution of the targets, in the
targets' physical units::

    gaussian:          {"mu", "sigma"}                      each [B, T, H, W]
    censored_logistic: {"mu", "sigma", "loc", "scale"}      mu/sigma = mean/std of the censored
                                                            distribution, loc/scale = the latent
                                                            logistic (censored at 0)

Normalisation statistics are buffers (``model.norm``), so ``state_dict`` is self-describing;
``ModelSpec.to_dict()``/``from_dict()`` round-trip the spec for a checkpoint's metadata.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from enspp.data.errors import EnsppError
from enspp.models.distributions import censored_logistic_moments
from enspp.models.losses import (
    DISTRIBUTIONS,
    LossError,
    crps_ensemble,
    distribution_crps,
    reduce_crps,
    twcrps_gaussian,
)
from enspp.models.normalize import Normalizer, resolve_stats

#: ``mean_shift`` options of the networks' head (:meth:`PostProcessor.head`)
MEAN_SHIFTS: tuple[str, ...] = ("ensemble", "ensemble+local")
#: ``anchor`` options of the networks' head: what an untrained network is
ANCHORS: tuple[str, ...] = ("raw", "emos_global", "emos_local", "emos_lagged")
@dataclass(frozen=True)
class ModelInfo:
    """One post-processing method: where its class lives and how reports name it."""

    module: str
    cls: str
    #: the system name in evaluations and reports (ARCHITECTURE.md, "Evaluation"): every
    #: EMOS variant is an ``emos``
    system: str
    #: a network (trained with the networks' settings) rather than an EMOS regression
    network: bool


#: every model by name: adding a model is one entry here (and its module)
MODELS: dict[str, ModelInfo] = {
    "emos_local": ModelInfo("enspp.models.emos", "LocalEMOS", "emos", network=False),
    "emos_global": ModelInfo("enspp.models.emos", "GlobalEMOS", "emos", network=False),
    "emos_lagged": ModelInfo("enspp.models.emos", "LaggedEMOS", "emos", network=False),
    "mlp": ModelInfo("enspp.models.mlp", "MLPModel", "mlp", network=True),
    "unet": ModelInfo("enspp.models.unet", "UNetModel", "unet", network=True),
    "mixed": ModelInfo("enspp.models.mixed", "MixedModel", "mixed", network=True),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
#: the system names of the models, in registry order (``emos``, ``mlp``, ``unet``, ``mixed``)
MODEL_SYSTEMS: tuple[str, ...] = tuple(dict.fromkeys(m.system for m in MODELS.values()))


def system_name(model_name: str) -> str:
    """The system name reports give a model (``emos_global`` -> ``emos``)."""
    if model_name not in MODELS:
        raise ModelSpecError(f"unknown model name {model_name!r}: expected one of {MODEL_NAMES}")
    return MODELS[model_name].system
#: the closed-form CRPS estimator a model of each distribution is trained and scored with
CLOSED_FORM_ESTIMATOR: dict[str, str] = {d: d for d in DISTRIBUTIONS}
_LOGISTIC_SCALE_PER_STD = math.sqrt(3.0) / math.pi
#: the standard normal's 95 % quantile: the tail loss's thresholds in local target stds
_TAIL_Z = 1.6448536269514722


class ModelSpecError(EnsppError):
    """A model spec, its options, or a batch given to a model is inconsistent."""


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """Everything needed to build a model and to rebuild it from a checkpoint.

    ``grid_shape`` is ``(Ny, Nx)`` of the full grid, or ``(n_stations, 1)`` for point data
    (then batches carry the station index in ``x0``). ``stats`` is
    ``pipeline.stats.NormStats.to_dict()`` (see :mod:`models.normalize` for accepted keys).
    """

    name: str
    channels: tuple[str, ...]
    targets: tuple[str, ...]
    target_channels: tuple[int, ...]
    static_names: tuple[str, ...]
    n_members: int
    grid_shape: tuple[int, int]
    stats: Mapping[str, Any]
    distribution: str = "gaussian"
    options: Mapping[str, Any] = field(default_factory=dict)
    #: networks trained from this many seeds whose distributions are combined (a seed ensemble,
    #: :class:`models.ensemble.SeedEnsemble`); 1: one network
    seeds: int = 1
    #: the lead times (hours) one model post-processes (``features.target_lead_times``); empty
    #: or one lead: a single-lead model, the targets at ``target_channels``. With several, a
    #: batch's ``lead_time`` says which lead each sample forecasts: the head reads that lead's
    #: target channels (``f"{target}@{lead}h"``), the anchor EMOS has one parameter set per
    #: lead, and the networks see the lead as a one-hot input (:meth:`PostProcessor.static`)
    target_leads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("channels", "targets", "static_names"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        object.__setattr__(self, "target_channels", tuple(int(v) for v in self.target_channels))
        object.__setattr__(self, "grid_shape", tuple(int(v) for v in self.grid_shape))
        object.__setattr__(self, "options", dict(self.options))
        if self.name not in MODEL_NAMES:
            raise ModelSpecError(f"unknown model name {self.name!r}: expected one of {MODEL_NAMES}")
        if self.distribution not in DISTRIBUTIONS:
            raise ModelSpecError(
                f"unknown distribution {self.distribution!r}: expected one of {DISTRIBUTIONS}"
            )
        if not self.channels or not self.targets:
            raise ModelSpecError("a model spec needs at least one channel and one target")
        if len(self.target_channels) != len(self.targets):
            raise ModelSpecError(
                f"target_channels {self.target_channels} must give one channel index per target "
                f"{self.targets}"
            )
        bad = [i for i in self.target_channels if not 0 <= i < len(self.channels)]
        if bad:
            raise ModelSpecError(
                f"target_channels {bad} out of range for {len(self.channels)} channels"
            )
        object.__setattr__(self, "target_leads", tuple(int(h) for h in self.target_leads))
        if len(self.target_leads) > 1:
            from enspp.pipeline.features import lead_target_channels

            try:
                per_lead = lead_target_channels(self.channels, self.targets, self.target_leads)
            except EnsppError as e:
                raise ModelSpecError(f"target_leads {list(self.target_leads)}: {e}") from None
            if self.target_channels not in per_lead:
                raise ModelSpecError(f"target_channels {self.target_channels} are not the targets "
                                     f"at one of the target_leads {list(self.target_leads)}")
        object.__setattr__(self, "seeds", int(self.seeds))
        if self.seeds < 1:
            raise ModelSpecError(f"seeds must be >= 1, got {self.seeds}")
        if int(self.n_members) < 1:
            raise ModelSpecError(f"n_members must be >= 1, got {self.n_members}")
        if len(self.grid_shape) != 2 or min(self.grid_shape) < 1:
            raise ModelSpecError(f"grid_shape must be (Ny, Nx) with both >= 1, got {self.grid_shape}")
        resolve_stats(
            self.stats,
            channels=self.channels,
            targets=self.targets,
            target_channels=self.target_channels,
            grid_shape=self.grid_shape,
        )

    @property
    def n_leads(self) -> int:
        """The lead times the model post-processes (1 for a single-lead model)."""
        return max(1, len(self.target_leads))

    @property
    def n_static_inputs(self) -> int:
        """Static planes a network reads: the static features and, with several target leads,
        one one-hot plane per lead."""
        return len(self.static_names) + (self.n_leads if self.n_leads > 1 else 0)

    @property
    def is_point(self) -> bool:
        """Point (station) data: ``grid_shape == (n_stations, 1)``."""
        return self.grid_shape[1] == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain types and numpy arrays, for a checkpoint's metadata."""
        return {
            "name": self.name,
            "channels": list(self.channels),
            "targets": list(self.targets),
            "target_channels": list(self.target_channels),
            "static_names": list(self.static_names),
            "n_members": int(self.n_members),
            "grid_shape": list(self.grid_shape),
            "stats": {k: np.asarray(v) for k, v in self.stats.items()},
            "distribution": self.distribution,
            "options": dict(self.options),
            "seeds": int(self.seeds),
            "target_leads": list(self.target_leads),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelSpecError(f"model spec dict has unknown keys {unknown}")
        missing = sorted(k for k in known - set(d)
                         if k not in ("distribution", "options", "seeds", "target_leads"))
        if missing:
            raise ModelSpecError(f"model spec dict lacks keys {missing}")
        return cls(**dict(d))


def model_class(name: str) -> type[PostProcessor]:
    """The class of model ``name`` (:data:`MODELS`), its module imported on first use."""
    info = MODELS[name]
    return getattr(importlib.import_module(info.module), info.cls)


def check_model_options(name: str, distribution: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`ModelSpecError` if model ``name`` would refuse ``options`` with
    ``distribution`` (:meth:`PostProcessor.resolved_options`): what a config can be checked
    for before any data is read."""
    model_class(name).resolved_options(name, distribution, options)


def build_model(spec: ModelSpec) -> PostProcessor:
    """Build the (untrained) model named by ``spec.name`` (a seed ensemble of such models
    when ``spec.seeds > 1``)."""
    if not isinstance(spec, ModelSpec):
        raise ModelSpecError(f"build_model needs a ModelSpec, got {type(spec).__name__}")
    if spec.seeds > 1:
        from enspp.models.ensemble import SeedEnsemble

        return SeedEnsemble(spec)
    return model_class(spec.name)(spec)


def ensemble_moments(members: torch.Tensor, *, member_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean and sample std (``ddof=1``; 0 for a single member) over ``member_dim``.

    The std is ``sqrt(sum((x - mean)^2) / (K - 1))``: two plain passes, ~4-8x faster on CPU
    than ``Tensor.std`` (a Welford reduction) over a non-innermost member axis.
    """
    mean = members.mean(dim=member_dim)
    k = members.shape[member_dim]
    if k < 2:
        return mean, torch.zeros_like(mean)
    var = torch.square(members - mean.unsqueeze(member_dim)).sum(dim=member_dim) / (k - 1)
    return mean, var.sqrt()


class PostProcessor(nn.Module):
    """Base of all models: normalisation buffers, batch checks, the distribution head, the loss.

    Subclasses implement :meth:`_forward` and declare their hyper-parameters with defaults in
    ``DEFAULTS`` (unknown ``spec.options`` keys are errors). Common options:
    ``normalization`` (``"local"`` per grid point/station, or ``"global"``), ``mean_shift``
    (``"ensemble"``: the mean correction is in units of the raw ensemble std, the paper's
    anchoring; ``"ensemble+local"``: a second, zero-initialised correction in units of the
    target's local training std is added, so the mean can still move where the members
    collapse, e.g. on a saturated extreme; see :meth:`head`), ``sigma_eps``
    (floor of the raw ensemble std as a fraction of the target's global std, so a zero-spread
    ensemble still gives a positive scale) and ``sigma_floor_init`` (pre-softplus value of the
    learned additive floor, also relative to the target std; ``-16`` adds ~1e-7 std, so an
    untrained model reproduces the raw ensemble to ~1e-6 relative) and ``tail_weight``
    (training only: the loss adds this times the threshold-weighted CRPS of the upper and lower
    5 % tails of the local training climatology, :meth:`tail_loss`; validation and early
    stopping stay on the plain CRPS, so a weight is kept only where it does not cost CRPS).

    Networks (``ANCHORED``) also take ``anchor`` (``"emos_local"``, default; ``"emos_global"``;
    ``"emos_lagged"``; ``"raw"``) and ``anchor_season`` (``"none"`` | ``"doy"``, the anchor
    EMOS's ``season``): the head corrects a frozen EMOS of that kind (``self.anchor``, fitted
    exactly on the training data before the network trains: :func:`models.emos.fit_anchor`)
    instead of the raw ensemble, so an untrained network *is* that EMOS and training can only
    keep a learned term that beats it on validation. An anchor missing from a checkpoint (one written before
    the option existed) loads as the untrained EMOS, i.e. the raw ensemble, which is what
    such a head was anchored on.
    """

    COMMON: ClassVar[dict[str, Any]] = {
        "normalization": "local",
        "mean_shift": "ensemble",
        "sigma_eps": 1e-4,
        "sigma_floor_init": -16.0,
        "tail_weight": 0.0,
    }
    ANCHOR_DEFAULTS: ClassVar[dict[str, Any]] = {"anchor": "emos_local", "anchor_season": "none"}
    #: networks: the head is anchored on an EMOS (options ``anchor``, ``anchor_season``)
    ANCHORED: ClassVar[bool] = False
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.distribution = spec.distribution
        self.crps_estimator = CLOSED_FORM_ESTIMATOR[spec.distribution]
        self.options = self.resolved_options(spec.name, spec.distribution, spec.options)
        resolved = resolve_stats(
            spec.stats,
            channels=spec.channels,
            targets=spec.targets,
            target_channels=spec.target_channels,
            grid_shape=spec.grid_shape,
        )
        self.norm = Normalizer(resolved, point=spec.is_point)
        self.register_buffer("target_index", torch.tensor(spec.target_channels, dtype=torch.long))
        self._targets_are_channels = tuple(spec.target_channels) == tuple(range(len(spec.channels)))
        # several target leads: each lead's target channels [L, T] and lead times [L] (ns);
        # derived from the spec, so not part of the state dict
        leads = spec.target_leads if spec.n_leads > 1 else ()
        if leads:
            from enspp.pipeline.features import lead_target_channels

            table = lead_target_channels(spec.channels, spec.targets, leads)
        else:
            table = (spec.target_channels,)
        self.register_buffer("lead_target_index", torch.tensor(table, dtype=torch.long),
                             persistent=False)
        self.register_buffer("lead_ns", torch.tensor([h * 3_600_000_000_000 for h in leads],
                                                     dtype=torch.long), persistent=False)
        n_t = len(spec.targets)
        self.sigma_floor = nn.Parameter(torch.full((n_t,), float(self.options["sigma_floor_init"])))
        self.anchor: PostProcessor | None = self._build_anchor() if self.ANCHORED else None

    def _build_anchor(self) -> PostProcessor | None:
        """The frozen EMOS the head corrects (``None`` for ``anchor="raw"``); it shares this
        model's normalisation buffers."""
        name, season = self.options["anchor"], self.options["anchor_season"]  # checked
        if name == "raw":
            return None
        spec = self.spec
        anchor_spec = ModelSpec(
            name=name, channels=spec.channels, targets=spec.targets,
            target_channels=spec.target_channels, static_names=spec.static_names,
            n_members=spec.n_members, grid_shape=spec.grid_shape, stats=spec.stats,
            distribution=spec.distribution, target_leads=spec.target_leads,
            options={"sigma_eps": self.options["sigma_eps"], "season": season,
                     "sigma_floor_init": self.options["sigma_floor_init"]})
        anchor = build_model(anchor_spec)
        anchor.norm = self.norm
        anchor.requires_grad_(False)
        return anchor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # a checkpoint written before the anchor existed: keep the untrained anchor (= raw)
        if self.anchor is not None and not any(k.startswith(prefix + "anchor.") for k in state_dict):
            for k, v in self._build_anchor().state_dict().items():  # type: ignore[union-attr]
                state_dict[f"{prefix}anchor.{k}"] = v.to(self.sigma_floor.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def resolved_options(cls, name: str, distribution: str, options: Mapping[str, Any]
                         ) -> dict[str, Any]:
        """``options`` over this model's defaults, checked as far as no data is needed
        (unknown names, ``normalization``, ``tail_weight``, ``mean_shift``, ``anchor``), so a
        config is refused before anything trains (:func:`check_model_options`)."""
        defaults = {**cls.COMMON, **(cls.ANCHOR_DEFAULTS if cls.ANCHORED else {}), **cls.DEFAULTS}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ModelSpecError(
                f"unknown option(s) {unknown} for model {name!r}: "
                f"known options are {sorted(defaults)}"
            )
        out = {**defaults, **dict(options)}
        if out["normalization"] not in ("local", "global"):
            raise ModelSpecError(
                f"option normalization={out['normalization']!r}: expected 'local' or 'global'")
        if not float(out["tail_weight"]) >= 0.0:
            raise ModelSpecError(f"option tail_weight={out['tail_weight']!r} must be >= 0")
        if out["tail_weight"] and distribution != "gaussian":
            raise ModelSpecError(f"option tail_weight needs the gaussian distribution, not "
                                 f"{distribution!r}")
        if out["mean_shift"] not in MEAN_SHIFTS:
            raise ModelSpecError(
                f"option mean_shift={out['mean_shift']!r}: expected one of {list(MEAN_SHIFTS)}")
        if cls.ANCHORED and out["anchor"] not in ANCHORS:
            raise ModelSpecError(f"option anchor={out['anchor']!r}: expected one of {list(ANCHORS)}")
        return out

    # ---- batch handling -------------------------------------------------------------------
    def check_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`ModelSpecError` naming the key when a batch does not fit the spec."""
        for key in ("inputs", "y0", "x0"):
            if key not in batch:
                raise ModelSpecError(f"batch lacks key {key!r} (has {sorted(batch)})")
        x = batch["inputs"]
        if x.dim() != 5 or x.shape[2] != len(self.spec.channels) or x.shape[1] < 1:
            raise ModelSpecError(
                f"batch['inputs'] has shape {tuple(x.shape)}, expected [B, K>=1, "
                f"C={len(self.spec.channels)}, H, W]"
            )
        n_s = len(self.spec.static_names)
        static = batch.get("static")
        if n_s and static is None:
            raise ModelSpecError(f"batch lacks key 'static' for static fields {self.spec.static_names}")
        if static is not None and tuple(static.shape) != (x.shape[0], n_s, *x.shape[3:]):
            raise ModelSpecError(
                f"batch['static'] has shape {tuple(static.shape)}, expected "
                f"{(x.shape[0], n_s, *x.shape[3:])} (static_names {self.spec.static_names})"
            )
        if self.spec.is_point and tuple(x.shape[3:]) != (1, 1):
            raise ModelSpecError(f"point data need H = W = 1, got inputs {tuple(x.shape)}")

    def static(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The static planes a network reads, ``[B, spec.n_static_inputs, H, W]``: the batch's
        static features, then (several target leads) the one-hot of each sample's lead."""
        x = batch["inputs"]
        s = batch.get("static")
        if s is None:
            s = x.new_zeros((x.shape[0], 0, *x.shape[3:]))
        s = s.to(x.dtype)
        lead = self.lead_index(batch)
        if lead is None:
            return s
        onehot = nn.functional.one_hot(lead, self.spec.n_leads).to(x.dtype)
        return torch.cat([s, onehot[:, :, None, None].expand(-1, -1, *x.shape[3:])], dim=1)

    def lead_index(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Per sample, the index of its lead in ``spec.target_leads`` (``[B]`` long); ``None``
        for a single-lead model."""
        if self.spec.n_leads == 1:
            return None
        if "lead_time" not in batch:
            raise ModelSpecError(f"batch lacks key 'lead_time': a model of several target leads "
                                 f"{list(self.spec.target_leads)} h needs each sample's lead")
        hit = batch["lead_time"].to(self.lead_ns.device)[:, None] == self.lead_ns[None]
        ok = hit.any(dim=1)
        if not bool(ok.all()):
            bad = sorted({int(v) // 3_600_000_000_000 for v in batch["lead_time"][~ok.cpu()].tolist()})
            raise ModelSpecError(f"lead times {bad} h are not among the model's target leads "
                                 f"{list(self.spec.target_leads)} h")
        return hit.to(torch.int64).argmax(dim=1)

    def by_lead(self, x: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``x`` ``[B or 1, L*T, ...]`` (lead-major) -> each sample's lead ``[B, T, ...]``;
        ``x`` as it is for a single-lead model."""
        lead = self.lead_index(batch)
        if lead is None:
            return x
        n_l = self.spec.n_leads
        x = x.reshape(x.shape[0], n_l, x.shape[1] // n_l, *x.shape[2:])
        x = x.expand(lead.shape[0], *x.shape[1:])
        return x[torch.arange(lead.shape[0], device=x.device), lead.to(x.device)]

    def channel_stats(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel mean and std, ``[B, C, H, W]`` (local) or ``[1, C, 1, 1]`` (global)."""
        if self.options["normalization"] == "global":
            return self.norm.channel_mean[None, :, None, None], self.norm.channel_std[None, :, None, None]
        h, w = batch["inputs"].shape[3:]
        return (
            self.norm.lookup("channel_mean_local", batch["y0"], batch["x0"], h, w),
            self.norm.lookup("channel_std_local", batch["y0"], batch["x0"], h, w),
        )

    def raw_target_members(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The raw members of each target's channel (at each sample's lead), ``[B, K, T, H, W]``
        physical."""
        lead = self.lead_index(batch)
        if lead is None:
            x = batch["inputs"]
            if self._targets_are_channels:  # every channel, in order: the inputs, no copy
                return x
            return x.index_select(2, self.target_index)
        x = batch["inputs"]
        idx = self.lead_target_index[lead.to(self.lead_target_index.device)].to(x.device)  # [B, T]
        idx = idx[:, None, :, None, None].expand(x.shape[0], x.shape[1], idx.shape[1], *x.shape[3:])
        return torch.gather(x, 2, idx)

    def ensemble_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised ensemble mean and std of every channel, ``[B, 2C, H, W]``."""
        mean, std = ensemble_moments(batch["inputs"])
        c_mean, c_std = self.channel_stats(batch)
        return torch.cat([(mean - c_mean) / c_std, std / c_std], dim=1)

    # ---- distribution head ----------------------------------------------------------------
    def _tstd(self) -> torch.Tensor:
        return self.norm.target_std[None, :, None, None]

    @property
    def _head_parts(self) -> int:
        """Outputs per target: ``a``, ``b`` and, with ``mean_shift="ensemble+local"``, ``c``."""
        return 3 if self.options["mean_shift"] == "ensemble+local" else 2

    @property
    def head_channels(self) -> int:
        """Channels of the last layer that :meth:`head_from` splits (targets x parts)."""
        return self._head_parts * len(self.spec.targets)

    def head_from(self, out: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`head` of the last layer's ``[B, head_channels, H, W]`` output."""
        a, b, *c = out.chunk(self._head_parts, dim=1)
        return self.head(a, b, batch, c=c[0] if c else None)

    def head(self, a: torch.Tensor, b: torch.Tensor, batch: Mapping[str, torch.Tensor], *,
             c: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``mu = mu_0 + sd_0 * a (+ t * c)``, ``sigma = sd_0 * exp(b) + floor``, where
        ``(mu_0, sd_0)`` is the anchor EMOS's mean and std (``anchor="emos_*"``) or the raw
        ensemble mean and std of the target channel, the std floored at ``sigma_eps`` target
        stds (``anchor="raw"``), and ``t`` the target's local training std
        (``mean_shift="ensemble+local"`` only); ``a = b = c = 0`` reproduces the anchor (up to
        the tiny initial learned floor, the same as the anchor's own).

        Why ``t * c``: where the members collapse (a damped, saturated extreme: the raw spread
        is a few percent of the error), a correction in units of the raw spread needs ``|a|``
        in the hundreds, which a zero-initialised, weight-decayed layer never reaches."""
        mu_ens, sd_ens = ensemble_moments(self.raw_target_members(batch))
        if self.anchor is not None:
            mu0, var0 = self.anchor.moments_from(batch, mu_ens, sd_ens)
            sd0 = var0.sqrt()
        else:
            mu0, sd0 = mu_ens, torch.maximum(sd_ens, self.options["sigma_eps"] * self._tstd())
        mu = mu0 + sd0 * a
        if c is not None:
            mu = mu + self.target_scale(batch) * c
        return self.finish(mu, sd0 * torch.exp(b.clamp(-20.0, 20.0)))

    def target_scale(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The targets' training std as :meth:`channel_stats` reads the channels':
        ``[B, T, H, W]`` (local normalisation) or ``[1, T, 1, 1]`` (global)."""
        if self.options["normalization"] == "global":
            return self._tstd()
        h, w = batch["inputs"].shape[3:]
        return self.norm.lookup("target_std_local", batch["y0"], batch["x0"], h, w)

    def finish(self, loc: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add the learned floor and return the output dict of ``self.distribution``.

        ``scale`` is the predictive std; for ``censored_logistic`` it is converted to the
        logistic scale (``std * sqrt(3) / pi``) of the latent (uncensored) distribution, and
        ``mu``/``sigma`` are the censored distribution's mean/std (detached from the graph).
        """
        floor = nn.functional.softplus(self.sigma_floor)[None, :, None, None] * self._tstd()
        scale = scale + floor
        if self.distribution == "gaussian":
            return {"mu": loc, "sigma": scale}
        scale = scale * _LOGISTIC_SCALE_PER_STD
        with torch.no_grad():  # summary moments: the loss uses loc/scale, so no graph here
            mean, std = censored_logistic_moments(loc, scale)
        return {"mu": mean, "sigma": std, "loc": loc, "scale": scale}

    # ---- forward and loss -----------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        if self.tail_weight:
            self._tail_origin = (batch["y0"], batch["x0"])
        return self._forward(batch)

    def _forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _forward")

    def loss(
        self, out: Mapping[str, torch.Tensor], target: torch.Tensor, *, estimator: str | None = None
    ) -> torch.Tensor:
        """Mean closed-form CRPS over valid targets, each divided by its target's global std.

        ``estimator`` defaults to (and must equal) ``self.crps_estimator``.
        """
        loss = _distribution_loss(out, target, self.norm.target_std, self.distribution, estimator)
        if self.tail_weight and self.training:
            loss = loss + self.tail_weight * self.tail_loss(out, target)
        return loss

    @property
    def tail_weight(self) -> float:
        return float(self.options["tail_weight"])

    def tail_loss(self, out: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The threshold-weighted CRPS (:func:`models.losses.twcrps_gaussian`) of both tails,
        summed, each target divided by its global std: thresholds are the local training
        climatology's 5 % and 95 % quantiles under a normal approximation
        (``target_mean_local -/+ 1.645 target_std_local``). Needs the batch's ``y0``/``x0``,
        which :meth:`forward` keeps for it (``_tail_origin``)."""
        y0, x0 = self._tail_origin
        h, w = target.shape[-2:]
        mean = self.norm.lookup("target_mean_local", y0, x0, h, w)
        std = self.norm.lookup("target_std_local", y0, x0, h, w)
        total = target.new_zeros(())
        for tail, sign in (("upper", 1.0), ("lower", -1.0)):
            thr = mean + sign * _TAIL_Z * std
            total = total + reduce_crps(
                lambda y, thr=thr, tail=tail: twcrps_gaussian(out["mu"], out["sigma"], y, thr, tail=tail),
                target, target_scale=self.norm.target_std)
        return total

    def raw_loss(self, batch: Mapping[str, torch.Tensor], *, estimator: str = "fair") -> torch.Tensor:
        """The same normalised mean CRPS for the raw members of the target channels
        (ensemble estimator ``fair`` or ``standard``): the baseline to beat."""
        members = self.raw_target_members(batch)
        return reduce_crps(
            lambda y: crps_ensemble(members, y, member_dim=1, estimator=estimator),  # type: ignore[arg-type]
            batch["target"],
            target_scale=self.norm.target_std,
        )


def _distribution_loss(
    out: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    target_std: torch.Tensor,
    distribution: str,
    estimator: str | None,
) -> torch.Tensor:
    expected = CLOSED_FORM_ESTIMATOR[distribution]
    if estimator is not None and estimator != expected:
        raise LossError(
            f"estimator {estimator!r} does not apply to a {distribution!r} model: its CRPS "
            f"estimator is {expected!r} (closed form)"
        )
    return reduce_crps(
        lambda y: distribution_crps(out, y, distribution=distribution), target, target_scale=target_std
    )


def loss_for(spec: ModelSpec):  # noqa: ANN201 - returns a closure
    """The loss function of ``spec`` without building the model:
    ``fn(out, target, *, estimator=None) -> scalar`` (same as :meth:`PostProcessor.loss`)."""
    std = resolve_stats(
        spec.stats,
        channels=spec.channels,
        targets=spec.targets,
        target_channels=spec.target_channels,
        grid_shape=spec.grid_shape,
    )["target_std"]
    std_t = torch.as_tensor(std)

    def fn(out: Mapping[str, torch.Tensor], target: torch.Tensor, *, estimator: str | None = None) -> torch.Tensor:
        return _distribution_loss(out, target, std_t.to(target.device), spec.distribution, estimator)

    return fn


def as_sequence(value: Any, name: str) -> Sequence[int]:
    """An int or a sequence of ints from an option (``hidden=64`` or ``hidden=[64, 64]``)."""
    if isinstance(value, int):
        return [value]
    try:
        seq = [int(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ModelSpecError(f"option {name}={value!r} must be an int or a list of ints") from err
    return seq
