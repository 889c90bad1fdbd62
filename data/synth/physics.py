"""The physics of the synthetic world: grid, geography, climatology, smooth noise, advection.

Everything here is a pure function of its arguments (random numbers come in as a
``numpy.random.Generator``).  Latent anomalies are in units of the local climatological
standard deviation; :class:`VarSpec` maps them to physical units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["VarSpec", "VAR_SPECS", "G", "grid_coords", "static_fields", "smooth_noise",
           "zonal_shift_gp", "roll_rows", "shift_rows_fractional", "season_phase"]

#: standard gravity (m s-2): geopotential = G * height
G = 9.80665


@dataclass(frozen=True)
class VarSpec:
    """One variable of the world: its latent process, climate, and forecast-error model."""

    name: str  # addressable name, e.g. "z500"
    short: str  # ECMWF short name, e.g. "z"
    level: int | None  # hPa, None for single-level variables
    units: str
    phi: float  # day-to-day persistence of the latent anomaly (AR(1) coefficient)
    scale_deg: float  # spatial scale (degrees) of the innovations
    parent: str | None = None  # innovations correlated with this variable's
    parent_corr: float = 0.0
    # forecast error model (latent units)
    damp_pos: float = 2.0  # amplitude damping k*tanh(a/k) of positive anomalies
    damp_neg: float = 2.0  # ... of negative anomalies
    lag: float = 0.3  # forecast features lag this fraction of the true eastward motion
    kappa_tropics: float = 0.5  # member spread / true spread in the tropics
    kappa_extratropics: float = 0.7  # ... poleward of ~45 degrees
    bias: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    """latent-unit bias: constant, * cos(2 lat), * land, * land * winterness, * orography/1000 m"""
    events: dict[str, float] = field(default_factory=dict)  # event kind -> latent amplitude

    def climate(self, lat: np.ndarray, lon: np.ndarray, lsm: np.ndarray, orog: np.ndarray,
                doy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Climatological mean and standard deviation, shape ``doy.shape + lat.shape``."""
        s = np.sin(np.deg2rad(lat))
        w = season_phase(doy)[..., None, None] * s  # +1 in the local winter
        mean, sd = _CLIMATES[self.name](s, np.deg2rad(lon), lsm, orog, w)
        shape = np.broadcast_shapes(np.shape(doy) + lsm.shape, np.shape(mean), np.shape(sd))
        return np.broadcast_to(mean, shape), np.broadcast_to(sd, shape)

    def bias_field(self, lat: np.ndarray, lsm: np.ndarray, orog: np.ndarray,
                   doy: np.ndarray) -> np.ndarray:
        """Systematic forecast error in latent units (depends on latitude, land, season)."""
        c0, c_lat, c_land, c_season, c_orog = self.bias
        w = season_phase(doy)[..., None, None] * np.sin(np.deg2rad(lat))
        return (c0 + c_lat * np.cos(2 * np.deg2rad(lat)) + c_land * lsm
                + c_season * lsm * w + c_orog * orog / 1000.0)

    def kappa(self, lat: np.ndarray) -> np.ndarray:
        """Mis-scaling of the member spread (< 1: under-dispersive), by latitude."""
        s2 = np.clip(np.sin(np.deg2rad(lat)) ** 2 * 2.0, 0.0, 1.0)
        return self.kappa_tropics + (self.kappa_extratropics - self.kappa_tropics) * s2


def season_phase(doy: np.ndarray) -> np.ndarray:
    """+1 in mid-January, -1 in mid-July (northern winter -> positive)."""
    return np.cos(2 * np.pi * (np.asarray(doy, dtype=float) - 15.0) / 365.25)


def _clim_z500(s, lon, lsm, orog, w):
    height = (5860.0 - 560.0 * s**2 - 90.0 * w * np.abs(s)
              + 45.0 * np.cos(2 * lon) * (2 * s * np.sqrt(1 - s**2)) ** 2 - 0.01 * orog)
    sd = 18.0 + 95.0 * np.abs(s) ** 1.3 * (1.0 + 0.25 * np.clip(w, 0, None))
    return G * height, G * sd


def _clim_z850(s, lon, lsm, orog, w):
    height = 1520.0 - 120.0 * s**2 - 30.0 * w * np.abs(s) + 20.0 * np.cos(2 * lon) * s**2
    sd = 12.0 + 70.0 * np.abs(s) ** 1.3 * (1.0 + 0.25 * np.clip(w, 0, None))
    return G * height, G * sd


