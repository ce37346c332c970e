"""Triton kernels for the multi-resolution hashed simplex lattice (`Simplex`): forward, backward (tables and
positions) and double backward. `simplex_encode_triton` is the twin of
`ngraphics.encodings.simplex.simplex_encode_torch` (same signature, vertices, weights and indexing).

Per level and point (see the reference's docstring for the construction):
    p = x * s + 0.5;  q = p + F_D sum(p) (skew);  b = floor(q);  f = q - b
    rank_d = position of f_d in the stable descending sort (ties: lower dim first)
    vertex k (k = 0..D): b + [rank_d < k] per dim;  weights from the sorted fractions t:
    w_0 = 1 - t_0,  w_k = t_{k-1} - t_k,  w_D = t_{D-1}
So D + 1 table reads per level instead of the grid's 2^D; ranks come from D (D - 1) / 2 compares, no sort.

Derivatives: d w_k / d f_d = [rank_d = k - 1] - [rank_d = k], d f_d / d x_e = s (delta_de + F_D). Hence
with G_k = dy . table[vertex k]:  dx_e = s (g_e + F_D sum_d g_d),  g_d = G_{rank_d + 1} - G_{rank_d}.
The weights are piecewise linear: d2 out / dx2 = 0, so the double backward has no Hessian term. For a
cotangent gdx of dx, with h_d = s (gdx_d + F_D sum_e gdx_e) and a_k = (sorted h)_{k-1} - (sorted h)_k:
gtable[vertex k] += a_k dy, gdy += sum_k a_k table[vertex k]; a table cotangent gdt adds the forward and
the input gradient computed with gdt in place of the table.

Launch and layout as `kernels/grid.py`: 1D launch of point blocks x level groups, per-level constants in an
int64 level table, D and F compile-time, all tensors (BLOCK,), packed feature loads, fp32 reductions (or
packed fp16 ones with gradient_dtype=torch.float16 on sm_90, `_atomics.py`).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch
import triton
import triton.language as tl
from ngraphics.kernels._atomics import _atomic_row
from ngraphics.kernels._common import (
    LevelOps,
    _axpy,
    _dot,
    _fold_terms,
    _level_row,
    _load_row,
    _u32_terms,
    _zeros,
    encode,
    level_rows,
)

from ngraphics.encodings.simplex import PRIMES, SimplexSpec, skew_factor

# Launch shape per kernel, as kernels/grid.py's TUNING.
TUNING = {kind: {"block": 128, "warps": 4, "group": "auto", "level_fastest": False}
          for kind in ("fwd", "bwd", "bwd_bwd")}


# ---------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _simplex_setup(xs, scale, factors, D: tl.constexpr, SKEW: tl.constexpr):
    """-> lower/upper index terms per dim (uint32), fractions f (fp32) and ranks (int32) per dim."""
    ps = ()
    total = tl.zeros(xs[0].shape, tl.float32)
    for d in tl.static_range(D):
        p = xs[d] * scale + 0.5
        ps = ps + (p,)
        total += p
    lo = ()
    hi = ()
    fr = ()
    for d in tl.static_range(D):
        q = ps[d] + SKEW * total
        base = tl.floor(q)
        fr = fr + (q - base,)
        t0, t1 = _u32_terms(base.to(tl.int32).to(tl.uint32, bitcast=True), factors[d])
        lo = lo + (t0,)
        hi = hi + (t1,)
    ranks = ()
    for d in tl.static_range(D):
        r = tl.zeros(xs[0].shape, tl.int32)
        for e in tl.static_range(D):
            if e < d:
                r += (fr[e] >= fr[d]).to(tl.int32)
            elif e > d:
                r += (fr[e] > fr[d]).to(tl.int32)
        ranks = ranks + (r,)
    return lo, hi, fr, ranks


@triton.jit
def _sorted(vals, ranks, D: tl.constexpr):
    """(vals sorted by rank): out[k] = vals[d] where rank_d == k."""
    out = ()
    for k in tl.static_range(D):
        s = tl.zeros(vals[0].shape, tl.float32)
        for d in tl.static_range(D):
            s = tl.where(ranks[d] == k, vals[d], s)
        out = out + (s,)
    return out


@triton.jit
def _diffs(t, first, D: tl.constexpr):
    """(first - t_0, t_0 - t_1, ..., t_{D-2} - t_{D-1}, t_{D-1}): the D + 1 barycentric weights for
    first = 1 (t the sorted fractions), or their directional derivative for first = 0."""
    out = (first - t[0],)
    for k in tl.static_range(1, D):
        out = out + (t[k - 1] - t[k],)
    return out + (t[D - 1],)


@triton.jit
def _vertex_row(lo, hi, ranks, K: tl.constexpr, HASHED: tl.constexpr, size, off):
    """Table entry of vertex K: dim d takes the upper cell where rank_d < K."""
    terms = ()
    for d in tl.static_range(len(lo)):
        if K == 0:
            terms = terms + (lo[d],)
        else:
            terms = terms + (tl.where(ranks[d] < K, hi[d], lo[d]),)
    return _level_row(_fold_terms(terms, HASHED), HASHED, size, off)


@triton.jit
def _input_grad(gs, ranks, scale, D: tl.constexpr, SKEW: tl.constexpr):
    """G_k (k = 0..D) -> d/dx: s (g_e + F_D sum_d g_d), g_d = G_{rank_d + 1} - G_{rank_d}."""
    g = ()
    total = tl.zeros(gs[0].shape, tl.float32)
    for d in tl.static_range(D):
        gd = tl.zeros(gs[0].shape, tl.float32)
        for k in tl.static_range(D):
            gd = tl.where(ranks[d] == k, gs[k + 1] - gs[k], gd)
        g = g + (gd,)
        total += gd
    out = ()
    for e in tl.static_range(D):
        out = out + (scale * (g[e] + SKEW * total),)
    return out


# ---------------------------------------------------------------------------------------------------------
# Per-level bodies, the LEVEL arguments of the shared kernels in _common.py (SKEW is the kernels' P)


@triton.jit
def _fwd_level(xs, table_ptr, scale, off, size, factors, HASHED: tl.constexpr, D: tl.constexpr,
               F: tl.constexpr, SKEW: tl.constexpr, BLOCK: tl.constexpr):
    lo, hi, fr, ranks = _simplex_setup(xs, scale, factors, D, SKEW)
    w = _diffs(_sorted(fr, ranks, D), 1.0, D)
    acc = _zeros(F, BLOCK)
    for k in tl.static_range(D + 1):
        row = _vertex_row(lo, hi, ranks, k, HASHED, size, off)
        acc = _axpy(acc, w[k], _load_row(table_ptr, row, F, None), F)
    return acc


@triton.jit
def _bwd_level(xs, dy, dx, table_ptr, dtable_ptr, mask, scale, off, size, factors, HASHED: tl.constexpr,
               D: tl.constexpr, F: tl.constexpr, SKEW: tl.constexpr, BLOCK: tl.constexpr,
               NEED_TABLE: tl.constexpr, NEED_X: tl.constexpr, VEC: tl.constexpr):
    lo, hi, fr, ranks = _simplex_setup(xs, scale, factors, D, SKEW)
    w = _diffs(_sorted(fr, ranks, D), 1.0, D)
    gs = ()
    for k in tl.static_range(D + 1):
        row = _vertex_row(lo, hi, ranks, k, HASHED, size, off)
        if NEED_TABLE:
            _atomic_row(dtable_ptr, row, w[k], dy, VEC)
        if NEED_X:
            gs = gs + (_dot(_load_row(table_ptr, row, F, None), dy, F),)
    if NEED_X:
        g = _input_grad(gs, ranks, scale, D, SKEW)
        new = ()
        for d in tl.static_range(D):
            new = new + (dx[d] + g[d],)
        dx = new
    return dx


@triton.jit
def _bwd_bwd_level(xs, dy, gdx, gx, table_ptr, gdt_ptr, gtable_ptr, mask, scale, off, size, factors,
                   HASHED: tl.constexpr, D: tl.constexpr, F: tl.constexpr, SKEW: tl.constexpr,
                   BLOCK: tl.constexpr, HAS_GDX: tl.constexpr, HAS_GDT: tl.constexpr,
                   NEED_TABLE: tl.constexpr, NEED_DY: tl.constexpr, NEED_X: tl.constexpr,
                   VEC: tl.constexpr):
    lo, hi, fr, ranks = _simplex_setup(xs, scale, factors, D, SKEW)
    w = _diffs(_sorted(fr, ranks, D), 1.0, D)
    a = ()
    if HAS_GDX:  # a_k = d w_k / d x . gdx
        gsum = gdx[0]
        for d in tl.static_range(1, D):
            gsum += gdx[d]
        h = ()
        for d in tl.static_range(D):
            h = h + (scale * (gdx[d] + SKEW * gsum),)
        a = _diffs(_sorted(h, ranks, D), 0.0, D)
    gdy = _zeros(F, BLOCK)
    qs = ()
    for k in tl.static_range(D + 1):
        row = _vertex_row(lo, hi, ranks, k, HASHED, size, off)
        if HAS_GDX:
            if NEED_TABLE:
                _atomic_row(gtable_ptr, row, a[k], dy, VEC)
            if NEED_DY:
                gdy = _axpy(gdy, a[k], _load_row(table_ptr, row, F, None), F)
        if HAS_GDT and (NEED_DY or NEED_X):
            q = _load_row(gdt_ptr, row, F, None)
            gdy = _axpy(gdy, w[k], q, F)
            qs = qs + (_dot(q, dy, F),)
    if HAS_GDT and NEED_X:
        g = _input_grad(qs, ranks, scale, D, SKEW)
        new = ()
        for d in tl.static_range(D):
            new = new + (gx[d] + g[d],)
        gx = new
    return gdy, gx


# ---------------------------------------------------------------------------------------------------------
# Launchers


class SimplexOps(LevelOps):
    """Launchers for one SimplexSpec (the kernels in `_common.py` with the simplex level bodies, P = SKEW)."""

    levels: ClassVar[dict] = {"fwd": _fwd_level, "bwd": _bwd_level, "bwd_bwd": _bwd_bwd_level}
    tuning = TUNING
    # x * s + 0.5 and p + F_D * sum(p) round like the reference (no fma): at fine levels (s ~ 5e5) float32
    # keeps ~4 fraction bits, so one rounding more or less moves points to another simplex.
    fp_fusion = False

    def __init__(self, spec: SimplexSpec):
        D = spec.n_dims
        factors = []
        for level in range(spec.n_levels):
            if spec.hashed[level]:
                size = spec.table_sizes[level]
                assert size & (size - 1) == 0, "hashed levels have power-of-two tables"
                factors.append(PRIMES[:D])
            else:  # dense: stride R^d, exact (R^D <= table size < 2^31)
                factors.append(tuple(spec.resolutions[level] ** d for d in range(D)))
        rows = level_rows(spec.offsets[:-1], spec.table_sizes, spec.hashed, spec.scales, factors)
        super().__init__(D, spec.n_levels, spec.n_features, spec.n_params, rows, {"P": skew_factor(D)})


@functools.lru_cache(maxsize=64)
def simplex_ops(spec: SimplexSpec) -> SimplexOps:
    return SimplexOps(spec)


def simplex_encode_triton(x: torch.Tensor, params: torch.Tensor, spec: SimplexSpec, *,
                          table_dtype: torch.dtype | None = None,
                          out_dtype: torch.dtype | None = None,
                          gradient_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Multi-resolution simplex encoding with Triton kernels; twin of `simplex_encode_torch`.

    Args:
        x: points. (N, D) float (cast to float32), nominally in [0, 1] (outside wraps into the tables).
        params: flat tables, `params.view(-1, F)` rows per level at `spec.offsets`. (spec.n_params,) float32
            (master) or float16; gradients come back in params' dtype, accumulated as `gradient_dtype` says.
        spec: from `simplex_spec(D, config)`.
        table_dtype: None (params' dtype) or torch.float16 (cast once per call; half the gather bytes).
        out_dtype: output dtype, default float32.
        gradient_dtype: None / torch.float32 (float32 sums) or torch.float16: tiny-cuda-nn's half2
            accumulation of the table gradient on sm_90 GPUs when F >= 2 (float32 elsewhere); every partial
            sum rounds to fp16 and sums past 65504 become inf: see `grid_encode_triton`.
    Returns: (N, L * F) level-major features.
    Differentiable w.r.t. x and params, twice (d2 out / dx2 = 0; d(dx)/d params is not). Runs on CUDA, or
    on CPU tensors under TRITON_INTERPRET=1. Example: `simplex_encode_triton(x.cuda(), enc.params, enc.spec)`.
    """
    return encode(x, params, simplex_ops(spec), spec.n_dims, spec.n_params, table_dtype, out_dtype, "simplex",
                  gradient_dtype)
