"""Zarr chunks read at the decode floor: a chunk's bytes straight from its file, decoded by
numcodecs into a buffer that is reused, with neither zarr-python nor xarray on the hot path.

:class:`ZarrChunks` understands the layout enspp stores are written in (Zarr format 3, a
regular chunk grid, little- or big-endian ``bytes`` followed by any of ``blosc``, ``zstd``,
``gzip`` and ``crc32c``); :meth:`ZarrChunks.open` answers None for anything else (sharding,
``transpose``, Zarr 2), and the caller reads such an array through zarr-python instead.
:class:`ChunkCache` holds decoded chunks: a working set of the most recent ones (so the
samples and tiles of one init time share one decode) and, within an opt-in budget, chunks
kept for good (so later epochs read no store).

This module imports only numpy (numcodecs and the crc32c library when a chunk is decoded), so
DataLoader workers that unpickle a reader stay light.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enspp.data.errors import EnsppError

#: bytes-to-bytes codecs :class:`ZarrChunks` decodes (in any order and number)
BYTES_CODECS = ("blosc", "zstd", "gzip", "crc32c")

Selection = int | slice | np.ndarray


class ChunkReadError(EnsppError):
    """A chunk of a store could not be read or decoded; the message names the store, the
    variable and the chunk."""


@dataclass(frozen=True)
class ZarrChunks:
    """One Zarr 3 array of a local store, read chunk by chunk from its files."""

    path: str
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: float
    #: bytes-to-bytes codecs in the order they were applied when writing
    codecs: tuple[str, ...]
    big_endian: bool
    separator: str
    default_keys: bool

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ZarrChunks | None:
        """The array at ``path`` (a directory with ``zarr.json``), or None when its metadata
        is not one this reader decodes (the caller then reads through zarr-python)."""
        meta_path = Path(path) / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        try:
            return cls._from_metadata(Path(path), meta)
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def _from_metadata(cls, path: Path, meta: dict) -> ZarrChunks | None:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        if meta.get("storage_transformers"):
            return None
        grid = meta["chunk_grid"]
        if grid["name"] != "regular":
            return None
        chunks = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
        shape = tuple(int(s) for s in meta["shape"])
        dims = tuple(str(d) for d in meta.get("dimension_names") or ())
        if len(chunks) != len(shape) or len(dims) != len(shape) or not shape:
            return None
        dtype = np.dtype(str(meta["data_type"]))
        if dtype.kind != "f":
            return None
        fill = _fill_value(meta.get("fill_value"))
        if fill is None:
            return None
        keys = meta["chunk_key_encoding"]
        sep = str((keys.get("configuration") or {}).get("separator",
                                                        "/" if keys["name"] == "default" else "."))
        if keys["name"] not in ("default", "v2"):
            return None
        codecs = list(meta["codecs"])
        if not codecs or codecs[0]["name"] != "bytes":
            return None  # array-to-array codecs (transpose) or sharding
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        names = tuple(str(c["name"]) for c in codecs[1:])
        if any(n not in BYTES_CODECS for n in names):
            return None
        return cls(path=str(path), name=path.name, dims=dims, shape=shape, chunks=chunks,
                   dtype=dtype.newbyteorder("="), fill_value=fill, codecs=names,
                   big_endian=endian == "big", separator=sep,
                   default_keys=keys["name"] == "default")

    # ---- one chunk ----------------------------------------------------------------------
    def chunk_file(self, coords: Sequence[int]) -> str:
        """The file holding the chunk at grid position ``coords``."""
        parts = [str(int(c)) for c in coords]
        key = self.separator.join(["c", *parts] if self.default_keys else parts)
        return os.path.join(self.path, *key.split("/"))

    def describe(self, coords: Sequence[int], why: str = "") -> str:
        from enspp.data.store import describe_chunk  # an enspp store: the chunk's record too

        named = describe_chunk(Path(self.path).parent, self.name, tuple(coords), why)
        if named is not None:
            return named
        text = (f"store {Path(self.path).parent}: variable {self.name!r}, chunk "
                f"{tuple(int(c) for c in coords)} ({self.chunk_file(coords)})")
        return f"{text}: {why}" if why else text

    def decode(self, coords: Sequence[int], out: np.ndarray) -> None:
        """Decode the chunk at ``coords`` into ``out`` (C-contiguous, shape ``self.chunks``,
        dtype ``self.dtype``); a chunk never written reads as the fill value."""
        path = self.chunk_file(coords)
        try:
            data = _map_file(path)
        except FileNotFoundError:
            from enspp.data.store import chunk_was_written

            if chunk_was_written(Path(self.path).parent, self.name, tuple(coords)):
                raise ChunkReadError(self.describe(coords, "the chunk file is missing although "
                                                           "its field was ingested")) from None
            out.fill(self.fill_value)
            return
        except OSError as e:
            raise ChunkReadError(self.describe(coords, f"cannot read ({e})")) from None
        target = out.reshape(-1).view(np.uint8)
        try:
            with memoryview(data) as view:
                self._decode_bytes(view, target)
        except ChunkReadError as e:
            raise ChunkReadError(self.describe(coords, f"corrupt chunk: {e}")) from None
        except (RuntimeError, ValueError, TypeError, OSError) as e:
            raise ChunkReadError(self.describe(coords, f"corrupt chunk: cannot decode ({e})")) from None
        finally:
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError):  # views held by a traceback: unmapped
                    data.close()                        # when they are collected
        if self.big_endian:
            out.byteswap(inplace=True)

    def _decode_bytes(self, data: memoryview, target: np.ndarray) -> None:
        view = memoryview(data)
        order = list(reversed(self.codecs))  # undo the last codec applied first
        for i, name in enumerate(order):
            if name == "crc32c":
                view = _check_crc32c(view)
            elif i == len(order) - 1:
                _decompress(name, view, target)  # the innermost codec: straight into place
                return
            else:
                view = memoryview(_decompress(name, view, None))
        if view.nbytes != target.nbytes:
            raise ChunkReadError(f"holds {view.nbytes} bytes, expected {target.nbytes}")
        target[:] = np.frombuffer(view, dtype=np.uint8)


def _map_file(path: str) -> mmap.mmap | bytes:
    """The file's bytes, mapped from the page cache (no copy; the decoder reads them in
    place), or read when it is empty or cannot be mapped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                pass
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _fill_value(raw: object) -> float | None:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    named = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
    return float(named[raw]) if isinstance(raw, str) and raw in named else None


