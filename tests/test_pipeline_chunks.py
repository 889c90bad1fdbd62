"""Chunks decoded straight from their files (``pipeline.chunks``): every codec chain the
reader claims equals zarr-python's decode, selections over the chunk grid equal numpy's,
damaged chunks are one-line errors naming the store, variable and chunk, and the cache of
decoded chunks stays bounded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

from enspp.pipeline.chunks import ChunkCache, ChunkReadError, ZarrChunks, chunk_pieces, copy_piece

DIMS = ("init_time", "member", "latitude", "longitude")


def _array(path, data, *, chunks, compressors, serializer="auto", key_encoding=None,
           fill_value=np.nan, zarr_format=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {} if zarr_format == 2 else {"dimension_names": DIMS, "serializer": serializer}
        arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks,
                                compressors=compressors, fill_value=fill_value,
                                chunk_key_encoding=key_encoding, zarr_format=zarr_format, **kw)
        arr[...] = data
    return arr


CODECS = {
    "blosc-lz4-bitshuffle": dict(compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]),
    "blosc-zstd-shuffle": dict(compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]),
    "zstd": dict(compressors=[ZstdCodec(level=1)]),
    "gzip+crc32c": dict(compressors=[GzipCodec(level=1), Crc32cCodec()]),
    "blosc+crc32c": dict(compressors=[BloscCodec(cname="lz4"), Crc32cCodec()]),
    "uncompressed": dict(compressors=None),
    "big-endian": dict(compressors=[BloscCodec(cname="lz4")], serializer=BytesCodec(endian="big")),
    "v2 keys": dict(compressors=[ZstdCodec(level=1)],
                    key_encoding={"name": "v2", "separator": "."}),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_decode_equals_zarr(tmp_path, rng, name):
    data = rng.standard_normal((3, 5, 7, 9)).astype(np.float32)
    data[1, 2, 3] = np.nan
    arr = _array(tmp_path / "v", data, chunks=(1, 5, 4, 9), **CODECS[name])
    chunks = ZarrChunks.open(tmp_path / "v")
    assert chunks is not None and chunks.dims == DIMS and chunks.shape == data.shape
    out = np.empty(chunks.chunks, chunks.dtype)
    for i in range(3):
        for j in range(2):
            chunks.decode((i, 0, j, 0), out)
            want = arr[i:i + 1, :, 4 * j:4 * j + 4, :]
            np.testing.assert_array_equal(out[:, :, :want.shape[2]], want)


def test_unwritten_chunk_reads_fill_value_and_foreign_layouts_are_declined(tmp_path, rng):
    data = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(str(tmp_path / "v"), shape=data.shape, dtype=np.float32,
                                chunks=(1, 3, 4, 5), fill_value=np.nan, dimension_names=DIMS)
    arr[0] = data[0]  # chunk 1 never written
    chunks = ZarrChunks.open(tmp_path / "v")
    out = np.zeros(chunks.chunks, np.float32)
    chunks.decode((1, 0, 0, 0), out)
    assert np.isnan(out).all()
    # layouts the reader does not decode: Zarr 2, sharding, integers, a missing directory
    _array(tmp_path / "v2", data, chunks=(1, 3, 4, 5), compressors=None, zarr_format=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.create_array(str(tmp_path / "sharded"), shape=data.shape, dtype=np.float32,
                          chunks=(1, 3, 2, 5), shards=(1, 3, 4, 5), dimension_names=DIMS)
        zarr.create_array(str(tmp_path / "ints"), shape=data.shape, dtype=np.int32,
                          chunks=(1, 3, 4, 5), dimension_names=DIMS)
    for name in ("v2", "sharded", "ints", "absent"):
        assert ZarrChunks.open(tmp_path / name) is None, name


def test_damaged_chunks_are_one_line_errors(tmp_path, rng):
    data = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    _array(tmp_path / "t2m", data, chunks=(1, 3, 4, 5), **CODECS["blosc+crc32c"])
    _array(tmp_path / "z", data, chunks=(1, 3, 4, 5), **CODECS["blosc-lz4-bitshuffle"])
    out = np.empty((1, 3, 4, 5), np.float32)
    # a flipped byte: the checksum says so
    crc = ZarrChunks.open(tmp_path / "t2m")
    f = tmp_path / "t2m" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[20] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ChunkReadError, match=r"variable 't2m', chunk \(1, 0, 0, 0\).*crc32c") as e:
        crc.decode((1, 0, 0, 0), out)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    # a truncated Blosc chunk without a checksum: the decoder's error, named
    plain = ZarrChunks.open(tmp_path / "z")
    g = tmp_path / "z" / "c" / "0" / "0" / "0" / "0"
    g.write_bytes(g.read_bytes()[:10])
    with pytest.raises(ChunkReadError, match=r"variable 'z', chunk \(0, 0, 0, 0\)"):
        plain.decode((0, 0, 0, 0), out)
    # a chunk of another size (another array's chunk copied in)
    _array(tmp_path / "other", data[..., :4], chunks=(1, 3, 4, 4),
           **CODECS["blosc-lz4-bitshuffle"])
    g.write_bytes((tmp_path / "other" / "c" / "0" / "0" / "0" / "0").read_bytes())
    with pytest.raises(ChunkReadError, match="variable 'z'.*decodes to 192 bytes, expected 240"):
        plain.decode((0, 0, 0, 0), out)


def _reference(data: np.ndarray, selection) -> np.ndarray:
    """Orthogonal indexing with numpy: an int drops its dim, a slice or array keeps it."""
    out, axis = data, 0
    for sel in selection:
        if isinstance(sel, int):
            out = np.take(out, sel, axis=axis)
            continue
        idx = np.arange(out.shape[axis])[sel] if isinstance(sel, slice) else sel
        out = np.take(out, idx, axis=axis)
        axis += 1
    return out


@pytest.mark.parametrize("seed", range(12))
def test_chunk_pieces_reassemble_numpy_selections(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 9, size=4))
    chunks = tuple(int(rng.integers(1, n + 1)) for n in shape)
    data = rng.standard_normal(shape).astype(np.float32)
    selection = []
    for n in shape:
        kind = rng.integers(0, 3)
        if kind == 0:
            selection.append(int(rng.integers(0, n)))
        elif kind == 1:
            a = int(rng.integers(0, n))
            selection.append(slice(a, int(rng.integers(a + 1, n + 1))))
        else:
            selection.append(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
    want = _reference(data, selection)
    got = np.full(want.shape, np.nan, np.float32)
    # the stored chunks: edge chunks padded as in a store
    grid = [-(-n // c) for n, c in zip(shape, chunks)]
    padded = np.full([g * c for g, c in zip(grid, chunks)], np.nan, np.float32)
    padded[tuple(slice(0, n) for n in shape)] = data
    for coords, src, dst in chunk_pieces(shape, chunks, selection):
        block = padded[tuple(slice(q * c, (q + 1) * c) for q, c in zip(coords, chunks))]
        copy_piece(got, dst, block, src)
    np.testing.assert_array_equal(got, want)


def test_chunk_cache_keeps_within_budget_and_bounds_the_working_set():
    decoded = []

    def decoder(key):
        def fill(out):
            decoded.append(key)
            out.fill(key)
        return fill

    cache = ChunkCache(keep_bytes=2 * 4 * 10, recent=2)
    for key in range(6):  # two fit the budget for good, the rest pass through the working set
        block = cache.acquire(key, (10,), np.float32, decoder(key))
        assert (block == key).all()
        cache.release(key)
    assert cache.kept == 2 and cache.used == 80 and cache.full
    assert not any(b.flags.writeable for b in cache._kept.values())
    assert list(cache._lru) == [4, 5] and cache.misses == 6
    assert cache.acquire(0, (10,), np.float32, decoder(0))[0] == 0  # kept: no decode
    cache.release(0)
    assert cache.acquire(5, (10,), np.float32, decoder(5))[0] == 5  # recent: no decode
    cache.release(5)
    assert decoded == list(range(6)) and cache.hits == 2
    # a chunk in use is never evicted nor its buffer reused; released ones are recycled
    held = cache.acquire(4, (10,), np.float32, decoder(4))
    for key in (7, 8, 9):
        cache.acquire(key, (10,), np.float32, decoder(key))
        cache.release(key)
    assert 4 in cache._lru and (held == 4).all() and len(cache._lru) <= 3
    cache.release(4)
    assert len(cache._lru) == 2 and not cache._pins
    # a failed decode leaves nothing behind
    with pytest.raises(RuntimeError):
        cache.acquire(99, (10,), np.float32, lambda out: (_ for _ in ()).throw(RuntimeError("x")))
    assert 99 not in cache._lru and not cache._pins
