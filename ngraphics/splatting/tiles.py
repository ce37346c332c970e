"""Stage 2 of the splatting rasterizer: bin projected Gaussians into screen tiles and sort each tile by depth.

A Gaussian with centre m and radius r (pixels) touches the tiles of its 3-sigma box: tile columns
floor((m_x - r) / T) <= tx < ceil((m_x + r) / T), clamped to the image (rows likewise), T = tile_size (16 as
in 3DGS and gsplat). Every (camera, tile, Gaussian) triple is one intersection with the 64-bit key

    key = (camera * tiles_y * tiles_x + ty * tiles_x + tx) << 32 | float32_bits(depth)

(depths of kept Gaussians are > 0, and positive float32 bit patterns sort like the floats), so one sort
orders the intersections by tile, then front to back. Plain torch, used by both rasterizer paths (a sort is
not worth a kernel here). Nothing here is differentiable.
"""

from __future__ import annotations

import math

import torch


def intersect_tiles(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, tile_size: int,
                    width: int, height: int) -> dict:
    """Tile/depth-sorted intersections of projected Gaussians.

    Args:
        means2d: projected centres, pixels. (C, N, 2)
        radii: 3-sigma radii in pixels, 0 for culled Gaussians. (C, N) int
        depths: camera-space z, > 0 where radii > 0. (C, N)
        tile_size: tile side in pixels (16).
        width, height: image size, pixels.
    Returns: dict
        flatten_ids: the Gaussian (index into C * N, camera-major) of each intersection, sorted by tile then
            depth. (M,) int64
        offsets: tile t = c * tiles_y * tiles_x + ty * tiles_x + tx owns
            flatten_ids[offsets[t]:offsets[t + 1]]. (C * tiles_y * tiles_x + 1,) int64
        tiles_x, tiles_y: the tile grid. int
    """
    C, N = radii.shape
    assert means2d.shape == (C, N, 2) and depths.shape == (C, N), (means2d.shape, depths.shape)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    dev = means2d.device
    m = means2d.detach().reshape(C * N, 2).float()  # (CN, 2)
    r = radii.reshape(C * N).float()  # (CN,)
    x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, tiles_x).int()  # (CN,) int32
    x1 = torch.ceil((m[:, 0] + r) / tile_size).clamp(0, tiles_x).int()
    y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, tiles_y).int()
    y1 = torch.ceil((m[:, 1] + r) / tile_size).clamp(0, tiles_y).int()
    counts = torch.where(r > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))  # (CN,) int32
    seen = counts.nonzero().squeeze(1)  # (V,): Gaussians with at least one tile
    counts, x0, y0, w = counts[seen], x0[seen], y0[seen], (x1 - x0)[seen]  # (V,) each
    # per intersection (M of them; int32 where it fits, to keep the peak memory down)
    row = torch.repeat_interleave(torch.arange(len(seen), device=dev, dtype=torch.int32), counts)  # (M,)
    first = (torch.cumsum(counts, 0, dtype=torch.int64) - counts)  # (V,): first intersection of each
    k = (torch.arange(row.shape[0], device=dev, dtype=torch.int64) - first[row]).int()  # (M,) index in its box
    ids = seen[row]  # (M,) int64: the Gaussian, camera-major
    tx = x0[row] + k % w[row]  # (M,) int32
    ty = y0[row] + k // w[row]
    del row, k
    tile = (ids // N) * n_tiles + (ty * tiles_x + tx)  # (M,) int64
    del tx, ty
    bits = depths.detach().reshape(C * N).float().contiguous().view(torch.int32)[ids]  # (M,) >= 0
    keys, order = torch.sort((tile << 32) | bits.long())  # (M,) each
    del tile, bits
    flatten_ids = ids[order]
    del ids, order
    bounds = torch.arange(C * n_tiles + 1, device=dev, dtype=torch.int64)
    offsets = torch.searchsorted(keys >> 32, bounds)  # (C * n_tiles + 1,)
    return {"flatten_ids": flatten_ids, "offsets": offsets, "tiles_x": tiles_x, "tiles_y": tiles_y}


__all__ = ["intersect_tiles"]
