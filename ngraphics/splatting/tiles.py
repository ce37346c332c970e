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
    m = means2d.detach().reshape(C * N, 2).float()  # (CN, 2)
    r = radii.reshape(C * N).float()  # (CN,)
    x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, tiles_x).long()  # (CN,)
    x1 = torch.ceil((m[:, 0] + r) / tile_size).clamp(0, tiles_x).long()
    y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[:, 1] + r) / tile_size).clamp(0, tiles_y).long()
    counts = torch.where(r > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))  # (CN,)
    ids = torch.repeat_interleave(torch.arange(C * N, device=m.device), counts)  # (M,)
    first = torch.cumsum(counts, 0) - counts  # (CN,): first intersection of each Gaussian
    k = torch.arange(ids.shape[0], device=m.device) - first[ids]  # (M,): index inside its box
    w = (x1 - x0)[ids].clamp_min(1)  # (M,)
    tx, ty = x0[ids] + k % w, y0[ids] + k // w  # (M,)
    tile = (ids // N) * n_tiles + ty * tiles_x + tx  # (M,)
    bits = depths.detach().reshape(C * N).float().contiguous().view(torch.int32).long()[ids]  # (M,) >= 0
    order = torch.argsort((tile << 32) | bits)  # (M,)
    flatten_ids, tile = ids[order], tile[order]
    bounds = torch.arange(C * n_tiles + 1, device=m.device)
    offsets = torch.searchsorted(tile, bounds)  # (C * n_tiles + 1,)
    return {"flatten_ids": flatten_ids, "offsets": offsets, "tiles_x": tiles_x, "tiles_y": tiles_y}


__all__ = ["intersect_tiles"]
