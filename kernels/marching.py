"""Triton ray marching through an occupancy grid: `march_triton`, the twin of
`ngraphics.rendering.marching.march_torch` (same arguments, same samples, same `RaySamples`; `march` picks
one of the two through `ngraphics.ops`).

The torch reference builds every candidate step of every ray, (R, S) at once, and compacts with `nonzero`.
Here one lane of a program owns one ray and walks it front to back:

    k = 0
    while k < S and t_k < t_far:                      t_k: the reference's closed-form step rule (step_edges)
        x = o + d (t_k + t_{k+1}) / 2                 midpoint, as the reference computes it
        cell = finest cascade containing x, its cell   (OccupancyGrid.query's arithmetic, op for op)
        if occupied: emit [t_k, t_{k+1})  and k += 1
        else:        k = first step whose end lies past the cell's exit (empty-space skip), at least k + 1

The skip never passes a candidate whose midpoint could fall outside the empty cell: the exit is taken at
the cell's faces pulled in by 1e-3 cell, and the jump lands on the candidate whose *end* edge first
crosses it, so every skipped midpoint lies at least half a step inside. Output is packed in two passes
with the same walk: pass 1 counts samples per ray, an exclusive scan (torch.cumsum) gives offsets, one host
sync reads the total N, pass 2 writes t_starts / t_ends / ray_indices at offsets[r] + n. No (R, S) buffer.

With a density callback, `_early_stop_kernel` walks each ray's samples once more (lane per ray), keeps
those with transmittance T >= early_stop_eps and opacity >= alpha_thre exactly as the reference does
(tau = sigma dt in fp32, T = exp(-sum of earlier tau) in fp64), and stops a ray at its first T < eps;
the kept samples are gathered with one `nonzero` (a second sync).

Float parity: launches use `enable_fp_fusion=False` and IEEE division (`div_rn`), and on CUDA `exp`/`log2`
come from libdevice (the same functions torch's CUDA kernels call), so the candidate positions, levels and
cells match the reference bit for bit; under the interpreter numpy's exp/log2 may differ by an ulp, which
can move a sample lying on a cell face (the tests allow exactly those).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ngraphics.ops import triton_interpreter
from ngraphics.rendering.compositing import offsets_from_counts
from ngraphics.rendering.marching import DensityFn, RaySamples, fit_to_capacity, ray_aabb, steps_to_cover
from ngraphics.rendering.occupancy import OccupancyGrid

try:  # libdevice is what torch's CUDA exp/log2 compile to; the interpreter has no libdevice
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    libdevice = None

# Rays per program (one lane each) and warps; a program runs until its slowest ray is done, so small
# programs waste least (H100, lego-like 2^18 rays: 32 x 1 warp 2.0 ms, 64 x 2 2.3 ms, 128 x 4 2.2 ms).
TUNING = {"block": 32, "warps": 1}


@triton.jit
def _exp(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _log2(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        return libdevice.log2(x)
    else:
        return tl.log2(x)


@triton.jit
def _edge(k, t0, n1, s1, n2, s2, step, growth, max_step, CONE: tl.constexpr, ACCURATE: tl.constexpr):
    """Edge t_k of the step rule, the reference's `step_edges` formula: t0 + k step while k <= n1, then
    s1 exp((k - n1) growth) while k <= n1 + n2, then s2 + (k - n1 - n2) max_step. k: int32 (BLOCK,)."""
    kf = k.to(tl.float32)
    linear = t0 + kf * step
    if CONE:
        geometric = s1 * _exp((kf - n1) * growth, ACCURATE)
        far = s2 + (kf - n1 - n2) * max_step
        return tl.where(kf <= n1, linear, tl.where(kf <= n1 + n2, geometric, far))
    else:
        return linear


@triton.jit
def _first_step_at(t, t0, n1, s1, n2, s2, step, growth, max_step, S, CONE: tl.constexpr):
    """About the smallest k with t_k >= t (the inverse of `_edge`, within a fraction of a step), clamped
    to [0, S]. Callers subtract one step of slack."""
    k = tl.ceil((t - t0) / step)
    if CONE:
        kg = n1 + tl.ceil(tl.log(t / s1) / growth)
        kf = n1 + n2 + tl.ceil((t - s2) / max_step)
        k = tl.where(t <= s1, k, tl.where(t <= s2, kg, kf))
    k = tl.where(k == k, k, 0.0)  # NaN (degenerate rays): no skip
    k = tl.minimum(tl.maximum(k, 0.0), S * 1.0)
    return k.to(tl.int32)


@triton.jit
def _exit_along(x, o, d, lo, cell):
    """Ray parameter where the ray leaves the slab [lo + 1e-3 cell, lo + cell - 1e-3 cell] of one axis
    (+inf for d == 0)."""
    margin = 1e-3 * cell
    face = tl.where(d > 0, lo + cell - margin, lo + margin)
    safe = tl.where(d == 0, 1.0, d)
    return tl.where(d == 0, float("inf"), (face - o) / safe)


@triton.jit
def _march_kernel(o_ptr, d_ptr, t0_ptr, tfar_ptr, rule_ptr, geom_ptr, binary_ptr, offsets_ptr, counts_ptr,
                  ts_ptr, te_ptr, ri_ptr, R, S, step, growth, max_step,
                  L: tl.constexpr, RES: tl.constexpr, CONE: tl.constexpr, FILL: tl.constexpr,
                  ACCURATE: tl.constexpr, BLOCK: tl.constexpr):
    """One lane per ray. Pass 1 (FILL=False) writes counts (R,) int32; pass 2 writes the samples of ray r
    at offsets[r] + n. rule: (4, R) per-ray step-rule constants n1, s1, n2, s2 (CONE only). geom: level-0
    box centre (3), half size (3), min corner (3), RES / size (3). binary: (L * RES^3,) uint8. t_far is -inf
    for rays that miss."""
    rays = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rays < R
    ox = tl.load(o_ptr + rays * 3 + 0, mask=live, other=0.0)
    oy = tl.load(o_ptr + rays * 3 + 1, mask=live, other=0.0)
    oz = tl.load(o_ptr + rays * 3 + 2, mask=live, other=0.0)
    dx = tl.load(d_ptr + rays * 3 + 0, mask=live, other=0.0)
    dy = tl.load(d_ptr + rays * 3 + 1, mask=live, other=0.0)
    dz = tl.load(d_ptr + rays * 3 + 2, mask=live, other=0.0)
    t0 = tl.load(t0_ptr + rays, mask=live, other=0.0)
    t_far = tl.load(tfar_ptr + rays, mask=live, other=float("-inf"))
    if CONE:
        n1 = tl.load(rule_ptr + rays, mask=live, other=0.0)
        s1 = tl.load(rule_ptr + R + rays, mask=live, other=1.0)
        n2 = tl.load(rule_ptr + 2 * R + rays, mask=live, other=0.0)
        s2 = tl.load(rule_ptr + 3 * R + rays, mask=live, other=1.0)
    else:
        n1 = t0
        s1 = t0
        n2 = t0
        s2 = t0
    cx = tl.load(geom_ptr + 0)
    cy = tl.load(geom_ptr + 1)
    cz = tl.load(geom_ptr + 2)
    hx = tl.load(geom_ptr + 3)
    hy = tl.load(geom_ptr + 4)
    hz = tl.load(geom_ptr + 5)
    if FILL:  # a ray writes within [offsets[r], offsets[r + 1]): nothing for rays cut from a fixed buffer
        base = tl.load(offsets_ptr + rays, mask=live, other=0)
        limit = tl.load(offsets_ptr + rays + 1, mask=live, other=0)

    k = tl.zeros([BLOCK], dtype=tl.int32)
    n = tl.zeros([BLOCK], dtype=tl.int32)
    ts = _edge(k, t0, n1, s1, n2, s2, step, growth, max_step, CONE, ACCURATE)
    active = live & (k < S) & (ts < t_far)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        te = _edge(k + 1, t0, n1, s1, n2, s2, step, growth, max_step, CONE, ACCURATE)
        mid = 0.5 * (ts + te)
        x = ox + dx * mid
        y = oy + dy * mid
        z = oz + dz * mid
        if L == 1:  # OccupancyGrid.query's one-level path: u = (x - box_min) * (RES / box_size), in cells
            lvl = tl.zeros([BLOCK], dtype=tl.float32)
            scale = tl.full([BLOCK], 1.0, tl.float32)
            lx = cx - hx
            ly = cy - hy
            lz = cz - hz
            ux = (x - tl.load(geom_ptr + 6)) * tl.load(geom_ptr + 9)
            uy = (y - tl.load(geom_ptr + 7)) * tl.load(geom_ptr + 10)
            uz = (z - tl.load(geom_ptr + 8)) * tl.load(geom_ptr + 11)
            inside = (tl.minimum(tl.minimum(ux, uy), uz) >= 0) & (tl.maximum(tl.maximum(ux, uy), uz) <= RES)
        else:
            # OccupancyGrid.level_of: level = clamp(ceil(log2(max(r, 1))), 0, L - 1),
            # r = max_a |x_a - c_a| / h_a
            r = tl.maximum(tl.maximum(tl.math.div_rn(tl.abs(x - cx), hx), tl.math.div_rn(tl.abs(y - cy), hy)),
                           tl.math.div_rn(tl.abs(z - cz), hz))
            lvl = tl.ceil(_log2(tl.maximum(r, 1.0), ACCURATE))
            lvl = tl.minimum(tl.maximum(lvl, 0.0), L - 1.0)
            scale = tl.full([BLOCK], 1.0, tl.float32)  # 2^level, exact
            for lev in tl.static_range(1, L):
                scale = tl.where(lvl >= lev, scale * 2.0, scale)
            # OccupancyGrid.cell_index: u = (x - (c - h_l)) / (2 h_l) in [0, 1], cell = int(u * RES)
            lx = cx - hx * scale
            ly = cy - hy * scale
            lz = cz - hz * scale
            ux = tl.math.div_rn(x - lx, 2.0 * (hx * scale))
            uy = tl.math.div_rn(y - ly, 2.0 * (hy * scale))
            uz = tl.math.div_rn(z - lz, 2.0 * (hz * scale))
            inside = (ux >= 0) & (ux <= 1) & (uy >= 0) & (uy <= 1) & (uz >= 0) & (uz <= 1)
            ux = ux * RES
            uy = uy * RES
            uz = uz * RES
        i = tl.minimum(tl.maximum(ux.to(tl.int32), 0), RES - 1)
        j = tl.minimum(tl.maximum(uy.to(tl.int32), 0), RES - 1)
        kk = tl.minimum(tl.maximum(uz.to(tl.int32), 0), RES - 1)
        cell = lvl.to(tl.int64) * (RES * RES * RES) + ((i * RES + j) * RES + kk).to(tl.int64)
        occ = tl.load(binary_ptr + cell, mask=active & inside, other=0) != 0
        emit = active & inside & occ
        if FILL:
            at = base + n
            fits = emit & (at < limit)
            tl.store(ts_ptr + at, ts, mask=fits)
            tl.store(te_ptr + at, te, mask=fits)
            tl.store(ri_ptr + at, rays, mask=fits)
        n += emit.to(tl.int32)

        # Empty cell: jump to the first candidate whose end edge passes the cell's (shrunk) exit.
        cs_x = 2.0 * (hx * scale) / RES
        cs_y = 2.0 * (hy * scale) / RES
        cs_z = 2.0 * (hz * scale) / RES
        t_exit = tl.minimum(tl.minimum(_exit_along(x, ox, dx, lx + i.to(tl.float32) * cs_x, cs_x),
                                       _exit_along(y, oy, dy, ly + j.to(tl.float32) * cs_y, cs_y)),
                            _exit_along(z, oz, dz, lz + kk.to(tl.float32) * cs_z, cs_z))
        k_skip = _first_step_at(t_exit, t0, n1, s1, n2, s2, step, growth, max_step, S, CONE) - 1
        k_next = tl.where(inside & ~occ, tl.maximum(k + 1, k_skip), k + 1)
        k = tl.where(active, k_next, k)
        ts = _edge(k, t0, n1, s1, n2, s2, step, growth, max_step, CONE, ACCURATE)
        active = active & (k < S) & (ts < t_far)
    if not FILL:
        tl.store(counts_ptr + rays, n, mask=live)


@triton.jit
def _early_stop_kernel(sig_ptr, ts_ptr, te_ptr, offsets_ptr, keep_ptr, counts_ptr, R, eps, thre,
                       USE_EPS: tl.constexpr, USE_THRE: tl.constexpr, ACCURATE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """One lane per ray over its packed samples: keep_i = T_i >= eps and alpha_i >= thre, with
    tau_i = sigma_i dt_i (fp32), T_i = exp(-sum_{j<i} tau_j) (fp64 sum, like the reference's fp64 scan),
    alpha_i = 1 - exp(-tau_i). T never grows, so a ray stops at its first T < eps (keep stays 0 after)."""
    rays = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rays < R
    j = tl.load(offsets_ptr + rays, mask=live, other=0)
    end = tl.load(offsets_ptr + rays + 1, mask=live, other=0)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    n = tl.zeros([BLOCK], dtype=tl.int32)
    active = j < end
    while tl.max(active.to(tl.int32), axis=0) > 0:
        sigma = tl.load(sig_ptr + j, mask=active, other=0.0)
        dt = tl.load(te_ptr + j, mask=active, other=0.0) - tl.load(ts_ptr + j, mask=active, other=0.0)
        tau = sigma * dt
        T = _exp(-acc, ACCURATE).to(tl.float32)
        keep = active
        if USE_EPS:
            keep = keep & (T >= eps)
        if USE_THRE:
            keep = keep & ((1.0 - _exp(-tau, ACCURATE)) >= thre)
        tl.store(keep_ptr + j, keep.to(tl.int8), mask=active)
        n += keep.to(tl.int32)
        acc += tl.where(active, tau.to(tl.float64), 0.0)
        j += 1
        active = active & (j < end)
        if USE_EPS:
            active = active & (T >= eps)
    tl.store(counts_ptr + rays, n, mask=live)


def _launch_options() -> dict:
    return {"num_warps": TUNING["warps"], "enable_fp_fusion": False}


def march_triton(
    origins: torch.Tensor,
    directions: torch.Tensor,
    grid: OccupancyGrid,
    *,
    step_size: float,
    near: float = 0.0,
    far: float = 1e10,
    cone_angle: float = 0.0,
    max_step: float = math.inf,
    density_fn: DensityFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    jitter: bool = False,
    max_steps: int = 4096,
    capacity: int | None = None,
    candidate_capacity: int | None = None,
) -> RaySamples:
    """Samples along rays in occupied space, front to back: `ngraphics.rendering.marching.march` on the GPU.

    Args: as `march` (origins, directions: (R, 3) float32 unit rays; grid; step_size, near, far, cone_angle,
        max_step in world units; density_fn `(t_starts, t_ends, ray_indices) -> sigmas (N,)`; early_stop_eps;
        alpha_thre; jitter; max_steps; capacity, candidate_capacity).
    Returns: RaySamples (ray_indices (N,) int64 sorted, t_starts / t_ends (N,) float32, offsets (R + 1,)).
    Host syncs: without capacity, the sample total and with density_fn one `nonzero`; with capacity none
    (the fill pass writes straight into the candidate buffer, rays past it are cut whole).
    """
    device = origins.device
    R = origins.shape[0]
    origins = origins.float().contiguous()
    directions = directions.float().contiguous()
    # Per-ray range, exactly as the reference (same ops, same random draw for jitter).
    aabb = grid.outer_aabb.to(device)
    t_near, t_far = ray_aabb(origins, directions, aabb)
    t_near = t_near.clamp_min(near)
    t_far = t_far.clamp_max(far)
    hit = t_far > t_near
    if jitter:
        t_near = t_near + torch.rand_like(t_near) * step_size
    S = min(max_steps, steps_to_cover(float(near), grid.outer_diagonal, step_size, cone_angle, max_step))
    t_far = torch.where(hit, t_far, torch.full_like(t_far, -math.inf)).contiguous()
    t0 = t_near.float().contiguous()

    cone = cone_angle > 0.0
    max_step = max(max_step, step_size)
    growth = math.log1p(cone_angle) if cone else 1.0
    if cone:  # step_edges' phase constants, same ops
        t_a, t_b = step_size / cone_angle, max_step / cone_angle
        n1 = torch.ceil((t_a - t0).clamp_min(0.0) / step_size)
        s1 = t0 + n1 * step_size
        n2 = torch.ceil(torch.log((t_b / s1.clamp_min(1e-12)).clamp_min(1.0)) / growth)
        s2 = s1 * torch.exp(n2 * growth)
        rule = torch.stack([n1, s1, n2, s2]).contiguous()
    else:
        rule = t0
    box = grid.aabb.to(device=device, dtype=torch.float32)
    center, half, inv = box.mean(0), 0.5 * (box[1] - box[0]), grid.resolution / (box[1] - box[0])
    geom = torch.cat([center, half, box[0], inv]).contiguous()
    binary = grid.binary.to(device).contiguous().view(torch.uint8).reshape(-1)

    counts = torch.empty(R, dtype=torch.int32, device=device)
    empty_f = torch.empty(0, dtype=torch.float32, device=device)
    empty_i = torch.empty(0, dtype=torch.int64, device=device)
    launch = (triton.cdiv(R, TUNING["block"]),)
    consts = dict(L=grid.levels, RES=grid.resolution, CONE=cone, ACCURATE=not triton_interpreter(),
                  BLOCK=TUNING["block"], **_launch_options())
    if R:
        _march_kernel[launch](origins, directions, t0, t_far, rule, geom, binary, empty_i, counts,
                              empty_f, empty_f, empty_i, R, S, step_size, growth, max_step, FILL=False,
                              **consts)
    else:
        counts.zero_()
    offsets = offsets_from_counts(counts.to(torch.int64))
    if capacity is None:
        N = int(offsets[-1])  # host sync: buffer size
        n_fit = None
        t_starts = torch.empty(N, dtype=torch.float32, device=device)
        t_ends = torch.empty(N, dtype=torch.float32, device=device)
        ray_indices = torch.empty(N, dtype=torch.int64, device=device)
    else:  # rays whose samples fit, whole and in order; the rest keep zero-length padding (fit_to_capacity)
        N = candidate_capacity or capacity
        n_fit = (offsets[1:] <= N).sum()
        offsets = offsets.clamp(max=offsets.index_select(0, n_fit.reshape(1)))  # (tensor index: no sync)
        t_starts = torch.zeros(N, dtype=torch.float32, device=device)
        t_ends = torch.zeros(N, dtype=torch.float32, device=device)
        ray_indices = torch.full((N,), max(R - 1, 0), dtype=torch.int64, device=device)
    if N and R:
        _march_kernel[launch](origins, directions, t0, t_far, rule, geom, binary, offsets, counts,
                              t_starts, t_ends, ray_indices, R, S, step_size, growth, max_step, FILL=True,
                              **consts)
    samples = RaySamples(ray_indices, t_starts, t_ends, offsets, n_fit)
    early_stop = density_fn is not None and (early_stop_eps > 0.0 or alpha_thre > 0.0)
    if not early_stop or N == 0:
        return samples if capacity is None else fit_to_capacity(samples, capacity)
    with torch.no_grad():
        sigmas = density_fn(t_starts, t_ends, ray_indices).reshape(-1).float().contiguous()
    keep = torch.zeros(N, dtype=torch.int8, device=device)
    _early_stop_kernel[launch](sigmas, t_starts, t_ends, offsets, keep, counts, R, early_stop_eps, alpha_thre,
                               USE_EPS=early_stop_eps > 0.0, USE_THRE=alpha_thre > 0.0,
                               ACCURATE=not triton_interpreter(), BLOCK=TUNING["block"],
                               num_warps=TUNING["warps"])
    if capacity is not None:
        return fit_to_capacity(samples, capacity, keep.bool())
    idx = torch.nonzero(keep)[:, 0]  # host sync
    return RaySamples(ray_indices[idx], t_starts[idx], t_ends[idx],
                      offsets_from_counts(counts.to(torch.int64)))
