"""Normalisation statistics inside the model: validated once, held as buffers.

The pipeline's ``NormStats.to_dict()`` (a dict of numpy arrays) is resolved by
:func:`resolve_stats` into eight float32 arrays with fixed names (keys of :data:`STAT_KEYS`):

* ``channel_mean`` / ``channel_std`` ``[C]`` (required) and ``channel_mean_local`` /
  ``channel_std_local`` ``[C, Ny, Nx]`` (per grid point or station);
* ``target_mean`` / ``target_std`` ``[T]`` and ``target_mean_local`` / ``target_std_local``
  ``[T, Ny, Nx]``.

Robustness rules (said once): a few spellings of each key are accepted (see
:data:`STAT_ALIASES`); missing local statistics are the global ones broadcast; missing target
statistics are the channel statistics at ``target_channels``; non-finite or non-positive local
std (and non-finite local mean) fall back to the global value of that channel. Global
statistics must be finite with std > 0. A ``channels``/``targets`` name list in the dict must
match the spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from enspp.data.errors import EnsppError

STAT_ALIASES: dict[str, tuple[str, ...]] = {
    "channel_mean": ("channel_mean", "mean", "mean_global", "channel_mean_global", "global_mean"),
    "channel_std": ("channel_std", "std", "std_global", "channel_std_global", "global_std"),
    "channel_mean_local": ("channel_mean_local", "mean_local", "local_mean", "channel_local_mean"),
    "channel_std_local": ("channel_std_local", "std_local", "local_std", "channel_local_std"),
    "target_mean": ("target_mean", "target_mean_global", "global_target_mean"),
    "target_std": ("target_std", "target_std_global", "global_target_std"),
    "target_mean_local": ("target_mean_local", "local_target_mean", "target_local_mean"),
    "target_std_local": ("target_std_local", "local_target_std", "target_local_std"),
}
STAT_KEYS: tuple[str, ...] = tuple(STAT_ALIASES)


class StatsError(EnsppError):
    """The normalisation statistics are missing, malformed or inconsistent with the spec."""


def _find(stats: Mapping[str, object], key: str) -> np.ndarray | None:
    for alias in STAT_ALIASES[key]:
        if alias in stats and stats[alias] is not None:
            return np.asarray(stats[alias])
    return None


def _check_names(stats: Mapping[str, object], key: str, expected: Sequence[str]) -> None:
    if key not in stats or stats[key] is None:
        return
    names = [str(n) for n in np.asarray(stats[key]).reshape(-1).tolist()]
    if names != [str(n) for n in expected]:
        raise StatsError(f"stats[{key!r}] = {names} does not match the spec's {key} {list(expected)}")


def _global(arr: np.ndarray | None, key: str, n: int, *, is_std: bool) -> np.ndarray:
    if arr is None:
        raise StatsError(f"stats lack {key!r} (accepted keys: {STAT_ALIASES[key]})")
    arr = np.asarray(arr, dtype=np.float64).reshape(-1) if arr.ndim <= 1 else arr
    if arr.shape != (n,):
        raise StatsError(f"stats[{key!r}] has shape {arr.shape}, expected ({n},)")
    if not np.all(np.isfinite(arr)):
        raise StatsError(f"stats[{key!r}] holds non-finite values: {arr.tolist()}")
    if is_std and np.any(arr <= 0):
        raise StatsError(f"stats[{key!r}] must be > 0, got {arr.tolist()}")
    return arr.astype(np.float32)


def _local(
    arr: np.ndarray | None, key: str, glob: np.ndarray, grid_shape: tuple[int, int], *, is_std: bool
) -> np.ndarray:
    n = glob.shape[0]
    full = (n, *grid_shape)
    if arr is None:
        return np.broadcast_to(glob[:, None, None], full).astype(np.float32)
    arr = np.asarray(arr)
    if arr.dtype != np.float32:  # float32 statistics (the pipeline's) are checked as they are
        arr = arr.astype(np.float64)
    if arr.size != int(np.prod(full)):
        raise StatsError(f"stats[{key!r}] has shape {arr.shape}, expected {full}")
    arr = arr.reshape(full)
    bad = ~np.isfinite(arr)
    if is_std:
        bad |= arr <= 0
    if not bad.any():  # the usual case: a float32 copy, no masked pass
        return arr.astype(np.float32)
    return np.where(bad, glob[:, None, None], arr).astype(np.float32)


def resolve_stats(
    stats: Mapping[str, object],
    *,
    channels: Sequence[str],
    targets: Sequence[str],
    target_channels: Sequence[int],
    grid_shape: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Validate ``stats`` against a spec and return the eight arrays of :data:`STAT_KEYS`."""
    if not isinstance(stats, Mapping):
        raise StatsError(f"stats must be a mapping of numpy arrays, got {type(stats).__name__}")
    _check_names(stats, "channels", channels)
    _check_names(stats, "targets", targets)
    n_c, tc = len(channels), list(target_channels)
    out: dict[str, np.ndarray] = {}
    for part, n in (("channel", n_c), ("target", len(tc))):
        for moment in ("mean", "std"):
            key, is_std = f"{part}_{moment}", moment == "std"
            arr = _find(stats, key)
            if part == "target" and arr is None:
                arr = out[f"channel_{moment}"][tc]
            out[key] = _global(arr, key, n, is_std=is_std)
            local = _find(stats, key + "_local")
            if part == "target" and local is None and _find(stats, key) is None:
                local = out[f"channel_{moment}_local"][tc]
            out[key + "_local"] = _local(local, key + "_local", out[key], grid_shape, is_std=is_std)
    return out