def _clim_t500(s, lon, lsm, orog, w):
    mean = 268.0 - 30.0 * s**2 - 4.0 * w * np.abs(s)
    sd = 0.8 + 2.6 * np.abs(s) * (1.0 + 0.2 * np.clip(w, 0, None))
    return mean + 0.0 * lsm, sd + 0.0 * lsm


def _clim_t850(s, lon, lsm, orog, w):
    mean = 294.0 - 38.0 * s**2 - w * (3.0 + 7.0 * lsm * np.abs(s)) - 0.002 * orog
    sd = 0.9 + 3.2 * np.abs(s) * (1.0 + 0.2 * np.clip(w, 0, None)) + 0.6 * lsm
    return mean, sd


def _clim_t2m(s, lon, lsm, orog, w):
    mean = 300.5 - 44.0 * s**2 - w * (2.5 + 14.0 * lsm * np.abs(s)) - 0.0065 * orog
    sd = 0.7 + (1.2 + 2.8 * lsm) * np.abs(s) * (1.0 + 0.3 * np.clip(w, 0, None)) + 0.8 * lsm
    return mean, sd


def _clim_msl(s, lon, lsm, orog, w):
    mean = 101300.0 + 400.0 * np.cos(3 * np.arcsin(s)) + 300.0 * w * lsm
    sd = 150.0 + 1100.0 * np.abs(s) ** 1.3
    return mean + 0.0 * orog, sd + 0.0 * orog


_CLIMATES = {"z500": _clim_z500, "z850": _clim_z850, "t500": _clim_t500,
             "t850": _clim_t850, "t2m": _clim_t2m, "msl": _clim_msl}

#: The variables the world knows.  z500 is the root of the innovation correlations and the
#: flow indicator, so it is always simulated (written only when asked for).
VAR_SPECS: dict[str, VarSpec] = {v.name: v for v in [
    VarSpec("z500", "z", 500, "m2 s-2", phi=0.90, scale_deg=7.0,
            damp_pos=2.2, damp_neg=1.8, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(0.10, -0.15, 0.0, 0.30, 0.0),
            events={"heat_dome": 2.0, "deep_low": -3.6}),
    VarSpec("z850", "z", 850, "m2 s-2", phi=0.88, scale_deg=6.0, parent="z500", parent_corr=0.85,
            damp_pos=2.2, damp_neg=1.8, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(0.05, -0.10, 0.10, 0.30, -0.10),
            events={"heat_dome": 1.2, "deep_low": -3.4}),
    VarSpec("t500", "t", 500, "K", phi=0.86, scale_deg=6.0, parent="z500", parent_corr=0.6,
            damp_pos=2.0, damp_neg=2.0, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(-0.10, 0.15, 0.0, 0.25, 0.0),
            events={"heat_dome": 2.0, "deep_low": -2.0}),
    VarSpec("t850", "t", 850, "K", phi=0.86, scale_deg=5.5, parent="z500", parent_corr=0.55,
            damp_pos=1.7, damp_neg=2.1, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(-0.15, 0.15, 0.10, 0.40, 0.10),
            events={"heat_dome": 3.2, "deep_low": -1.5}),
    VarSpec("t2m", "t2m", None, "K", phi=0.82, scale_deg=4.5, parent="t850", parent_corr=0.7,
            damp_pos=1.5, damp_neg=2.0, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(-0.20, 0.10, 0.15, 0.55, 0.30),
            events={"heat_dome": 3.6, "deep_low": -0.8}),
    VarSpec("msl", "msl", None, "Pa", phi=0.85, scale_deg=6.0, parent="z850", parent_corr=0.85,
            damp_pos=2.2, damp_neg=1.8, lag=0.35, kappa_tropics=0.45, kappa_extratropics=0.65,
            bias=(0.05, -0.10, 0.10, 0.25, -0.15),
            events={"heat_dome": 0.8, "deep_low": -3.6}),
]}


def ancestry(names: tuple[str, ...]) -> list[str]:
    """The variables to simulate for ``names``: each with its parents, parents first, z500 first."""
    order: list[str] = []

    def visit(name: str) -> None:
        parent = VAR_SPECS[name].parent
        if parent is not None:
            visit(parent)
        if name not in order:
            order.append(name)

    visit("z500")
    for name in names:
        visit(name)
    return order


