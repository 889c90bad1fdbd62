"""The torch Dataset over aligned samples: random patches for training, whole fields or
tiles for inference, all stations of a date for point data; deterministic given a seed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from enspp.data.errors import EnsppError
from enspp.data.schema import LATITUDE, LONGITUDE
from enspp.pipeline.config import MembersConfig
from enspp.pipeline.features import doy_encoding
from enspp.pipeline.members import choose_members
from enspp.pipeline.reader import SampleRead, StoreReader
from enspp.pipeline.stats import NormStats
from enspp.pipeline.tiles import Tile, tile_slices


class InputNaNError(EnsppError):
    """An input field holds NaN and ``nan_policy`` is ``error``."""


class WholeItem(NamedTuple):
    """An item of a training dataset's :attr:`EnsembleDataset.whole` companion: the training
    loader's workers read an exact fit's pass over whole fields (or tiles) with these."""

    index: int


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
                 nan_policy: Literal["error", "mask"] = "error", stats: NormStats | None = None,
                 static_index: Sequence[int] | None = None, record_features=None,
                 lead_times: Sequence[np.timedelta64] | None = None, member_nan: bool = False):
        if nan_policy == "mask" and stats is None:
            raise ValueError("nan_policy 'mask' needs normalisation statistics (stats)")
        self.reader = reader
        self.init_times = np.asarray(init_times, dtype="datetime64[ns]")
        self.lead_time = np.timedelta64(lead_time, "ns")
        #: the target leads: sample ``s`` is init time ``s // n_leads`` at lead ``s % n_leads``
        self.lead_times = tuple(np.timedelta64(x, "ns") for x in (lead_times or (lead_time,)))
        self.channels = tuple(channels)
        #: training samples draw their members by ``members.training()`` (``train_draw``)
        self.members_cfg = members.training() if mode == "train" else members
        self.store_members = np.asarray(store_members, dtype=np.int64)
        self.static = static
        self.grid_shape = grid_shape
        self.point = point
        self.mode = mode
        self.seed = seed
        self.nan_policy = nan_policy
        self.stats = stats
        #: ``nan_policy: mask`` over a pool of members of which a later step draws some
        #: (:class:`PreloadedBatches` ``draw``): batches carry ``member_nan`` (rows, members,
        #: y, x: where each member was missing) and the target is masked only where a drawn
        #: member is, not where any member of the pool is
        self.member_nan = member_nan and nan_policy == "mask"
        #: batches in page-locked memory (set by the DataModule when the main process feeds a GPU)
        self.pin_memory = False
        self.reader_targets = len(reader.targets)
        ny, nx = grid_shape
        if point or mode == "train":
            self.tiles = [(slice(0, ny), slice(0, nx))]
        else:
            self.tiles = tiles or tile_slices(grid_shape, tile=None)
        self.patch = None if point or patch_size is None else (min(patch_size, ny),
                                                               min(patch_size, nx))
        #: positions in (``static`` fields + sin/cos day of year) of the static features asked
        #: for (all by default); ``record_features``: ``init_time -> [F, n_stations]`` (station
        #: record features, ``pipeline.station_features``) appended after them
        n_all = static.shape[0] + 2
        self.static_index = (np.arange(n_all) if static_index is None
                             else np.asarray(static_index, dtype=np.int64))
        self.record_features = record_features
        #: the same init times in ``eval`` mode (whole fields or tiles), read for
        #: :class:`WholeItem` items: one pass for an exact fit through this dataset's loader
        self.whole: EnsembleDataset | None = None
        #: the shared-memory blocks a DataLoader's workers write batches into
        #: (:class:`pipeline.handoff.BatchRing`; set by the DataModule)
        self.ring = None
        self.n_records = 0
        if record_features is not None:
            self.n_records = int(record_features(self.init_times[0]).shape[0]) if len(self.init_times) else 0

    def __len__(self) -> int:
        return len(self.init_times) * len(self.lead_times) * len(self.tiles)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, np.ndarray]:
        """One item: numpy arrays with a leading rows dim (1, or the stations)."""
        return {k: v.numpy() for k, v in self._assemble([item], where="plain").items()}

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> dict[str, torch.Tensor]:
        """A whole batch, read straight into its tensors: in shared memory inside a
        DataLoader worker (so handing it to the main process copies nothing), in pinned
        memory when ``pin_memory`` is set (a GPU is fed from the main process).
        :class:`WholeItem` items are read from :attr:`whole`."""
        if items and isinstance(items[0], WholeItem):
            if self.whole is None:
                raise IndexError("whole-field items need the dataset's whole companion")
            self.whole.pin_memory = self.pin_memory
            return self.whole.__getitems__([int(it.index) for it in items])
        if get_worker_info() is not None:
            where = "shared"
        else:
            where = "pinned" if self.pin_memory else "plain"
        return self._assemble(items, where=where)

    def _draw(self, item: int | tuple[int, int]) -> tuple[int, np.ndarray, slice, slice]:
        """Sample number, members, and the region of an item (deterministic given the seed)."""
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
        return s, members, sy, sx

    def _assemble(self, items: Sequence[int | tuple[int, int]], *, where: str
                  ) -> dict[str, torch.Tensor]:
        draws = [self._draw(it) for it in items]
        k = len(draws[0][1])
        n_static = len(self.static_index) + self.n_records
        full_static = self.static.shape[0] + 2
        n_targets = self.reader_targets
        if self.point:
            n = self.grid_shape[0]
            rows, h, w = n * len(draws), 1, 1
        else:
            n = 1
            rows = len(draws)
            h, w = draws[0][2].stop - draws[0][2].start, draws[0][3].stop - draws[0][3].start
        specs = {"inputs": ((rows, k, len(self.channels), h, w), torch.float32),
                 "static": ((rows, n_static, h, w), torch.float32),
                 "target": ((rows, n_targets, h, w), torch.float32),
                 **{key: ((rows,), torch.int64) for key in ("init_time", "lead_time", "y0", "x0")}}
        if self.member_nan:
            specs["member_nan"] = ((rows, k, h, w), torch.bool)
        if where == "shared" and self.ring is not None:  # a worker: a reused block
            batch = self.ring.allocate(specs)
        else:
            batch = {key: _empty(shape, dtype, where) for key, (shape, dtype) in specs.items()}
        arr = {key: v.numpy() for key, v in batch.items()}
        reads = []
        for b, (s, members, sy, sx) in enumerate(draws):
            init = self.init_times[s // len(self.lead_times)]
            rs = slice(b * n, (b + 1) * n)
            if self.point:  # rows are stations: [n, K, C, 1, 1] seen as [K, C, n]
                inputs = np.moveaxis(arr["inputs"][rs, :, :, 0, 0], 0, -1)
                target = np.moveaxis(arr["target"][rs, :, 0, 0], 0, -1)
                region: dict[str, slice] = {}
            else:
                inputs, target = arr["inputs"][b], arr["target"][b]
                region = {LATITUDE: sy, LONGITUDE: sx}
            reads.append(SampleRead(init_time=init, valid_time=init + self._lead(s),
                                    members=members, region=region, inputs=inputs,
                                    target=target))
        self.reader.read(reads)
        for b, ((s, members, sy, sx), r) in enumerate(zip(draws, reads)):
            rs = slice(b * n, (b + 1) * n)
            missing = None
            if self.member_nan:  # [K, y, x] (a grid) or [K, stations] (point data)
                missing = (np.moveaxis(arr["member_nan"][rs, :, 0, 0], 0, -1) if self.point
                           else arr["member_nan"][b])
            self._nan(r.inputs, r.target, r.init_time, members, sy, sx, missing=missing)
            sin_d, cos_d = doy_encoding(r.valid_time)
            n_sel = len(self.static_index)
            if self.point:
                full = np.empty((n, full_static), np.float32)  # [n, static fields + doy]
                full[:, :-2] = self.static[:, :, 0].T
                full[:, -2], full[:, -1] = sin_d, cos_d
                static = arr["static"][rs, :, 0, 0]  # [n, S]
                static[:, :n_sel] = full[:, self.static_index]
                if self.n_records:
                    static[:, n_sel:] = self.record_features(r.init_time).T
                arr["y0"][rs] = 0
                arr["x0"][rs] = np.arange(n)
            else:
                full = np.empty((full_static, *self.static[:, sy, sx].shape[1:]), np.float32)
                full[:-2] = self.static[:, sy, sx]
                full[-2], full[-1] = sin_d, cos_d
                arr["static"][b] = full[self.static_index]
                arr["y0"][b], arr["x0"][b] = sy.start, sx.start
            arr["init_time"][rs] = r.init_time.astype(np.int64)
            arr["lead_time"][rs] = self._lead(s).astype(np.int64)
        return batch

    def _lead(self, s: int) -> np.timedelta64:
        """The target lead of sample ``s``."""
        return self.lead_times[s % len(self.lead_times)]

    def _nan(self, inputs: np.ndarray, target: np.ndarray, init: np.datetime64,
             members: np.ndarray, sy: slice, sx: slice, *, missing: np.ndarray | None = None
             ) -> None:
        """Apply ``nan_policy`` to one sample's buffers in place (a NaN-free sample costs one
        sum over its inputs).  ``missing``: where each member is missing is written there
        and the target left whole (:attr:`member_nan`)."""
        if missing is not None:
            missing[...] = False
        if not np.isnan(inputs.sum(dtype=np.float32)):
            return
        bad = np.isnan(inputs)
        if not bad.any():  # the sum met +inf and -inf, not a NaN
            return
        if self.nan_policy == "error":
            k, c = (int(i) for i in np.argwhere(bad.reshape(*bad.shape[:2], -1).any(-1))[0])
            raise InputNaNError(
                f"input {self.channels[c]} (member {int(members[k])}, 0-based) has "
                f"{int(bad[k, c].sum())} missing values (NaN) at init time {pd.Timestamp(init)}: "
                "values inside the field are missing (NaN in the source, or lost); set "
                "pipeline.nan_policy to 'mask' to replace them by the training mean and mask "
                "the target there")
        assert self.stats is not None
        mean = self.stats.channel_mean_local  # [C, Ny, Nx] or [C, S, 1]
        mean = mean[:, :, 0] if self.point else mean[:, sy, sx]
        np.copyto(inputs, np.broadcast_to(mean[None], inputs.shape), where=bad)
        if missing is not None:
            np.any(bad, axis=1, out=missing)
        else:
            target[:, bad.any(axis=(0, 1))] = np.nan


def _empty(shape: tuple[int, ...], dtype: torch.dtype, where: str) -> torch.Tensor:
    """An uninitialised tensor: ``plain``, ``pinned`` (page-locked, for fast copies to a
    GPU) or ``shared`` (shared memory, which a worker hands to the main process as is)."""
    if where == "pinned":
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    if where == "shared":
        numel = int(np.prod(shape))
        storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.empty(shape, dtype=dtype)


def collate_rows(items: list[dict[str, np.ndarray]] | dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """A batch of tensors: a batch :meth:`EnsembleDataset.__getitems__` already assembled is
    returned as it is; a list of items is concatenated along their rows dim (B = sum of rows)."""
    if isinstance(items, dict):
        return items
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
        self._exact: list[tuple[int, int]] | list[WholeItem] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def exact_pass_next(self, n_whole: int | None, *, keep: np.ndarray | None = None,
                        per_init: int = 1) -> None:
        """Make the next iteration one pass for an exact fit, without moving the epoch count:
        ``WholeItem(0) .. WholeItem(n_whole - 1)`` in order, or (``None``) every sample once,
        in the order and with the draw seeds of a fresh sampler's first epoch without
        ``samples_per_epoch`` (a network-epoch setting that must not limit, nor repeat
        samples in, an exact fit); ``keep`` (a flag per init time; an item's init time is its
        index ``// per_init``): only the items of the init times kept."""
        items = ([WholeItem(i) for i in range(n_whole)] if n_whole is not None
                 else self._items(0, count=self.n))
        if keep is not None:
            items = [it for it in items if keep[int(it[0]) // per_init]]  # it[0]: the index
        self._exact = items

    def exact_pass_done(self) -> None:
        self._exact = None

    def __len__(self) -> int:
        if self._exact is not None:
            return len(self._exact)
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]] | Iterator[WholeItem]:
        if self._exact is not None:
            items, self._exact = self._exact, None
            return iter(items)
        items = self._items(self.epoch)
        self.epoch += 1
        return iter(items)

    def _items(self, epoch: int, *, count: int | None = None) -> list[tuple[int, int]]:
        """The ``(index, draw_seed)`` items of ``epoch``: ``count`` of them (default
        ``samples_per_epoch``), cycling through fresh permutations."""
        count = self.samples_per_epoch if count is None else count
        rng = np.random.default_rng([self.seed, epoch])
        order: list[int] = []
        while len(order) < count:
            order.extend((rng.permutation(self.n) if self.shuffle else np.arange(self.n)).tolist())
        draws = rng.integers(0, 2**62, size=count)
        return [(int(i), int(d)) for i, d in zip(order[:count], draws)]


class PreloadedBatches(IterableDataset):
    """Batches cut from one in-memory batch of every sample (``batches.preload``): the samples
    in a fresh seeded order each epoch (``shuffle``), ``batch_size`` rows at a time; a
    ``batch_size`` at least the number of rows yields the whole batch as it is, once per
    epoch (full-batch fitting, no copy).  Rows are stations x dates for point data."""

    def __init__(self, batch: dict[str, torch.Tensor], *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, draw: int | None = None):
        self.batch, self.batch_size, self.seed, self.shuffle = batch, batch_size, seed, shuffle
        self.n = int(next(iter(batch.values())).shape[0])
        self.epoch = 0
        #: ``draw`` members of the batch's ``inputs`` (which then hold a pool of members)
        #: chosen afresh for every row and epoch (``members.train_draw: random``)
        self.draw = draw
        missing = batch.get("member_nan")
        if missing is not None and draw is None:
            raise ValueError("a batch with member_nan (a pool of members) needs draw")
        self._missing = missing is not None and bool(missing.any())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        batch = self.batch if self.draw is None else self._drawn(epoch)
        if self.batch_size >= self.n:
            yield batch
            return
        order = (torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n))
                 if self.shuffle else torch.arange(self.n))
        for idx in order.split(self.batch_size):
            yield {k: v[idx] for k, v in batch.items()}

    def _drawn(self, epoch: int) -> dict[str, torch.Tensor]:
        """The batch with ``draw`` of its pool's members per row (distinct, in pool order),
        from a generator seeded by the seed and the epoch."""
        pool = self.batch["inputs"]
        rng = np.random.default_rng([self.seed, epoch, 1])
        pick = np.sort(np.argsort(rng.random((self.n, pool.shape[1])), axis=1)[:, :self.draw], axis=1)
        idx = torch.from_numpy(pick).view(self.n, self.draw, *([1] * (pool.dim() - 2)))
        drawn = {k: v for k, v in self.batch.items() if k != "member_nan"}
        drawn["inputs"] = torch.take_along_dim(pool, idx, dim=1)
        if self._missing:  # the target masked where a drawn member was missing
            missing = torch.take_along_dim(self.batch["member_nan"], idx.view(self.n, self.draw, 1, 1),
                                           dim=1).any(dim=1)
            drawn["target"] = self.batch["target"].masked_fill(missing[:, None], float("nan"))
        return drawn