def _check_crc32c(view: memoryview) -> memoryview:
    import google_crc32c

    if view.nbytes < 4:
        raise ChunkReadError("is shorter than its crc32c checksum")
    inner, stored = view[:-4], bytes(view[-4:])
    if int(google_crc32c.value(np.frombuffer(inner, np.uint8))).to_bytes(4, "little") != stored:
        raise ChunkReadError("fails its crc32c checksum (the file is damaged)")
    return inner


def _decompress(name: str, src: memoryview, dest: np.ndarray | None):
    """Decompress ``src`` with codec ``name``; into ``dest`` (exactly its size) when given."""
    if name == "blosc":
        from numcodecs import blosc

        if dest is not None:
            nbytes = int.from_bytes(src[4:8], "little") if src.nbytes >= 16 else -1  # header
            if nbytes != dest.nbytes:
                raise ChunkReadError(f"decodes to {nbytes} bytes, expected {dest.nbytes}")
        return blosc.decompress(src, dest)
    if name == "zstd":
        from numcodecs import zstd

        if dest is None:
            return zstd.decompress(src)
        got = np.frombuffer(zstd.decompress(src), dtype=np.uint8)
    else:  # gzip
        import zlib

        got = np.frombuffer(zlib.decompress(src, 31), dtype=np.uint8)
        if dest is None:
            return got
    if got.nbytes != dest.nbytes:
        raise ChunkReadError(f"decodes to {got.nbytes} bytes, expected {dest.nbytes}")
    dest[:] = got
    return dest


