"""Overlapping tiles for inference on large grids, and stitching predictions back together."""

from __future__ import annotations

import numpy as np

Tile = tuple[slice, slice]


def _starts(n: int, tile: int, step: int) -> list[int]:
    if tile >= n:
        return [0]
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def tile_slices(shape: tuple[int, int], *, tile: int | None, overlap: int = 0) -> list[Tile]:
    """Tiles ``(slice_y, slice_x)`` of at most ``tile`` points covering ``shape``; neighbours
    overlap by at least ``overlap`` points; the last tile of a row/column ends at the edge.
    ``tile=None`` gives one tile, the whole field."""
    ny, nx = shape
    if tile is None:
        return [(slice(0, ny), slice(0, nx))]
    if tile < 1 or overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"tile ({tile}) must be >= 1 and more than twice the overlap ({overlap})")
    step = tile - overlap
    ty, tx = min(tile, ny), min(tile, nx)
    return [(slice(y, y + ty), slice(x, x + tx))
            for y in _starts(ny, ty, step) for x in _starts(nx, tx, step)]


def owned_windows(shape: tuple[int, int], *, tile: int | None, overlap: int = 0
                  ) -> dict[tuple[int, int], Tile]:
    """For each tile of :func:`tile_slices` (keyed by its origin ``(y0, x0)``) the window,
    relative to the tile, of the points it owns: every grid point is owned by exactly one
    tile, the one with the largest origin at or before it along each axis, so a pass over
    the tiles that keeps only owned points counts each point once."""
    ny, nx = shape
    if tile is None:
        return {(0, 0): (slice(0, ny), slice(0, nx))}
    ty, tx = min(tile, ny), min(tile, nx)
    ys, xs = _starts(ny, ty, tile - overlap), _starts(nx, tx, tile - overlap)

    def owned(starts: list[int], n: int) -> list[slice]:
        ends = [*starts[1:], n]
        return [slice(0, e - s) for s, e in zip(starts, ends)]

    return {(y, x): (sy, sx) for y, sy in zip(ys, owned(ys, ny)) for x, sx in zip(xs, owned(xs, nx))}


def blend_weights(tile_shape: tuple[int, int], *, overlap: int) -> np.ndarray:
    """``[h, w]`` weights rising linearly over ``overlap`` points from each edge (always > 0),
    so overlapping predictions fade into each other when stitched."""
    h, w = tile_shape

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n)
        if overlap > 0:
            edge = np.arange(1, overlap + 1) / (overlap + 1)
            k = min(overlap, n // 2)
            r[:k] = edge[:k]
            r[n - k:] = np.minimum(r[n - k:], edge[:k][::-1])
        return r

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def stitch(tiles: list[np.ndarray], slices: list[Tile], *, shape: tuple[int, int],
           overlap: int) -> np.ndarray:
    """Blend per-tile arrays ``[..., h, w]`` into one ``[..., Ny, Nx]`` with
    :func:`blend_weights` (a weighted mean where tiles overlap)."""
    if len(tiles) != len(slices) or not tiles:
        raise ValueError(f"got {len(tiles)} tiles for {len(slices)} tile slices")
    lead = tiles[0].shape[:-2]
    acc = np.zeros((*lead, *shape), dtype=np.float64)
    wsum = np.zeros(shape, dtype=np.float64)
    for arr, (sy, sx) in zip(tiles, slices):
        wt = blend_weights(arr.shape[-2:], overlap=overlap)
        acc[..., sy, sx] += arr * wt
        wsum[sy, sx] += wt
    if np.any(wsum == 0):
        raise ValueError("the tiles do not cover the whole grid")
    return (acc / wsum).astype(tiles[0].dtype)
