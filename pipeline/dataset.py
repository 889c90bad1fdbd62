"""The torch Dataset over aligned samples: random patches for training, whole fields or
tiles for inference, all stations of a date for point data; deterministic given a seed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from enspp.data.errors import EnsppError
from enspp.data.schema import LATITUDE, LONGITUDE
from enspp.pipeline.config import MembersConfig
from enspp.pipeline.features import doy_encoding
from enspp.pipeline.members import choose_members
from enspp.pipeline.reader import StoreReader
from enspp.pipeline.stats import NormStats
from enspp.pipeline.tiles import Tile, tile_slices


class InputNaNError(EnsppError):
    """An input field holds NaN and ``nan_policy`` is ``error``."""


class EnsembleDataset(Dataset):
    """Samples ``(init_time, lead_time)`` read from the stores one init time at a time.

    ``mode="train"``: one item per sample, a random patch (``patch_size``) and, for the
    ``random`` strategy, a random member draw, both from a generator seeded by
    ``(seed, index)`` or by the ``(index, draw_seed)`` pair an :class:`EpochSampler` yields.
    ``mode="eval"``: one item per sample and tile (``tiles``; the whole field by default),
    members drawn deterministically.  Point data (``grid_shape == (n_stations, 1)``): one
    item per sample holding every station.  Items carry a leading rows dim (1 for grids,
    stations for point data); :func:`collate_rows` concatenates them into a batch.
    """

    def __init__(self, reader: StoreReader, *, init_times: np.ndarray, lead_time: np.timedelta64,
                 channels: Sequence[str], members: MembersConfig, store_members: np.ndarray,
                 static: np.ndarray, grid_shape: tuple[int, int], point: bool,
                 mode: Literal["train", "eval"] = "train", patch_size: int | None = None,
                 tiles: list[Tile] | None = None, seed: int = 0,
                 nan_policy: Literal["error", "mask"] = "error", stats: NormStats | None = None):
        if nan_policy == "mask" and stats is None:
            raise ValueError("nan_policy 'mask' needs normalisation statistics (stats)")
        self.reader = reader
        self.init_times = np.asarray(init_times, dtype="datetime64[ns]")
        self.lead_time = np.timedelta64(lead_time, "ns")
        self.channels = tuple(channels)
        self.members_cfg = members
        self.store_members = np.asarray(store_members, dtype=np.int64)
        self.static = static
        self.grid_shape = grid_shape
        self.point = point
        self.mode = mode
        self.seed = seed
        self.nan_policy = nan_policy
        self.stats = stats
        ny, nx = grid_shape
        if point or mode == "train":
            self.tiles = [(slice(0, ny), slice(0, nx))]
        else:
            self.tiles = tiles or tile_slices(grid_shape, tile=None)
        self.patch = None if point or patch_size is None else (min(patch_size, ny),
                                                               min(patch_size, nx))

    def __len__(self) -> int:
        return len(self.init_times) * len(self.tiles)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, np.ndarray]:
        index, draw_seed = item if isinstance(item, tuple) else (item, None)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range 0..{len(self) - 1}")
        s, t = divmod(index, len(self.tiles))
        rng = np.random.default_rng(
            [self.seed, s] if self.mode == "eval" or draw_seed is None else [self.seed, draw_seed])
        sy, sx = self.tiles[t]
        if self.mode == "train" and self.patch is not None:
            ph, pw = self.patch
            y0 = int(rng.integers(0, self.grid_shape[0] - ph + 1))
            x0 = int(rng.integers(0, self.grid_shape[1] - pw + 1))
            sy, sx = slice(y0, y0 + ph), slice(x0, x0 + pw)
        members = choose_members(self.store_members, config=self.members_cfg, rng=rng)
        return self._read(s, members, sy, sx)

    def _read(self, s: int, members: np.ndarray, sy: slice, sx: slice) -> dict[str, np.ndarray]:
        init = self.init_times[s]
        valid = init + self.lead_time
        region = {} if self.point else {LATITUDE: sy, LONGITUDE: sx}
        inputs = self.reader.read_inputs(init, members=members, region=region)  # [K, C, ...]
        target = self.reader.read_targets(valid, region=region)  # [T, ...]
        inputs, target = self._nan(inputs, target, init, members, sy, sx)
        sin_d, cos_d = doy_encoding(valid)
        static = self.static[:, sy, sx]
        doy = np.broadcast_to(np.array([sin_d, cos_d], np.float32)[:, None, None],
                              (2, *static.shape[1:]))
        static = np.concatenate([static, doy]).astype(np.float32)
        if self.point:
            n = inputs.shape[-1]
            rows = {"inputs": np.moveaxis(inputs, -1, 0)[..., None, None],
                    "static": np.moveaxis(static, 1, 0)[..., None],
                    "target": np.moveaxis(target, -1, 0)[..., None, None],
                    "y0": np.zeros(n, np.int64), "x0": np.arange(n, dtype=np.int64)}
        else:
            n = 1
            rows = {"inputs": inputs[None], "static": static[None], "target": target[None],
                    "y0": np.array([sy.start], np.int64), "x0": np.array([sx.start], np.int64)}
        rows["init_time"] = np.full(n, init.astype(np.int64), np.int64)
        rows["lead_time"] = np.full(n, self.lead_time.astype(np.int64), np.int64)
        return rows

    def _nan(self, inputs: np.ndarray, target: np.ndarray, init: np.datetime64,
             members: np.ndarray, sy: slice, sx: slice) -> tuple[np.ndarray, np.ndarray]:
        bad = np.isnan(inputs)
        if not bad.any():
            return inputs, target
        if self.nan_policy == "error":
            k, c = (int(i) for i in np.argwhere(bad.reshape(*bad.shape[:2], -1).any(-1))[0])
            raise InputNaNError(
                f"input {self.channels[c]} (member {int(members[k])}, 0-based) holds "
                f"{int(bad[k, c].sum())} NaN values at init time {pd.Timestamp(init)}; set "
                "pipeline.nan_policy to 'mask' to replace them by the training mean and mask "
                "the target there")
        assert self.stats is not None
        mean = self.stats.channel_mean_local  # [C, Ny, Nx] or [C, S, 1]
        mean = mean[:, :, 0] if self.point else mean[:, sy, sx]
        inputs = np.where(bad, np.broadcast_to(mean[None], inputs.shape), inputs)
        target = np.where(bad.any(axis=(0, 1))[None], np.nan, target).astype(np.float32)
        return inputs.astype(np.float32), target


def collate_rows(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Concatenate items along their rows dim into a batch of tensors (B = sum of rows)."""
    return {k: torch.from_numpy(np.ascontiguousarray(np.concatenate([it[k] for it in items])))
            for k in items[0]}


class EpochSampler(Sampler):
    """Yields ``(index, draw_seed)``: a shuffled order (when ``shuffle``) and a fresh draw seed
    per item and epoch, all from ``seed`` and the epoch count, so runs are reproducible and
    every epoch draws new patches/members.  ``samples_per_epoch`` samples with replacement
    across epochs (indices cycle through fresh permutations)."""

    def __init__(self, n: int, *, seed: int, shuffle: bool = True,
                 samples_per_epoch: int | None = None):
        if n < 1:
            raise ValueError("EpochSampler needs at least one sample")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.samples_per_epoch = samples_per_epoch or n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order: list[int] = []
        while len(order) < self.samples_per_epoch:
            order.extend((rng.permutation(self.n) if self.shuffle else np.arange(self.n)).tolist())
        draws = rng.integers(0, 2**62, size=self.samples_per_epoch)
        return iter([(int(i), int(d)) for i, d in zip(order[: self.samples_per_epoch], draws)])
