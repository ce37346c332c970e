"""Stage 3 of the splatting rasterizer: front-to-back alpha blending of depth-sorted 2D Gaussians per tile.

`rasterize_to_pixels_torch` is the PyTorch reference (plain torch ops, any dtype, differentiable by autograd; its
Triton twin is `ngraphics.kernels.splat_rasterize.rasterize_to_pixels_triton`, reached through `ngraphics.ops`
as "splat_rasterize"). For pixel centre p = (u + 0.5, v + 0.5) and the Gaussians i = 0, 1, ... of its tile in
depth order (3DGS `renderCUDA`, gsplat `rasterize_to_pixels_fwd`):

    d       = mean2d_i - p
    sigma_i = 0.5 (a d_x^2 + c d_y^2) + b d_x d_y              conic (a, b, c)
    alpha_i = min(0.99, o_i exp(-sigma_i))                     skipped (alpha_i = 0) if sigma_i < 0 or
                                                               alpha_i < 1/255
    T_i     = prod_{j < i} (1 - alpha_j)
    stop at the first i with T_i (1 - alpha_i) <= 1e-4; that Gaussian and all behind it are left out
    out     = sum_i T_i alpha_i colour_i      (any number D of channels)
    alpha   = sum_i T_i alpha_i = 1 - T_final

A Gaussian reaches every pixel of every tile its 3-sigma box touches (so the truncation follows the tiles,
as in 3DGS). The reference loops over non-empty tiles and evaluates (pixels, Gaussians) blocks of CHUNK
Gaussians front to back, leaving a tile once all its pixels have stopped.
Gradients flow to means2d, conics, colours and opacities; the skip, clamp and stop tests are piecewise
constant (no gradient through the thresholds).
"""

from __future__ import annotations

import torch

ALPHA_MAX = 0.99  # 3DGS clamps alpha so that 1 - alpha stays invertible in the backward pass
ALPHA_MIN = 1.0 / 255.0  # contributions below one 8-bit step are skipped
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this
CHUNK = 256  # Gaussians per (pixels, Gaussians) block; tiles stop early once all their pixels have stopped


def rasterize_to_pixels_torch(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor,
                        opacities: torch.Tensor, width: int, height: int, tile_size: int,
                        flatten_ids: torch.Tensor, offsets: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend depth-sorted Gaussians front to back into C images of D channels (see the module doc).

    Args:
        means2d: projected centres, pixels. (C, N, 2)
        conics: inverse 2D covariances (a, b, c). (C, N, 3)
        colors: per-camera values to blend, any channel count D. (C, N, D)
        opacities: per-camera opacities in [0, 1]. (C, N)
        width, height: image size, pixels.
        tile_size: tile side in pixels (the one given to `intersect_tiles`).
        flatten_ids, offsets: `intersect_tiles`' sorted intersections and per-tile ranges.
    Returns: (blended colours (C, H, W, D), alphas (C, H, W, 1)), colours' dtype.
    """
    C, N, D = colors.shape
    assert means2d.shape == (C, N, 2) and conics.shape == (C, N, 3) and opacities.shape == (C, N), \
        (means2d.shape, conics.shape, opacities.shape)
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    assert offsets.shape == (C * tiles_x * tiles_y + 1,), (offsets.shape, C, tiles_x, tiles_y)
    dev, dt = colors.device, colors.dtype
    mu, con = means2d.reshape(C * N, 2), conics.reshape(C * N, 3)  # (CN, 2), (CN, 3)
    col, opa = colors.reshape(C * N, D), opacities.reshape(C * N)  # (CN, D), (CN,)
    local = torch.arange(tile_size, device=dev)
    starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
    pix_index, pix_values = [], []
    for t in range(C * tiles_x * tiles_y):
        if starts[t] == ends[t]:
            continue
        cam, rest = divmod(t, tiles_x * tiles_y)
        ty, tx = divmod(rest, tiles_x)
        u = tx * tile_size + local
        v = ty * tile_size + local
        u, v = u[u < width], v[v < height]
        vv, uu = torch.meshgrid(v, u, indexing="ij")  # (h, w) each
        px = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1).to(dt) + 0.5  # (P, 2): pixel centres
        out = torch.zeros(px.shape[0], D + 1, device=dev, dtype=dt)  # (P, D + 1)
        T_prev = torch.ones(px.shape[0], 1, device=dev, dtype=dt)  # (P, 1): transmittance before the chunk
        for first in range(starts[t], ends[t], CHUNK):  # chunks of the tile's Gaussians, front to back
            g = flatten_ids[first:min(first + CHUNK, ends[t])]  # (K,)
            d = mu[g][None, :, :] - px[:, None, :]  # (P, K, 2)
            a, b, c = con[g].unbind(-1)  # (K,) each
            sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]  # (P, K)
            alpha = torch.clamp(opa[g] * torch.exp(-sigma), max=ALPHA_MAX)  # (P, K)
            alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))  # (P, K)
            trans = T_prev * torch.cumprod(1.0 - alpha, dim=1)  # (P, K): T_{i+1}
            T = torch.cat([T_prev, trans[:, :-1]], dim=1)  # (P, K): T_i
            w = alpha * T * (trans > T_MIN)  # (P, K): stopped Gaussians weigh 0 (trans is non-increasing)
            out = out + torch.cat([w @ col[g], w.sum(dim=1, keepdim=True)], dim=1)  # (P, D + 1)
            T_prev = trans[:, -1:]
            if bool((T_prev <= T_MIN).all()):  # every pixel of the tile has stopped
                break
        pix_index.append((cam * height + vv.reshape(-1)) * width + uu.reshape(-1))
        pix_values.append(out)
    image = torch.zeros(C * height * width, D + 1, device=dev, dtype=dt)  # (CHW, D + 1)
    if pix_index:
        image = image.index_copy(0, torch.cat(pix_index), torch.cat(pix_values))
    image = image.view(C, height, width, D + 1)
    return image[..., :D], image[..., D:]


__all__ = ["ALPHA_MAX", "ALPHA_MIN", "T_MIN", "rasterize_to_pixels_torch"]