def grid_coords(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Global regular grid, latitude descending (as in GRIB).

    An odd ``n_lat`` includes the poles (181 -> 90, 89, ..., -90); an even one uses cell
    centres (32 -> 87.1875 ... -87.1875).  Longitudes start at 0.
    """
    if n_lat % 2:
        lat = np.linspace(90.0, -90.0, n_lat)
    else:
        d = 180.0 / n_lat
        lat = 90.0 - d / 2 - d * np.arange(n_lat)
    lon = np.arange(n_lon) * (360.0 / n_lon)
    return lat, lon


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], *, lat: np.ndarray,
                 lon: np.ndarray, scale_deg: float) -> np.ndarray:
    """Gaussian random fields of unit variance at every point, spatially correlated.

    White noise on a torus (latitude padded by four kernel widths so the poles do not see each
    other) is filtered in spectral space by a Gaussian kernel of width ``scale_deg``; the exact
    variance of the filter normalises the result, so each point is N(0, 1).  Computed in
    float32; returns ``shape + (n_lat, n_lon)``.
    """
    n_lat, n_lon = lat.size, lon.size
    ny, filt = _spectral_filter(n_lat, n_lon, float(scale_deg))
    white = rng.standard_normal((*shape, ny, n_lon), dtype=np.float32)
    spec = np.fft.rfft2(white) * filt
    return np.fft.irfft2(spec, s=(ny, n_lon))[..., :n_lat, :]


@functools.lru_cache(maxsize=32)
def _spectral_filter(n_lat: int, n_lon: int, scale_deg: float) -> tuple[int, np.ndarray]:
    """Padded latitude count and the normalised Gaussian filter (rfft2 layout) of
    :func:`smooth_noise` (computed once per grid and scale: it is called per init)."""
    dlat, dlon = 180.0 / n_lat, 360.0 / n_lon
    ny = n_lat + int(np.ceil(4.0 * scale_deg / dlat)) + 1
    ny += ny % 2
    ky = np.fft.fftfreq(ny, d=dlat)[:, None]
    kx = np.fft.fftfreq(n_lon, d=dlon)[None, :]
    h = np.exp(-2.0 * (np.pi * scale_deg) ** 2 * (ky**2 + kx**2))
    norm = np.sqrt(np.mean(h**2))
    filt = (h[:, : n_lon // 2 + 1] / norm).astype(np.float32)
    filt.flags.writeable = False
    return ny, filt


def zonal_shift_gp(lat: np.ndarray, n_lon: int) -> np.ndarray:
    """Eastward motion of weather systems in whole grid points per day, per latitude row.

    Westerly jets near 45 degrees (~11 degrees/day, ~10 m/s), tropical easterlies.
    """
    a = np.abs(lat)
    u_deg = 11.0 * np.exp(-(((a - 45.0) / 18.0) ** 2)) - 4.0 * np.exp(-((lat / 15.0) ** 2))
    return np.rint(u_deg / (360.0 / n_lon)).astype(int)


def roll_rows(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Roll each latitude row of ``x`` (last two dims lat, lon) east by ``shift[row]`` points."""
    n_lon = x.shape[-1]
    idx = (np.arange(n_lon)[None, :] - shift[:, None]) % n_lon
    return np.take_along_axis(x, np.broadcast_to(idx, x.shape), axis=-1)


def shift_rows_fractional(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shift each latitude row east by a fractional number of grid points (spectral)."""
    n_lon = x.shape[-1]
    k = np.arange(n_lon // 2 + 1)
    phase = np.exp(-2j * np.pi * k[None, :] * shift[:, None] / n_lon)
    phase[:, -1] = np.cos(np.pi * shift)  # Nyquist mode stays real
    return np.fft.irfft(np.fft.rfft(x, axis=-1) * phase, n=n_lon, axis=-1)


def static_fields(rng: np.random.Generator, lat: np.ndarray,
                  lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Land-sea mask (0/1, about 30 % land, an Antarctic continent) and orography (m)."""
    base = smooth_noise(rng, (), lat=lat, lon=lon, scale_deg=22.0)
    lat2 = np.broadcast_to(lat[:, None], base.shape)
    base = base + 0.6 * np.exp(-(((lat2 - 45.0) / 20.0) ** 2)) - 2.0 * (lat2 > 80)
    threshold = np.quantile(base, 0.70)
    lsm = (base > threshold) | (lat2 < -68.0)
    lsm = lsm.astype(np.float64)
    ridges = smooth_noise(rng, (), lat=lat, lon=lon, scale_deg=9.0)
    orog = lsm * (250.0 + 700.0 * np.clip(ridges, 0, None) ** 2
                  + 600.0 * np.clip(base - threshold, 0, None))
    orog = np.where(lat2 < -68.0, np.maximum(orog, 2400.0), orog)
    return lsm, np.clip(orog, 0.0, 5000.0)