# ---- selections over the chunk grid -----------------------------------------------------
def chunk_pieces(shape: Sequence[int], chunks: Sequence[int], selection: Sequence[Selection]
                 ) -> Iterator[tuple[tuple[int, ...], tuple[Selection, ...], tuple[Selection, ...]]]:
    """The chunks an orthogonal selection touches, as ``(chunk coords, index into the chunk,
    index into the result)``.

    ``selection`` holds per dim an int (the dim is dropped from the result), a slice with step
    1, or a 1-d int array (any order, picked in that order).  The result's dims are the
    non-int ones in array order; its index leaves out the int dims.
    """
    per_dim: list[list[tuple[int, Selection, Selection | None]]] = []
    for n, c, sel in zip(shape, chunks, selection):
        if isinstance(sel, (int, np.integer)):
            i = int(sel)
            if not 0 <= i < n:
                raise IndexError(f"index {i} out of range 0..{n - 1}")
            per_dim.append([(i // c, i % c, None)])
        elif isinstance(sel, slice):
            start, stop, step = sel.indices(n)
            if step != 1:
                raise ValueError("chunk_pieces takes slices with step 1")
            parts = []
            for q in range(start // c, (max(stop, start + 1) - 1) // c + 1):
                lo, hi = max(start, q * c), min(stop, (q + 1) * c)
                if hi > lo:
                    parts.append((q, slice(lo - q * c, hi - q * c), slice(lo - start, hi - start)))
            per_dim.append(parts)
        else:
            idx = np.asarray(sel, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"indices {idx.tolist()} out of range 0..{n - 1}")
            parts = []
            for q in np.unique(idx // c):
                where = np.flatnonzero(idx // c == q)
                parts.append((int(q), _as_slice(idx[where] - q * c), _as_slice(where)))
            per_dim.append(parts)
    for combo in itertools.product(*per_dim):
        coords = tuple(p[0] for p in combo)
        src = tuple(p[1] for p in combo)
        dst = tuple(p[2] for p in combo if p[2] is not None)
        yield coords, src, dst


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is a run of consecutive increasing integers."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


def copy_piece(dst: np.ndarray, dst_index: tuple[Selection, ...], src: np.ndarray,
               src_index: tuple[Selection, ...]) -> None:
    """``dst[dst_index] = src[src_index]`` without fancy-index temporaries: int dims of
    ``src_index`` are indexed first, then each index array is walked element by element, so
    every copy is a plain strided one."""
    view = src[tuple(s if isinstance(s, (int, np.integer)) else slice(None) for s in src_index)]
    rest = [s for s in src_index if not isinstance(s, (int, np.integer))]
    arrays = [i for i, s in enumerate(rest) if isinstance(s, np.ndarray)]
    if not arrays:
        dst[dst_index] = view[tuple(rest)]
        return
    for picks in itertools.product(*(range(len(rest[i])) for i in arrays)):
        s_idx, d_idx = list(rest), list(dst_index)
        for i, p in zip(arrays, picks):
            s_idx[i] = int(rest[i][p])
            d = dst_index[i]
            d_idx[i] = int(d[p]) if isinstance(d, np.ndarray) else (d.start or 0) + p
        dst[tuple(d_idx)] = view[tuple(s_idx)]


# ---- decoded chunks in memory -----------------------------------------------------------
class ChunkCache:
    """Decoded chunks, per process.

    * ``keep_bytes``: chunks kept for good once decoded, the first that fit (a training epoch
      visits every sample, so evicting by recency would drop each just before its next use);
      once one does not fit, no more are kept.  Kept chunks are read-only.
    * ``recent``: the other chunks live in a working set of this many, least recently used
      first out; an evicted chunk's buffer is reused for the next decode of the same size, so
      steady reading allocates nothing.  A chunk in use (:meth:`acquire` without its
      :meth:`release`) is never evicted.
    """

    def __init__(self, *, keep_bytes: int = 0, recent: int = 8) -> None:
        if keep_bytes < 0 or recent < 1:
            raise ValueError(f"keep_bytes must be >= 0 and recent >= 1, got {keep_bytes}, {recent}")
        self.limit = int(keep_bytes)
        self.recent = int(recent)
        self.used = 0
        self.full = self.limit == 0
        self.hits = self.misses = 0
        self._kept: dict[Hashable, np.ndarray] = {}
        self._lru: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._pins: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    @property
    def kept(self) -> int:
        """Chunks kept for good."""
        return len(self._kept)

    def acquire(self, key: Hashable, shape: tuple[int, ...], dtype: np.dtype,
                decode: Callable[[np.ndarray], None]) -> np.ndarray:
        """The decoded chunk ``key`` (decoded with ``decode(buffer)`` when not held), in use
        until :meth:`release`; do not write to it."""
        with self._lock:
            block = self._kept.get(key)
            if block is None:
                block = self._lru.get(key)
                if block is not None:
                    self._lru.move_to_end(key)
            if block is not None:
                self.hits += 1
                self._pins[key] = self._pins.get(key, 0) + 1
                return block
            self.misses += 1
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            keep = not self.full and self.used + nbytes <= self.limit
            if not keep and not self.full:
                self.full = True
            buffer = None if keep else self._recycle(shape, dtype)
            self._pins[key] = self._pins.get(key, 0) + 1
        if buffer is None:
            buffer = np.empty(shape, dtype)
        try:
            decode(buffer)
        except BaseException:
            with self._lock:
                self._unpin(key)
            raise
        with self._lock:
            if keep:
                buffer.flags.writeable = False
                self._kept[key] = buffer
                self.used += nbytes
            else:
                self._lru[key] = buffer
        return buffer

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._unpin(key)
            self._trim()

    def _unpin(self, key: Hashable) -> None:
        n = self._pins.get(key, 0) - 1
        if n > 0:
            self._pins[key] = n
        else:
            self._pins.pop(key, None)

    def _evictable(self) -> Iterator[Hashable]:
        return (k for k in self._lru if k not in self._pins)

    def _recycle(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A buffer of an evicted chunk when the working set is full (one of the same shape
        if there is one), else None."""
        if len(self._lru) < self.recent:
            return None
        victim = next((k for k in self._evictable() if self._lru[k].shape == tuple(shape)
                       and self._lru[k].dtype == dtype), None)
        if victim is None:
            victim = next(self._evictable(), None)
            if victim is not None:
                del self._lru[victim]
            return None
        return self._lru.pop(victim)

    def _trim(self) -> None:
        while len(self._lru) > self.recent:
            victim = next(self._evictable(), None)
            if victim is None:
                return
            del self._lru[victim]
