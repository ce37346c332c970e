"""Triton kernels for the multiresolution grids (HashGrid, DenseGrid, TiledGrid): forward, backward (tables
and positions) and double backward. `grid_encode_triton` is the twin of
`ngraphics.encodings.grid.grid_encode_torch` (same signature, indexing and level-major output).

Layout and launch. x: (N, D) fp32 row-major; table: flat (n_params,) fp32 or fp16, level l's rows start at
entry `spec.offsets[l]`, F features innermost (one packed 4- or 8-byte load per corner for F <= 4 fp16 or
F <= 2 fp32); out: (N, L * F), `out[:, l * F + f]`. One program handles BLOCK points and a group of GROUP
consecutive levels (a runtime loop); a 1D launch of cdiv(N, BLOCK) * cdiv(L, GROUP) programs, level groups
either outermost (GROUP = 1 is tiny-cuda-nn's points x levels grid) or innermost (`level_fastest`).
D, F, the interpolation and L are compile-time constants; N and everything per level (scale, offset, table
size, hashed?, primes or strides) are runtime values read from a small int64 level table, so one compiled
kernel serves every spec of the same shape and every batch size (N is not specialised). The 2^D corners
are unrolled (`tl.static_range`); all tensors are 1D (BLOCK,), so no layout conversions.

Index maths follows tcnn exactly: `pos = fma(scale, x, 0.5)`, `cell = (uint32)(int)floor(pos)` (negative
cells wrap), dense stride index over the dims `grid_index_plan` admits, else the coherent prime hash
(xor of `cell_d * prime_d`, uint32), then `% hashmap_size`.

Gradients: d table via relaxed reductions into an fp32 buffer, or with gradient_dtype=torch.float16 on sm_90
(F >= 2) into an fp16 one with packed half2 reductions like tiny-cuda-nn (`_atomics.py`); d x recomputed in
the backward kernel only when x needs it (constexpr flag), summed over a program's levels in registers. The
double backward (d(dx)/d table, d(dx)/d x, d(dx)/d dy) is one more kernel; `_common.py` has the formulas.
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

from ngraphics.encodings.grid import HASH_PRIMES, GridSpec, grid_index_plan

INTERP_CODE = {"Nearest": 0, "Linear": 1, "Smoothstep": 2}

# Launch shape per kernel (from H100 measurements, docs/benchmarks.md): points per program, warps, levels
# per program (>= L: all levels in one program), and whether consecutive programs take the same points'
# next level group (level_fastest) or the next points' same level group (tcnn's order).
TUNING = {kind: {"block": 128, "warps": 4, "group": "auto", "level_fastest": False}
          for kind in ("fwd", "bwd", "bwd_bwd")}
MAX_LOG2_HASHMAP_SIZE = 24  # the largest hashed level table the kernels take (the torch reference takes any)


def unsupported_reason(spec: GridSpec) -> str | None:
    """Why the kernels cannot run `spec`, or None. `ngraphics.ops` asks it (op `grid_encode`): at construction
    for a forced triton backend (a ConfigError) and per call for auto (the torch reference instead)."""
    if spec.grid_type == "Hash" and max(spec.hashmap_sizes) > 2**MAX_LOG2_HASHMAP_SIZE:
        return f"log2_hashmap_size > {MAX_LOG2_HASHMAP_SIZE}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _axis(x, scale, INTERP: tl.constexpr):
    """One input dim at one level -> (cell uint32, upper weight w, dw/dx, d2w/dx2). Lower weight is 1 - w."""
    pos = tl.fma(x, scale, 0.5)
    lower = tl.floor(pos)
    frac = pos - lower
    cell = lower.to(tl.int32).to(tl.uint32, bitcast=True)
    if INTERP == 2:  # Smoothstep: w = f^2 (3 - 2f), dw/df = 6 f (1 - f), d2w/df2 = 6 - 12 f
        w = frac * frac * (3.0 - 2.0 * frac)
        dw = (6.0 * frac * (1.0 - frac)) * scale
        ddw = (6.0 - 12.0 * frac) * (scale * scale)
    elif INTERP == 1:  # Linear
        w = frac
        dw = tl.zeros(frac.shape, tl.float32) + scale
        ddw = tl.zeros(frac.shape, tl.float32)
    else:  # Nearest: only corner 0, weight 1, no derivative
        w = tl.zeros(frac.shape, tl.float32)
        dw = tl.zeros(frac.shape, tl.float32)
        ddw = tl.zeros(frac.shape, tl.float32)
    return cell, w, dw, ddw


@triton.jit
def _level_setup(xs, scale, factors, D: tl.constexpr, INTERP: tl.constexpr):
    """Per-dim tuples for one level: lower/upper index terms, weights w and 1 - w, dw/dx, d2w/dx2.
    factors[d]: prime_d (hashed level) or the dense stride of dim d (0 for dims the index leaves out)."""
    lo = ()
    hi = ()
    wu = ()
    wl = ()
    dw = ()
    ddw = ()
    for d in tl.static_range(D):
        cell, w, dwd, ddwd = _axis(xs[d], scale, INTERP)
        t0, t1 = _u32_terms(cell, factors[d])
        lo = lo + (t0,)
        hi = hi + (t1,)
        wu = wu + (w,)
        wl = wl + (1.0 - w,)
        dw = dw + (dwd,)
        ddw = ddw + (ddwd,)
    return lo, hi, wu, wl, dw, ddw


@triton.jit
def _corner_row(lo, hi, C: tl.constexpr, HASHED: tl.constexpr, size, off):
    """Table entry of corner C (bit d of C: upper cell in dim d)."""
    terms = ()
    for d in tl.static_range(len(lo)):
        if (C >> d) & 1:
            terms = terms + (hi[d],)
        else:
            terms = terms + (lo[d],)
    return _level_row(_fold_terms(terms, HASHED), HASHED, size, off)


@triton.jit
def _weight(wu, wl, C: tl.constexpr, J: tl.constexpr, K: tl.constexpr, D: tl.constexpr):
    """Product over dims d not in {J, K} of corner C's per-dim weight (w_d if bit d else 1 - w_d), in dim
    order (so products shared between corners are computed once). J = K = -1: the corner weight;
    J = K = j: d weight / d w_j up to sign; J != K: the mixed second derivative up to sign."""
    p = tl.full(wu[0].shape, 1.0, tl.float32)
    for d in tl.static_range(D):
        if d != J and d != K:
            if (C >> d) & 1:
                p = p * wu[d]
            else:
                p = p * wl[d]
    return p


@triton.jit
def _signed(C: tl.constexpr, K: tl.constexpr, v):
    """+v if corner C takes the upper cell in dim K, else -v (the sign of d w_C / d w_K)."""
    if (C >> K) & 1:
        return v
    else:
        return -v


# ---------------------------------------------------------------------------------------------------------
# Per-level bodies, the LEVEL arguments of the shared kernels in _common.py (HASHED is constant inside: the
# kernels branch once per level, uniformly; INTERP is the kernels' P)


@triton.jit
def _fwd_level(xs, table_ptr, scale, off, size, factors, HASHED: tl.constexpr, D: tl.constexpr,
               F: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr):
    """sum_c w_c table[row_c] -> tuple of F (BLOCK,) fp32."""
    NC: tl.constexpr = 1 if INTERP == 0 else 1 << D
    lo, hi, wu, wl, _, _ = _level_setup(xs, scale, factors, D, INTERP)
    acc = _zeros(F, BLOCK)
    for c in tl.static_range(NC):
        row = _corner_row(lo, hi, c, HASHED, size, off)
        acc = _axpy(acc, _weight(wu, wl, c, -1, -1, D), _load_row(table_ptr, row, F, None), F)
    return acc


@triton.jit
def _bwd_level(xs, dy, dx, table_ptr, dtable_ptr, mask, scale, off, size, factors, HASHED: tl.constexpr,
               D: tl.constexpr, F: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr,
               NEED_TABLE: tl.constexpr, NEED_X: tl.constexpr, VEC: tl.constexpr):
    """dtable[row_c] += w_c dy (atomics); returns dx + sum_c (dw_c/dx) (dy . table[row_c]), where
    dw_c/dx_k = sign_k(c) dw_k prod_{d != k} w_d(c): corners are summed first, dw_k multiplies last."""
    NC: tl.constexpr = 1 if INTERP == 0 else 1 << D
    lo, hi, wu, wl, dw, _ = _level_setup(xs, scale, factors, D, INTERP)
    gs = ()  # gs[c] = dy . table[row_c]
    for c in tl.static_range(NC):
        row = _corner_row(lo, hi, c, HASHED, size, off)
        if NEED_TABLE:
            _atomic_row(dtable_ptr, row, _weight(wu, wl, c, -1, -1, D), dy, VEC)
        if NEED_X:
            gs = gs + (_dot(_load_row(table_ptr, row, F, None), dy, F),)
    if NEED_X:
        new = ()
        for k in tl.static_range(D):
            s = tl.zeros([BLOCK], tl.float32)
            for c in tl.static_range(NC):
                s += _signed(c, k, _weight(wu, wl, c, k, k, D) * gs[c])
            new = new + (dx[k] + dw[k] * s,)
        dx = new
    return dx


@triton.jit
def _bwd_bwd_level(xs, dy, gdx, gx, table_ptr, gdt_ptr, gtable_ptr, mask, scale, off, size, factors,
                   HASHED: tl.constexpr, D: tl.constexpr, F: tl.constexpr, INTERP: tl.constexpr,
                   BLOCK: tl.constexpr, HAS_GDX: tl.constexpr, HAS_GDT: tl.constexpr,
                   NEED_TABLE: tl.constexpr, NEED_DY: tl.constexpr, NEED_X: tl.constexpr,
                   VEC: tl.constexpr):
    """One level of the double backward: cotangents gdx (D-tuple) of dx and gdt (table-shaped, at gdt_ptr)
    of dtable -> (gdy: F-tuple, gx: D-tuple; gtable via atomics). With a_c = sum_j gdx_j dw_c/dx_j
    = sum_j sign_j u_j prod_{d != j} w_d  (u_j = gdx_j dw_j):
      gtable[row_c] += a_c dy                              (from gdx)
      gdy_l = sum_c a_c table[row_c] + sum_c w_c gdt[row_c]
      gx_k  = sum_c (d a_c / d x_k) (dy . table[row_c]) + sum_c (d w_c / d x_k) (dy . gdt[row_c])
    d a_c/dx_k = sign_k [dw_k sum_{j != k} sign_j u_j prod_{d != j,k} w_d + gdx_k ddw_k prod_{d != k} w_d]."""
    NC: tl.constexpr = 1 if INTERP == 0 else 1 << D
    DX_TERMS: tl.constexpr = HAS_GDX and INTERP != 0
    lo, hi, wu, wl, dw, ddw = _level_setup(xs, scale, factors, D, INTERP)
    u = ()
    if DX_TERMS:
        for k in tl.static_range(D):
            u = u + (gdx[k] * dw[k],)
    gdy = _zeros(F, BLOCK)
    for c in tl.static_range(NC):
        row = _corner_row(lo, hi, c, HASHED, size, off)
        hv = tl.zeros([BLOCK], tl.float32)  # dy . table[row_c]
        qv = tl.zeros([BLOCK], tl.float32)  # dy . gdt[row_c]
        if DX_TERMS:
            a = tl.zeros([BLOCK], tl.float32)
            for k in tl.static_range(D):
                a += _signed(c, k, u[k] * _weight(wu, wl, c, k, k, D))
            if NEED_TABLE:
                _atomic_row(gtable_ptr, row, a, dy, VEC)
            if NEED_DY or NEED_X:
                v = _load_row(table_ptr, row, F, None)
                gdy = _axpy(gdy, a, v, F)
                hv = _dot(v, dy, F)
        if HAS_GDT and (NEED_DY or NEED_X):
            q = _load_row(gdt_ptr, row, F, None)
            gdy = _axpy(gdy, _weight(wu, wl, c, -1, -1, D), q, F)
            qv = _dot(q, dy, F)
        if NEED_X and INTERP != 0:
            new = ()
            for k in tl.static_range(D):
                t = tl.zeros([BLOCK], tl.float32)
                if DX_TERMS:
                    inner = tl.zeros([BLOCK], tl.float32)
                    for j in tl.static_range(D):
                        if j != k:
                            inner += _signed(c, j, u[j] * _weight(wu, wl, c, j, k, D))
                    da = dw[k] * inner
                    if INTERP == 2:
                        da += gdx[k] * ddw[k] * _weight(wu, wl, c, k, k, D)
                    t += da * hv
                if HAS_GDT:
                    t += dw[k] * _weight(wu, wl, c, k, k, D) * qv
                new = new + (gx[k] + _signed(c, k, t),)
            gx = new
    return gdy, gx


# ---------------------------------------------------------------------------------------------------------
# Launchers


def level_factors(spec: GridSpec) -> tuple[list[bool], list[tuple[int, ...]]]:
    """Per level: hashed?, and per dim the prime (hashed) or dense stride (0 for dims tcnn's
    `stride <= hashmap_size` loop leaves out; a stride that wrapped to 0 adds nothing either)."""
    primes = HASH_PRIMES[spec.hash_type][:spec.n_dims]
    hashed, factors = [], []
    for level in range(spec.n_levels):
        strides, is_hashed = grid_index_plan(spec, level)
        size = spec.hashmap_sizes[level]
        assert not is_hashed or size & (size - 1) == 0, "hashed levels have power-of-two tables"
        hashed.append(is_hashed)
        factors.append(tuple(primes) if is_hashed else tuple(strides) + (0,) * (spec.n_dims - len(strides)))
    return hashed, factors


class GridOps(LevelOps):
    """Launchers for one GridSpec (the kernels in `_common.py` with the grid's level bodies, P = INTERP)."""

    levels: ClassVar[dict] = {"fwd": _fwd_level, "bwd": _bwd_level, "bwd_bwd": _bwd_bwd_level}
    tuning = TUNING

    def _group(self, kind, stream_bytes, table_bytes) -> int:
        # Forward, D <= 3: one level per program (tcnn's grid) beat the sector-filling rule on the H100
        # (config A, 2^22: 2.72 vs 3.11 ms fp16, 3.80 vs 4.34 ms fp32): the coarse levels' tables stay in L1
        # (53% vs 37% L1 hits) and the kernel is bound by L1/L2 requests, not by the rows' DRAM bytes.
        # In 4D the coarse tables (16^4 rows) exceed L1 anyway and the rule's fewer DRAM bytes win (4.59 ms vs
        # ~5.2 ms with one level per program, the latter from an earlier run timed with a sync per call).
        if kind == "fwd" and self.tuning[kind]["group"] == "auto" and self.D <= 3:
            return 1
        return super()._group(kind, stream_bytes, table_bytes)

    def __init__(self, spec: GridSpec):
        hashed, factors = level_factors(spec)
        rows = level_rows(spec.offsets, spec.hashmap_sizes, hashed, spec.scales, factors)
        super().__init__(spec.n_dims, spec.n_levels, spec.n_features, spec.n_params, rows,
                         {"P": INTERP_CODE[spec.interpolation]}, moves=spec.interpolation != "Nearest")


@functools.lru_cache(maxsize=64)
def grid_ops(spec: GridSpec) -> GridOps:
    return GridOps(spec)


def grid_encode_triton(x: torch.Tensor, params: torch.Tensor, spec: GridSpec, *,
                       table_dtype: torch.dtype | None = None,
                       out_dtype: torch.dtype | None = None,
                       gradient_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Multiresolution grid encoding with Triton kernels; twin of `grid_encode_torch`.

    Args:
        x: positions. (N, D) float (cast to float32), nominally in [0, 1]; not clamped (cells wrap like tcnn).
        params: flat tables, levels at `spec.offsets`, features innermost. (spec.n_params,) float32 (master)
            or float16. Gradients come back in params' dtype, accumulated as `gradient_dtype` says.
        spec: from `ngraphics.encodings.grid.grid_spec(D, config)`.
        table_dtype: dtype the kernels read the tables in. None: params' dtype (float32 for float32 params,
            the exact twin of the reference). torch.float16: params cast once per call (tiny-cuda-nn's
            default), half the gather bytes; interpolation still accumulates in float32.
        out_dtype: output dtype, default float32; torch.float16 halves the output bytes.
        gradient_dtype: precision in which the table gradient is summed over points. None or torch.float32:
            float32. torch.float16: tiny-cuda-nn's half2 accumulation, a speed option (half the reduction
            bytes and half the gradient buffer, which then fits in L2), used on sm_90 GPUs when F >= 2;
            elsewhere (F = 1, older GPUs, the interpreter) the sums stay float32, as tcnn does for F = 1.
            Precision lost: every contribution and every partial sum is rounded to fp16 (11 bits; an entry
            with n contributions is off by ~2^-11 sqrt(n) relative), values below 6e-5 lose bits as fp16
            subnormals, and a sum past 65504 becomes inf (torch.amp.GradScaler detects it and skips the
            step): scale the loss so that gradients sit well inside fp16's range. Gradients w.r.t. x and the
            double backward always sum in float32; the result is cast to params' dtype.
    Returns: (N, L * F) level-major features, `out[:, l * F + f]`.
    Differentiable w.r.t. x and params, twice (double backward through the input gradient for eikonal
    losses; a third derivative raises). Runs on CUDA, or on CPU tensors under TRITON_INTERPRET=1.
    Example: `grid_encode_triton(torch.rand(2**20, 3, device="cuda"), enc.params, enc.spec)`.
    """
    return encode(x, params, grid_ops(spec), spec.n_dims, spec.n_params, table_dtype, out_dtype, "grid",
                  gradient_dtype)
