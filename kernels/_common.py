"""Shared pieces of the grid and simplex kernels: table-row helpers (hash / dense stride index) and the
autograd pair that gives both encodings a backward and a double backward.

Interpolating encodings share one shape: per level, K vertices with weights `w_k(x)` read F features at rows
`row_k(x)` of the level's table, and `out_l = sum_k w_k(x) table[row_k]`. Derivatives:

    d out / d table[row_k]  = w_k                       (linear in the table: d2 out / d table2 = 0)
    d out / d x             = sum_k (d w_k / d x) table[row_k]
    d2 out / d x d table    = d w_k / d x
    d2 out / d x2           = sum_k (d2 w_k / d x2) table[row_k]   (grid: off-diagonal and Smoothstep terms)

The three kernels (forward, backward, double backward) are shared too: a program loads its points and loops
over its levels; what happens at one level is the encoding's per-level body, a `tl.constexpr` function
argument (LEVEL) with one shape constant (P: the grid's interpolation, the simplex's skew factor).
`EncodeFn` (forward) saves x and the table; its backward is `EncodeBackwardFn`, an autograd.Function whose
own backward runs the double-backward kernel (tiny-cuda-nn's `backward_backward_input`). Each encoding
supplies a `LevelOps` subclass: its three level bodies and its level table (the launchers live here).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import triton
import triton.language as tl
from ngraphics.kernels._atomics import half_reductions, vector_atomics

# ---------------------------------------------------------------------------------------------------------
# Device helpers (inlined into the kernels)


@triton.jit
def _u32_terms(cell, factor):
    """(cell * factor, (cell + 1) * factor) in uint32: one dim's contribution to the lower / upper vertex
    (factor: hash prime or dense stride). (c + 1) * f == c * f + f mod 2^32, so the upper term is one add."""
    lo = cell * factor
    return lo, lo + factor


@triton.jit
def _fold_terms(terms, HASHED: tl.constexpr):
    """Dense index (sum, uint32 wrap) or coherent prime hash (xor) of per-dim terms."""
    idx = terms[0]
    for d in tl.static_range(1, len(terms)):
        if HASHED:
            idx = idx ^ terms[d]
        else:
            idx = idx + terms[d]
    return idx


@triton.jit
def _level_row(idx, HASHED: tl.constexpr, size, off):
    """Table entry of level index `idx` (uint32): `idx % size + off`, int64 (off * F can pass 2^31). Hashed
    levels have power-of-two sizes, so their `%` is a mask; dense levels pay one uint32 remainder. Every
    idx gives a valid entry, so gathers need no mask."""
    if HASHED:
        idx = idx & (size - 1)
    else:
        idx = idx % size
    return idx.to(tl.int64) + off


@triton.jit
def _level_meta(meta_ptr, level, D: tl.constexpr):
    """Row `level` of an int64 (L, 4 + D) level table: [offset, size, hashed, scale bits, factor_0..D-1]
    -> (scale fp32, offset int64, size uint32, hashed bool, factors tuple of uint32). Uniform loads."""
    base = meta_ptr + level * (4 + D)
    off = tl.load(base)
    size = tl.load(base + 1).to(tl.uint32)
    hashed = tl.load(base + 2) != 0
    scale = tl.load(base + 3).to(tl.int32).to(tl.float32, bitcast=True)
    factors = ()
    for d in tl.static_range(D):
        factors = factors + (tl.load(base + 4 + d).to(tl.uint32),)
    return scale, off, size, hashed, factors


def level_rows(offsets, sizes, hashed, scales, factors) -> list[list[int]]:
    """Rows of the int64 (L, 4 + D) level table that `_level_meta` reads (scale as its float32 bits)."""
    rows = []
    for level, scale in enumerate(scales):
        bits = int(np.array([scale], dtype=np.float32).view(np.int32)[0])
        rows.append([int(offsets[level]), int(sizes[level]), int(bool(hashed[level])), bits,
                     *(int(f) for f in factors[level])])
    return rows


# Feature rows. All tensors are 1D (BLOCK,) in one layout (no layout conversions); the F features of a row
# travel as a tuple of F fp32 tensors and move through memory as one or few packed integer words (4 or 8
# bytes: F fp16 or F fp32 values of one row are contiguous), so each corner costs one or two loads.


@triton.jit
def _unpack(word, F: tl.constexpr, HALF: tl.constexpr):
    """uint32/uint64 word -> tuple of fp32: 2 or 4 fp16 values, or 2 fp32 values (low bits first)."""
    out = ()
    if HALF:
        for k in tl.static_range(F):
            bits = ((word >> (16 * k)) & 0xFFFF).to(tl.uint16)
            out = out + (bits.to(tl.float16, bitcast=True).to(tl.float32),)
    else:
        for k in tl.static_range(F):
            out = out + (((word >> (32 * k)) & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True),)
    return out


@triton.jit
def _pack(vals, START: tl.constexpr, F: tl.constexpr, HALF: tl.constexpr, WORD: tl.constexpr):
    """F values of `vals` from START -> one word of type WORD (fp16 or fp32 bit patterns, low bits first)."""
    word = tl.zeros(vals[0].shape, WORD)
    for k in tl.static_range(F):
        if HALF:
            bits = vals[START + k].to(tl.float16).to(tl.uint16, bitcast=True)
            word = word | (bits.to(WORD) << (16 * k))
        else:
            bits = vals[START + k].to(tl.uint32, bitcast=True)
            word = word | (bits.to(WORD) << (32 * k))
    return word


@triton.jit
def _load_row(ptr, row, F: tl.constexpr, mask):
    """ptr[row * F : row * F + F] (fp16 or fp32) -> F-tuple of fp32 tensors.
    mask: None (gathers) or (BLOCK,)."""
    HALF: tl.constexpr = ptr.dtype.element_ty == tl.float16
    # elements per word: fp16 rows of 2 (uint32) or 4 (uint64), fp32 rows of 2 (uint64); F = 1 loads directly.
    PER: tl.constexpr = 1 if F == 1 else (2 if F == 2 else 4) if HALF else 2
    out = ()
    if PER == 1:
        if mask is None:
            out = (tl.load(ptr + row).to(tl.float32),)
        else:
            out = (tl.load(ptr + row, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32),)
    else:
        WORD: tl.constexpr = tl.uint32 if (HALF and PER == 2) else tl.uint64
        wptr = ptr.to(tl.pointer_type(WORD), bitcast=True) + row * (F // PER)
        for k in tl.static_range(F // PER):
            if mask is None:
                word = tl.load(wptr + k)
            else:  # a streamed row (dy): do not push tables out of L2
                word = tl.load(wptr + k, mask=mask, other=0, eviction_policy="evict_first")
            out = out + _unpack(word, PER, HALF)
    return out


@triton.jit
def _store_row(ptr, row, vals, F: tl.constexpr, mask):
    """ptr[row * F + f] = vals[f], cast to ptr's dtype (fp16 or fp32), packed like `_load_row`."""
    HALF: tl.constexpr = ptr.dtype.element_ty == tl.float16
    PER: tl.constexpr = 1 if F == 1 else (2 if F == 2 else 4) if HALF else 2
    if PER == 1:
        tl.store(ptr + row, vals[0].to(ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")
    else:
        WORD: tl.constexpr = tl.uint32 if (HALF and PER == 2) else tl.uint64
        wptr = ptr.to(tl.pointer_type(WORD), bitcast=True) + row * (F // PER)
        for k in tl.static_range(F // PER):
            tl.store(wptr + k, _pack(vals, k * PER, PER, HALF, WORD), mask=mask,
                     eviction_policy="evict_first")


@triton.jit
def _axpy(acc, a, vals, F: tl.constexpr):
    """acc[f] + a * vals[f] for each feature (tuples of (BLOCK,) fp32)."""
    out = ()
    for f in tl.static_range(F):
        out = out + (acc[f] + a * vals[f],)
    return out


@triton.jit
def _dot(a, b, F: tl.constexpr):
    """sum_f a[f] * b[f]."""
    s = a[0] * b[0]
    for f in tl.static_range(1, F):
        s += a[f] * b[f]
    return s


@triton.jit
def _zeros(n: tl.constexpr, BLOCK: tl.constexpr):
    out = ()
    for k in tl.static_range(n):
        out = out + (tl.zeros([BLOCK], tl.float32),)
    return out


@triton.jit
def _program(N, L: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr, LEVEL_FASTEST: tl.constexpr):
    """This program's points (int64 (BLOCK,)), their mask, and its first level l0 (it handles levels
    l0 .. l0 + GROUP - 1 that are < L). Programs are numbered level-group-first or point-block-first."""
    NG: tl.constexpr = (L + GROUP - 1) // GROUP
    pid = tl.program_id(0)
    if LEVEL_FASTEST:
        group = pid % NG
        block = pid // NG
    else:
        # not tl.cdiv: triton's own jit helpers break the interpreter if triton was imported before it was on
        n_blocks = (N + BLOCK - 1) // BLOCK
        group = pid // n_blocks
        block = pid % n_blocks
    pts = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return pts, pts < N, group * GROUP


@triton.jit
def _load_x(x_ptr, pts, mask, D: tl.constexpr):
    """x[pts, :] of a row-major (N, D) fp32 array -> tuple of D (BLOCK,) tensors (0 where masked)."""
    xs = ()
    for d in tl.static_range(D):
        xs = xs + (tl.load(x_ptr + pts * D + d, mask=mask, other=0.0, eviction_policy="evict_first"),)
    return xs


@triton.jit
def _store_x(ptr, pts, vals, mask, D: tl.constexpr, ATOMIC: tl.constexpr):
    """ptr[pts, d] = vals[d] (or += with atomics when several programs, one per level group, add in)."""
    for d in tl.static_range(D):
        if ATOMIC:
            tl.atomic_add(ptr + pts * D + d, vals[d], mask=mask, sem="relaxed")
        else:
            tl.store(ptr + pts * D + d, vals[d], mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Kernels, named `_grid_*` for the simplex lattice too (profiles and ncu filters select on these names).
# Each program takes BLOCK points and the levels l0 .. l0 + GROUP - 1 (a runtime loop, those < L) and
# branches once per level, uniformly, on `hashed`, so HASHED is a constant inside the level body.
# Level bodies, one argument order per kernel (P: INTERP for grids, SKEW for the simplex):
#   fwd:     LEVEL(xs, table_ptr, scale, off, size, factors, HASHED, D, F, P, BLOCK) -> F-tuple
#   bwd:     LEVEL(xs, dy, dx, table_ptr, dtable_ptr, mask, scale, off, size, factors, HASHED, D, F, P, BLOCK,
#                  NEED_TABLE, NEED_X, VEC) -> dx (D-tuple, this level added)
#   bwd_bwd: LEVEL(xs, dy, gdx, gx, table_ptr, gdt_ptr, gtable_ptr, mask, scale, off, size, factors, HASHED,
#                  D, F, P, BLOCK, HAS_GDX, HAS_GDT, NEED_TABLE, NEED_DY, NEED_X, VEC) -> (gdy F-tuple, gx)


@triton.jit(do_not_specialize=["N"])
def _grid_fwd_kernel(x_ptr, table_ptr, meta_ptr, out_ptr, N, L: tl.constexpr, D: tl.constexpr,
                     F: tl.constexpr, P: tl.constexpr, LEVEL: tl.constexpr, BLOCK: tl.constexpr,
                     GROUP: tl.constexpr, LEVEL_FASTEST: tl.constexpr, VEC: tl.constexpr):
    """out[i, l*F + f] = the level body's features of x_i at level l."""
    pts, mask, l0 = _program(N, L, BLOCK, GROUP, LEVEL_FASTEST)
    xs = _load_x(x_ptr, pts, mask, D)
    for j in range(GROUP):  # a runtime loop (GROUP levels, those < L)
        level = l0 + j
        if (L % GROUP == 0) or (level < L):
            scale, off, size, hashed, factors = _level_meta(meta_ptr, level, D)
            if hashed:
                acc = LEVEL(xs, table_ptr, scale, off, size, factors, True, D, F, P, BLOCK)
            else:
                acc = LEVEL(xs, table_ptr, scale, off, size, factors, False, D, F, P, BLOCK)
            _store_row(out_ptr, pts * L + level, acc, F, mask)


@triton.jit(do_not_specialize=["N"])
def _grid_bwd_kernel(x_ptr, table_ptr, meta_ptr, dy_ptr, dtable_ptr, dx_ptr, N, L: tl.constexpr,
                     D: tl.constexpr, F: tl.constexpr, P: tl.constexpr, LEVEL: tl.constexpr,
                     BLOCK: tl.constexpr, GROUP: tl.constexpr, LEVEL_FASTEST: tl.constexpr, VEC: tl.constexpr,
                     NEED_TABLE: tl.constexpr, NEED_X: tl.constexpr):
    """dtable[row_k] += w_k(x_i) dy[i, l] (`_atomic_row`: fp32, or packed fp16 into an fp16 dtable);
    dx_i = sum_l sum_k (dw_k/dx) (dy[i, l] . table[row_k])."""
    pts, mask, l0 = _program(N, L, BLOCK, GROUP, LEVEL_FASTEST)
    xs = _load_x(x_ptr, pts, mask, D)
    dx = _zeros(D, BLOCK)
    for j in range(GROUP):
        level = l0 + j
        if (L % GROUP == 0) or (level < L):
            scale, off, size, hashed, factors = _level_meta(meta_ptr, level, D)
            dy = _load_row(dy_ptr, pts * L + level, F, mask)
            if hashed:
                dx = LEVEL(xs, dy, dx, table_ptr, dtable_ptr, mask, scale, off, size, factors, True, D, F, P,
                           BLOCK, NEED_TABLE, NEED_X, VEC)
            else:
                dx = LEVEL(xs, dy, dx, table_ptr, dtable_ptr, mask, scale, off, size, factors, False, D, F, P,
                           BLOCK, NEED_TABLE, NEED_X, VEC)
    if NEED_X:
        _store_x(dx_ptr, pts, dx, mask, D, GROUP < L)


@triton.jit(do_not_specialize=["N"])
def _grid_bwd_bwd_kernel(x_ptr, table_ptr, meta_ptr, dy_ptr, gdx_ptr, gdt_ptr, gtable_ptr, gdy_ptr, gx_ptr, N,
                         L: tl.constexpr, D: tl.constexpr, F: tl.constexpr, P: tl.constexpr,
                         LEVEL: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr,
                         LEVEL_FASTEST: tl.constexpr, VEC: tl.constexpr, HAS_GDX: tl.constexpr,
                         HAS_GDT: tl.constexpr, NEED_TABLE: tl.constexpr, NEED_DY: tl.constexpr,
                         NEED_X: tl.constexpr):
    """Backward of (dtable, dx) = bwd(x, table, dy) given cotangents gdx (N, D) and gdt (table-shaped):
    gtable, gdy (N, L * F) and gx (N, D), formulas in the module docstring and at each level body."""
    pts, mask, l0 = _program(N, L, BLOCK, GROUP, LEVEL_FASTEST)
    xs = _load_x(x_ptr, pts, mask, D)
    gdx = ()
    if HAS_GDX:
        gdx = _load_x(gdx_ptr, pts, mask, D)
    gx = _zeros(D, BLOCK)
    for j in range(GROUP):
        level = l0 + j
        if (L % GROUP == 0) or (level < L):
            scale, off, size, hashed, factors = _level_meta(meta_ptr, level, D)
            dy = _load_row(dy_ptr, pts * L + level, F, mask)
            if hashed:
                gdy, gx = LEVEL(xs, dy, gdx, gx, table_ptr, gdt_ptr, gtable_ptr, mask, scale, off, size,
                                factors, True, D, F, P, BLOCK, HAS_GDX, HAS_GDT, NEED_TABLE, NEED_DY, NEED_X,
                                VEC)
            else:
                gdy, gx = LEVEL(xs, dy, gdx, gx, table_ptr, gdt_ptr, gtable_ptr, mask, scale, off, size,
                                factors, False, D, F, P, BLOCK, HAS_GDX, HAS_GDT, NEED_TABLE, NEED_DY, NEED_X,
                                VEC)
            if NEED_DY:
                _store_row(gdy_ptr, pts * L + level, gdy, F, mask)
    if NEED_X:
        _store_x(gx_ptr, pts, gx, mask, D, GROUP < L)


KERNELS = {"fwd": _grid_fwd_kernel, "bwd": _grid_bwd_kernel, "bwd_bwd": _grid_bwd_bwd_kernel}


# ---------------------------------------------------------------------------------------------------------
# Autograd


L2_BUDGET = 16 * 2**20  # bytes of tables / gradients a launch keeps in flight (H100: 50 MB L2 in two halves)


class LevelOps:
    """Launchers of one encoding spec (the `ops` of `EncodeFn`). A subclass sets `levels`, its three level
    bodies by kernel kind (argument orders at `_grid_fwd_kernel`), and passes its shape constant as P. The
    kernels take fwd(x, table, meta, out, N), bwd(x, table, meta, dy, dtable, dx, N),
    bwd_bwd(x, table, meta, dy, gdx, gdt, gtable, gdy, gx, N), then compile-time keywords.

    Tables are flat (n_params,) fp32 or fp16; x is (N, D) fp32; dy / out (N, L * F) fp16 or fp32. Gradients
    are accumulated in fp32, except the table gradient of `backward` with gradient_dtype=torch.float16 where
    `half_gradients` allows (tiny-cuda-nn's half2 sums; `_atomics.py`). `moves`: False when out does not
    depend on x (grid Nearest), so d/dx is identically 0.
    """

    levels: ClassVar[dict] = {}  # kernel kind (fwd, bwd, bwd_bwd) -> per-level body (a triton.jit function)
    fp_fusion = True  # False: no fma contraction (where the reference's rounding must be matched op by op)
    tuning: ClassVar[dict] = {}  # per kernel kind (fwd, bwd, bwd_bwd): block, warps, group, level_fastest

    def __init__(self, n_dims, n_levels, n_features, n_params, meta_rows, consts, moves=True):
        self.D, self.L, self.F, self.n_params, self.moves = n_dims, n_levels, n_features, n_params, moves
        self.meta_rows, self.consts = meta_rows, dict(consts, L=n_levels, D=n_dims, F=n_features)
        self.max_rows = max(row[1] for row in meta_rows)  # largest level table, in rows
        self._meta: dict = {}

    def meta(self, device) -> torch.Tensor:
        """The int64 level table on `device` (made once)."""
        if device not in self._meta:
            self._meta[device] = torch.tensor(self.meta_rows, dtype=torch.int64, device=device)
        return self._meta[device]

    def _group(self, kind, stream_bytes, table_bytes) -> int:
        """Levels per program. "auto": enough levels that a program's slice of each (N, L * F) row (out or
        dy, `stream_bytes` per value) fills a 32-byte sector, so rows are written / read once, not once per
        level (tcnn's one-level grid writes level-major planes instead and transposes afterwards); halved
        while that many levels of tables (or fp32 / fp16 gradients), `table_bytes` per value, pass L2_BUDGET,
        so the levels in flight stay in L2 (tcnn's point: one level's table at a time)."""
        group = self.tuning[kind]["group"]
        if group == "auto":
            group = max(1, 32 // (self.F * stream_bytes))
            while group > 1 and group * self.max_rows * self.F * table_bytes > L2_BUDGET:
                group //= 2
        return max(1, min(int(group), self.L))

    def _launch(self, kind, x, table, *args, group, **flags):
        tune = self.tuning[kind]
        n, block = x.shape[0], tune["block"]
        grid = (triton.cdiv(n, block) * triton.cdiv(self.L, group),)
        KERNELS[kind][grid](x, table, self.meta(x.device), *args, n, LEVEL=self.levels[kind], BLOCK=block,
                            GROUP=group, LEVEL_FASTEST=tune["level_fastest"], VEC=vector_atomics(x.device),
                            num_warps=tune["warps"], enable_fp_fusion=self.fp_fusion, **self.consts, **flags)

    def _x_buffer(self, group, n, device) -> torch.Tensor:
        zero = group < self.L or not self.moves  # level groups add atomically
        return (torch.zeros if zero else torch.empty)((n, self.D), device=device, dtype=torch.float32)

    def forward(self, x, table, out_dtype):
        out = torch.empty((x.shape[0], self.L * self.F), device=x.device, dtype=out_dtype)
        if x.shape[0]:
            group = self._group("fwd", out.element_size(), table.element_size())
            self._launch("fwd", x, table, out, group=group)
        return out

    def half_gradients(self, device) -> bool:
        """Whether `backward` can sum table gradients in fp16 on `device` (F >= 2 and sm_90)."""
        return half_reductions(device, self.F)

    def backward(self, x, table, dy, need_table, need_x, gradient_dtype=None):
        """-> (d table (n_params,) or None, dx (N, D) fp32 or None). d table is fp16 when gradient_dtype is
        torch.float16 and `half_gradients(device)` (packed fp16 sums), else fp32."""
        half = need_table and gradient_dtype == torch.float16 and self.half_gradients(x.device)
        grad_dtype = torch.float16 if half else torch.float32
        group = self._group("bwd", dy.element_size(),
                            (2 if half else 4) * need_table + table.element_size() * need_x)
        dtable = torch.zeros(self.n_params, device=x.device, dtype=grad_dtype) if need_table else None
        dx = self._x_buffer(group, x.shape[0], x.device) if need_x else None
        need_x = need_x and self.moves
        if x.shape[0] and (need_table or need_x):
            self._launch("bwd", x, table, dy, dtable if need_table else table,
                         dx if need_x else x, group=group, NEED_TABLE=need_table, NEED_X=need_x)
        return dtable, dx

    def backward_backward(self, x, table, dy, g_dx, g_dtable, need_table, need_dy, need_x):
        """Cotangents g_dx (N, D) / g_dtable (n_params,) (either may be None) of backward's outputs
        -> (g table fp32 or None, g dy (N, L * F) fp32 or None, g x (N, D) fp32 or None)."""
        has_gdx = g_dx is not None and self.moves
        has_gdt = g_dtable is not None
        need_table = need_table and has_gdx
        need_dy = need_dy and (has_gdx or has_gdt)
        need_x = need_x and self.moves and (has_gdx or has_gdt)
        group = self._group("bwd_bwd", dy.element_size(), 4 + table.element_size() + 4 * has_gdt)
        gtable = torch.zeros(self.n_params, device=x.device, dtype=torch.float32) if need_table else None
        gdy = torch.empty(dy.shape, device=x.device, dtype=torch.float32) if need_dy else None
        gx = self._x_buffer(group, x.shape[0], x.device) if need_x else None
        if x.shape[0] and (need_table or need_dy or need_x):
            self._launch("bwd_bwd", x, table, dy, g_dx if has_gdx else x,
                         g_dtable if has_gdt else table, gtable if need_table else table,
                         gdy if need_dy else dy, gx if need_x else x, group=group, HAS_GDX=has_gdx,
                         HAS_GDT=has_gdt, NEED_TABLE=need_table, NEED_DY=need_dy, NEED_X=need_x)
        return gtable, gdy, gx


class EncodeFn(torch.autograd.Function):
    """out = encode(x, params). `table` is params itself or its fp16 copy (made once per call, tcnn-style);
    gradients flow to params through that cast as through the identity."""

    @staticmethod
    def forward(ctx, x, params, ops, table_dtype, out_dtype, gradient_dtype):
        table = params.detach() if table_dtype == params.dtype else params.detach().to(table_dtype)
        ctx.save_for_backward(x, params)
        ctx.table, ctx.ops, ctx.gradient_dtype = table, ops, gradient_dtype
        return ops.forward(x, table, out_dtype)

    @staticmethod
    def backward(ctx, dy):
        x, params = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dparams, dx = EncodeBackwardFn.apply(x, params, dy, ctx.table, ctx.ops, need_params, need_x,
                                             ctx.gradient_dtype)
        return dx, dparams, None, None, None, None


class EncodeBackwardFn(torch.autograd.Function):
    """(d params, d x) = backward(x, params, dy); differentiable once more (eikonal losses: d(dx)/d
    params; the double backward always sums in fp32). d params is cast to params' dtype from the kernels'
    fp32 or fp16 sums."""

    @staticmethod
    def forward(ctx, x, params, dy, table, ops, need_params, need_x, gradient_dtype):
        ctx.set_materialize_grads(False)
        dy = dy.contiguous()
        dtable, dx = ops.backward(x, table, dy, need_params, need_x, gradient_dtype)
        ctx.save_for_backward(x, params, dy)
        ctx.table, ctx.ops = table, ops
        dparams = None if dtable is None else dtable.to(params.dtype)
        return dparams, dx

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_dparams, g_dx):
        x, params, dy = ctx.saved_tensors
        need_x, need_params, need_dy = ctx.needs_input_grad[:3]
        if g_dx is None and g_dparams is None:
            return None, None, None, None, None, None, None, None
        g_dx = None if g_dx is None else g_dx.float().contiguous()
        g_dparams = None if g_dparams is None else g_dparams.contiguous()
        gtable, gdy, gx = ctx.ops.backward_backward(
            x, ctx.table, dy, g_dx, g_dparams, need_params and g_dx is not None, need_dy, need_x
        )
        gparams = None if gtable is None else gtable.to(params.dtype)
        gdy = None if gdy is None else gdy.to(dy.dtype)
        return gx, gparams, gdy, None, None, None, None, None


def encode(x: torch.Tensor, params: torch.Tensor, ops: LevelOps, n_dims: int, n_params: int,
           table_dtype: torch.dtype | None, out_dtype: torch.dtype | None, name: str,
           gradient_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Checks at the boundary, then `EncodeFn`. x is cast to fp32 (the kernels' position precision).
    gradient_dtype: None / torch.float32 (fp32 sums) or torch.float16 (`LevelOps.backward`)."""
    if x.dim() != 2 or x.shape[1] != n_dims or not x.is_floating_point():
        raise ValueError(f"{name}: positions must be (N, {n_dims}) float, got {tuple(x.shape)} {x.dtype}")
    if params.dim() != 1 or params.numel() != n_params:
        raise ValueError(f"{name}: params must be ({n_params},), got {tuple(params.shape)}")
    if x.device != params.device:
        raise ValueError(f"{name}: positions on {x.device} but params on {params.device}")
    if x.shape[0] >= 2**31:
        raise ValueError(f"{name}: at most 2^31 - 1 points per call, got {x.shape[0]}")
    if table_dtype is None:
        table_dtype = params.dtype if params.dtype in (torch.float16, torch.float32) else torch.float32
    if table_dtype not in (torch.float16, torch.float32):
        raise ValueError(f"{name}: table_dtype must be float16 or float32, got {table_dtype}")
    if gradient_dtype not in (None, torch.float16, torch.float32):
        raise ValueError(f"{name}: gradient_dtype must be None, float32 or float16, got {gradient_dtype}")
    out_dtype = torch.float32 if out_dtype is None else out_dtype
    return EncodeFn.apply(x.float().contiguous(), params, ops, table_dtype, out_dtype, gradient_dtype)
