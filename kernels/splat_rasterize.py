"""Triton tile rasterizer of 2D Gaussians: `rasterize_to_pixels_triton`, the twin of
`ngraphics.splatting.rasterize.rasterize_to_pixels_torch` (same arguments, same outputs), forward and backward.

Layout: one program per (camera, tile, group of PIX pixels) and block of CB output channels; its PIX lanes
are PIX consecutive pixels of the tile (32 by default: a program is one warp, whose per-Gaussian
reductions are then shuffles without barriers, while the tile's Gaussians are read by each of its
programs). It walks the tile's depth-sorted Gaussians (flatten_ids[offsets[t]:offsets[t + 1]]) one at a
time, front to back, and stops once every pixel is done (3DGS/gsplat's shape, without their shared-memory
batches). Channel blocks split any channel count D (colour + features + depth) into programs of at most
`TUNING["channels"]` accumulators per pixel; each recomputes the same alphas (cheap next to the colour
loads) so the per-pixel state is small and extra feature channels never touch the core. Block 0 also
writes alpha and the per-pixel state the backward needs: T_final and `last`, the count of the tile's
Gaussians up to and including the last one blended (the first one past the stop is never blended).

Maths (per pixel p, Gaussian i of the tile in depth order; see the reference's module doc):

    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  d = mean2d - (u + 0.5, v + 0.5)
    alpha = min(0.99, o exp(-sigma)), skipped when sigma < 0 or alpha < 1/255
    stop before the first i with T (1 - alpha) <= 1e-4;   out = sum_i T_i alpha_i c_i,   A = 1 - T_final

Backward (gsplat's `rasterize_to_pixels_bwd`): walk back to front from `last`, recovering T_i =
T_{i+1} / (1 - alpha_i) (alpha <= 0.99 keeps it finite) and carrying R = gOut . S, S = sum_{j > i} w_j c_j
(one number per pixel, whatever the channel count):

    dL/dc_i      = sum_p w_i gOut_p                                     (w_i = T_i alpha_i)
    dL/dalpha_i  = T_i (gOut . c_i) - R / (1 - alpha_i) + gA T_final / (1 - alpha_i)
    dL/do_i      = dL/dalpha_i exp(-sigma),  dL/dsigma = -dL/dalpha_i alpha_i   (0 where alpha is clamped)
    dsigma/dmean = (a dx + b dy, b dx + c dy),  dsigma/d(a, b, c) = (dx^2 / 2, dx dy, dy^2 / 2)

Each program sums its pixels' terms (the colour gradient as one (CB,) sum, the six others as one (PIX, 8)
block, so two reductions per Gaussian) and adds them to the Gaussian's gradient with fp32 atomics; the
channel blocks' dL/dalpha terms add up (they are linear in the channels), block 0 adds the alpha term.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pixels per program (a power of two dividing the tile's 256: a program takes that many consecutive pixels
# of one tile), channels per program (16 keep the forward's (pixels, CB) accumulator and the backward's gOut
# block in registers; rgb + depth = 4 channels runs one block), warps. Measured on the H200 (1M Gaussians at
# 1080p, fwd+bwd, `python -m ngraphics.kernels.bench_splat --sweep`, docs/benchmarks.md): 32 pixels on one
# warp 33.5 ms; 64/1 37.6, 128/2 36.9, 256/4 39.2, 256/8 51.8.
TUNING = {"pixels": 32, "channels": 16, "warps": 1}
# The reference's constants (ngraphics/splatting/rasterize.py), as constexpr globals the kernels may read.
ALPHA_MAX, ALPHA_MIN, T_MIN = tl.constexpr(0.99), tl.constexpr(1.0 / 255.0), tl.constexpr(1e-4)


@triton.jit
def _splat_alpha(mu_ptr, con_ptr, opa_ptr, g, px, py):
    """alpha (clamped), the unclamped value, sigma, dx, dy of Gaussian g at pixel centres (px, py)."""
    dx = tl.load(mu_ptr + g * 2) - px
    dy = tl.load(mu_ptr + g * 2 + 1) - py
    a = tl.load(con_ptr + g * 3)
    b = tl.load(con_ptr + g * 3 + 1)
    c = tl.load(con_ptr + g * 3 + 2)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    raw = tl.load(opa_ptr + g) * tl.exp(-sigma)
    return tl.minimum(raw, ALPHA_MAX), raw, sigma, dx, dy, a, b, c


@triton.jit
def _tile_pixels(pid, cb, W, H, tiles_x, tiles_per_cam, D, TILE: tl.constexpr, CB: tl.constexpr,
                 PIX: tl.constexpr):
    """Program pid's tile t (tiles of all cameras in a row; PIX consecutive pixels of it per program) and the
    channels of channel block cb: t, flat pixel index (cam, v, u) in int64, which lanes lie inside the image,
    pixel centres px, py, the channel indices and which exist. Shared by the forward and the backward."""
    t = pid // (TILE * TILE // PIX)
    cam = t // tiles_per_cam
    rest = t % tiles_per_cam
    lane = (pid % (TILE * TILE // PIX)) * PIX + tl.arange(0, PIX)
    u = (rest % tiles_x) * TILE + lane % TILE
    v = (rest // tiles_x) * TILE + lane // TILE
    inside = (u < W) & (v < H)
    pix = (cam * H + v).to(tl.int64) * W + u
    ch = cb * CB + tl.arange(0, CB)
    return t, pix, inside, u.to(tl.float32) + 0.5, v.to(tl.float32) + 0.5, ch, ch < D


@triton.jit
def _rasterize_fwd_kernel(mu_ptr, con_ptr, col_ptr, opa_ptr, ids_ptr, offsets_ptr, out_ptr, alpha_ptr, T_ptr,
                          last_ptr, W, H, tiles_x, tiles_per_cam, D,
                          TILE: tl.constexpr, CB: tl.constexpr, PIX: tl.constexpr):
    t, pix, inside, px, py, ch, ch_ok = _tile_pixels(tl.program_id(0), tl.program_id(1), W, H, tiles_x,
                                                     tiles_per_cam, D, TILE, CB, PIX)
    cb = tl.program_id(1)
    start = tl.load(offsets_ptr + t)
    end = tl.load(offsets_ptr + t + 1)
    T = tl.full([PIX], 1.0, tl.float32)
    done = ~inside
    last = tl.zeros([PIX], dtype=tl.int32)
    acc = tl.zeros([PIX, CB], dtype=tl.float32)
    i = start
    while i < end:
        g = tl.load(ids_ptr + i)
        alpha, raw, sigma, dx, dy, a, b, c = _splat_alpha(mu_ptr, con_ptr, opa_ptr, g, px, py)
        use = (~done) & (sigma >= 0) & (alpha >= ALPHA_MIN)
        next_T = T * (1.0 - alpha)
        stop = use & (next_T <= T_MIN)
        done = done | stop
        use = use & (~stop)
        col = tl.load(col_ptr + g * D + ch, mask=ch_ok, other=0.0)  # (CB,)
        w = tl.where(use, alpha * T, 0.0)
        acc += w[:, None] * col[None, :]
        T = tl.where(use, next_T, T)
        last = tl.where(use, (i - start + 1).to(tl.int32), last)
        all_done = tl.min(done.to(tl.int32), axis=0) > 0
        i = tl.where(all_done, end, i + 1)
    tl.store(out_ptr + pix[:, None] * D + ch[None, :], acc, mask=inside[:, None] & ch_ok[None, :])
    if cb == 0:
        tl.store(alpha_ptr + pix, 1.0 - T, mask=inside)
        tl.store(T_ptr + pix, T, mask=inside)
        tl.store(last_ptr + pix, last, mask=inside)


@triton.jit
def _rasterize_bwd_kernel(mu_ptr, con_ptr, col_ptr, opa_ptr, ids_ptr, offsets_ptr, T_ptr, last_ptr,
                          g_out_ptr, g_alpha_ptr, d_mu_ptr, d_con_ptr, d_col_ptr, d_opa_ptr,
                          W, H, tiles_x, tiles_per_cam, D, TILE: tl.constexpr, CB: tl.constexpr,
                          PIX: tl.constexpr):
    t, pix, inside, px, py, ch, ch_ok = _tile_pixels(tl.program_id(0), tl.program_id(1), W, H, tiles_x,
                                                     tiles_per_cam, D, TILE, CB, PIX)
    cb = tl.program_id(1)
    start = tl.load(offsets_ptr + t)
    T_final = tl.load(T_ptr + pix, mask=inside, other=1.0)
    last = tl.load(last_ptr + pix, mask=inside, other=0)
    pix_ch = pix[:, None] * D + ch[None, :]
    g_out = tl.load(g_out_ptr + pix_ch, mask=inside[:, None] & ch_ok[None, :], other=0.0)
    g_alpha = tl.load(g_alpha_ptr + pix, mask=inside, other=0.0)
    g_alpha = tl.where(cb == 0, g_alpha, 0.0)  # block 0 owns the alpha term
    T = T_final
    R = tl.zeros([PIX], dtype=tl.float32)  # gOut . S, S = sum of w c behind the Gaussian (one per pixel)
    j = tl.arange(0, 8)  # the six per-Gaussian sums below travel as one (PIX, 8) block: one reduction
    i = start + tl.max(last, axis=0) - 1
    while i >= start:
        g = tl.load(ids_ptr + i)
        alpha, raw, sigma, dx, dy, a, b, c = _splat_alpha(mu_ptr, con_ptr, opa_ptr, g, px, py)
        use = ((i - start) < last) & (sigma >= 0) & (alpha >= ALPHA_MIN)
        ra = 1.0 / (1.0 - alpha)
        T = tl.where(use, T * ra, T)  # T_i
        w = tl.where(use, alpha * T, 0.0)
        col = tl.load(col_ptr + g * D + ch, mask=ch_ok, other=0.0)  # (CB,)
        d_col = tl.sum(w[:, None] * g_out, axis=0)  # (CB,)
        tl.atomic_add(d_col_ptr + g * D + ch, d_col, mask=ch_ok)
        q = tl.sum(g_out * col[None, :], axis=1)  # (PIX,): gOut . c_i
        d_alpha = T * q - R * ra + g_alpha * T_final * ra
        d_alpha = tl.where(use & (raw <= ALPHA_MAX), d_alpha, 0.0)
        d_sigma = -d_alpha * alpha
        jj = j[None, :]
        terms = tl.where(jj == 0, (d_alpha * tl.exp(-sigma))[:, None],  # d opacity
                tl.where(jj == 1, (d_sigma * (a * dx + b * dy))[:, None],  # d mean x
                tl.where(jj == 2, (d_sigma * (b * dx + c * dy))[:, None],  # d mean y
                tl.where(jj == 3, (d_sigma * 0.5 * dx * dx)[:, None],  # d conic a
                tl.where(jj == 4, (d_sigma * dx * dy)[:, None],  # d conic b
                tl.where(jj == 5, (d_sigma * 0.5 * dy * dy)[:, None], 0.0))))))  # d conic c
        targets = tl.where(j == 0, d_opa_ptr + g, tl.where(j < 3, d_mu_ptr + g * 2 + (j - 1),
                                                           d_con_ptr + g * 3 + (j - 3)))
        tl.atomic_add(targets, tl.sum(terms, axis=0), mask=j < 6)
        R += w * q
        i -= 1


class RasterizeFn(torch.autograd.Function):
    """(image (C, H, W, D), alpha (C, H, W, 1)) from fp32 contiguous means2d (C, N, 2), conics (C, N, 3),
    colors (C, N, D), opacities (C, N); differentiable w.r.t. those four."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, width, height, tile_size, flatten_ids, offsets):
        C, N, D = colors.shape
        dev = colors.device
        tiles_x, tiles_y = triton.cdiv(width, tile_size), triton.cdiv(height, tile_size)
        image = torch.empty(C, height, width, D, dtype=torch.float32, device=dev)
        alpha = torch.empty(C, height, width, 1, dtype=torch.float32, device=dev)
        T = torch.empty(C, height, width, dtype=torch.float32, device=dev)
        last = torch.empty(C, height, width, dtype=torch.int32, device=dev)
        cb = min(TUNING["channels"], triton.next_power_of_2(D))
        pixels = min(TUNING["pixels"], tile_size * tile_size)
        grid = (C * tiles_x * tiles_y * (tile_size * tile_size // pixels), triton.cdiv(D, cb))
        if C * height * width:
            _rasterize_fwd_kernel[grid](means2d, conics, colors, opacities, flatten_ids, offsets, image,
                                        alpha, T, last, width, height, tiles_x, tiles_x * tiles_y, D,
                                        TILE=tile_size, CB=cb, PIX=pixels, num_warps=TUNING["warps"])
        ctx.save_for_backward(means2d, conics, colors, opacities, flatten_ids, offsets, T, last)
        ctx.shape = (width, height, tile_size, tiles_x, tiles_y, cb, pixels, grid)
        return image, alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_image, g_alpha):
        means2d, conics, colors, opacities, flatten_ids, offsets, T, last = ctx.saved_tensors
        width, height, tile_size, tiles_x, tiles_y, cb, pixels, grid = ctx.shape
        C, N, D = colors.shape
        g_image = g_image.float().contiguous()
        g_alpha = g_alpha.float().contiguous()
        d_mu, d_con = torch.zeros_like(means2d), torch.zeros_like(conics)
        d_col, d_opa = torch.zeros_like(colors), torch.zeros_like(opacities)
        if C * height * width and flatten_ids.numel():
            _rasterize_bwd_kernel[grid](
                means2d, conics, colors, opacities, flatten_ids, offsets, T, last, g_image, g_alpha,
                d_mu, d_con, d_col, d_opa, width, height, tiles_x, tiles_x * tiles_y, D,
                TILE=tile_size, CB=cb, PIX=pixels, num_warps=TUNING["warps"])
        return d_mu, d_con, d_col, d_opa, None, None, None, None, None


def rasterize_to_pixels_triton(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor,
                               opacities: torch.Tensor, width: int, height: int, tile_size: int,
                               flatten_ids: torch.Tensor, offsets: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend depth-sorted Gaussians front to back: `ngraphics.splatting.rasterize.rasterize_to_pixels_torch` on the
    GPU (same arguments; computes in fp32 and returns colours' dtype).

    Args:
        means2d: projected centres, pixels. (C, N, 2)
        conics: inverse 2D covariances (a, b, c). (C, N, 3)
        colors: per-camera values to blend, any channel count D. (C, N, D)
        opacities: per-camera opacities in [0, 1]. (C, N)
        width, height: image size, pixels.
        tile_size: tile side in pixels (a power of two; 16).
        flatten_ids, offsets: `intersect_tiles`' sorted intersections and per-tile ranges.
    Returns: (blended colours (C, H, W, D), alphas (C, H, W, 1)).
    """
    C, N, D = colors.shape
    if means2d.shape != (C, N, 2) or conics.shape != (C, N, 3) or opacities.shape != (C, N):
        raise ValueError(f"rasterize_to_pixels_triton: expected means2d (C, N, 2), conics (C, N, 3), "
                         f"opacities (C, N) for colors {tuple(colors.shape)}, got {tuple(means2d.shape)}, "
                         f"{tuple(conics.shape)}, {tuple(opacities.shape)}")
    if tile_size & (tile_size - 1):
        raise ValueError(f"rasterize_to_pixels_triton: tile_size must be a power of two, got {tile_size}")
    image, alpha = RasterizeFn.apply(means2d.float().contiguous(), conics.float().contiguous(),
                                     colors.float().contiguous(), opacities.float().contiguous(), width,
                                     height, tile_size, flatten_ids.to(torch.int64).contiguous(),
                                     offsets.to(torch.int64).contiguous())
    return image.to(colors.dtype), alpha.to(colors.dtype)


__all__ = ["TUNING", "rasterize_to_pixels_triton"]