class Normalizer(nn.Module):
    """Buffers of the resolved statistics, and their lookup for a batch's patch or stations.

    Grid data: a patch ``[y0:y0+H, x0:x0+W]`` of the full ``(Ny, Nx)`` grid. Point data
    (``point=True``, grid ``(n_stations, 1)``): ``x0`` is the station index, ``H = W = 1``.
    """

    def __init__(self, resolved: Mapping[str, np.ndarray], *, point: bool) -> None:
        super().__init__()
        self.point = point
        for key in STAT_KEYS:
            self.register_buffer(key, torch.as_tensor(np.ascontiguousarray(resolved[key])))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.channel_mean_local.shape[1:])  # type: ignore[return-value]

    def lookup(self, key: str, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The local statistic ``key`` for each batch element's patch: ``[B, n, h, w]``."""
        return gather_patch(getattr(self, key), y0, x0, h, w, point=self.point)


def gather_patch(
    table: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int, *, point: bool
) -> torch.Tensor:
    """Per-batch patches ``[B, n, h, w]`` of a per-grid-point ``table`` ``[n, Ny, Nx]``.

    Grid data: rows ``y0:y0+h``, columns ``x0:x0+w``. Point data (``table`` ``[n, n_stations,
    1]``): ``x0`` is the station index and ``h = w = 1``. Out-of-range origins raise. One grid
    patch is a view of ``table`` (not to be written to), several a gathered copy.
    """
    ny, nx = table.shape[1:]
    y0 = torch.as_tensor(y0).to(device=table.device, dtype=torch.long).reshape(-1)
    x0 = torch.as_tensor(x0).to(device=table.device, dtype=torch.long).reshape(-1)
    if point:
        if (h, w) != (1, 1):
            raise StatsError(f"point data need H = W = 1 per station, got H={h}, W={w}")
        _check_range(x0, ny, "x0 (station index)")
        return table[:, x0, 0].transpose(0, 1)[:, :, None, None]
    _check_range(y0, ny - h + 1, f"y0 (patch of height {h} in a grid of {ny} rows)")
    _check_range(x0, nx - w + 1, f"x0 (patch of width {w} in a grid of {nx} columns)")
    if len(y0) == len(x0) == 1:  # one patch (predict's whole field or tile): a view, no gathered copy
        y, x = int(y0[0]), int(x0[0])
        return table[None, :, y:y + h, x:x + w]
    iy = y0[:, None] + torch.arange(h, device=table.device)
    ix = x0[:, None] + torch.arange(w, device=table.device)
    return table[:, iy[:, :, None], ix[:, None, :]].transpose(0, 1)


def _check_range(idx: torch.Tensor, stop: int, what: str) -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= stop):
        raise StatsError(
            f"{what} out of range: got {int(idx.min())}..{int(idx.max())}, allowed 0..{stop - 1}"
        )
