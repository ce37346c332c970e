"""Fully fused tiny MLP in Triton: forward and backward, weights on chip, activations never in device memory.

Twin of `ngraphics.networks.mlp.mlp_forward_torch` (same signature, same tcnn layout: no biases, matrices
row-major (out, in), input already padded to a multiple of 16, output rows padded to a multiple of 16).

Each program is persistent: it loads every weight matrix once, then walks row tiles `pid, pid + P, ...` of
BLOCK_M rows. Per tile the activations stay in registers through all layers (`tl.dot`, fp32 accumulation,
rounded to the network dtype between layers like tcnn and torch).

Backward recomputes the forward pass per tile instead of storing hidden activations: it reads x and dy and
writes dx, about a third of the bytes of tcnn's store-and-reload scheme for the cost of one extra forward
(tensor cores are cheap here, memory is not). Per tile, with h_0 = x, z_k = h_{k-1} W_k^T, h_k = act(z_k):

    dz_k     = dh_k * act'(z_k)                  (ReLU / LeakyReLU read the sign off h_k, like torch)
    dW_k    += dz_k^T h_{k-1}                    (fp32, accumulated per program)
    dh_{k-1} = dz_k W_k                          (dz_k rounded to the network dtype first, like tcnn)

Each program writes its weight-gradient sums once into row `pid` of a (P, n_params) fp32 buffer that one
`sum(0)` reduces (deterministic, no atomics). Configs too large for registers (width 128 with several
layers) keep their weights in L1/L2 (reloaded per tile) and accumulate straight into their buffer row.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import torch
import triton
import triton.language as tl

from ngraphics.networks.mlp import ACTIVATIONS, MLPSpec, mlp_forward_torch

ACT_CODES = {name: i for i, name in enumerate(("None", "ReLU", "LeakyReLU", "Exponential", "Sine", "Sigmoid",
                                                "Squareplus", "Softplus", "Tanh"))}
assert set(ACT_CODES) == set(ACTIVATIONS)
MAX_WIDTH = 128
MAX_HIDDEN_LAYERS = 4
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TUNING: dict = {}  # (key -> value) overrides of `tile_config` for benchmarks: block_m, num_warps, per_sm...

# ---------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _act(z, ACT: tl.constexpr):
    """tcnn activation of fp32 z (codes in ACT_CODES; K = 10 for Squareplus / Softplus)."""
    y = z
    if ACT == 1:
        y = tl.maximum(z, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, 0.01 * z)
    elif ACT == 3:
        y = tl.exp(z)
    elif ACT == 4:
        y = tl.sin(z)
    elif ACT == 5:
        y = tl.sigmoid(z)
    elif ACT == 6:
        kz = 10.0 * z
        y = 0.5 * (kz + tl.sqrt(kz * kz + 4.0)) / 10.0
    elif ACT == 7:
        kz = 10.0 * z  # torch's softplus(beta=10): linear above kz = 20
        y = tl.where(kz > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(kz, 20.0))) / 10.0)
    elif ACT == 8:
        y = 2.0 * tl.sigmoid(2.0 * z) - 1.0
    return y


@triton.jit
def _act_bwd(dh, s, ACT: tl.constexpr):
    """dh * act'(z). s is z (fp32), or for None / ReLU / LeakyReLU the output h (only its sign is read)."""
    d = dh
    if ACT == 1:
        d = tl.where(s > 0, dh, 0.0)
    elif ACT == 2:
        d = tl.where(s > 0, dh, 0.01 * dh)
    elif ACT == 3:
        d = dh * tl.exp(s)
    elif ACT == 4:
        d = dh * tl.cos(s)
    elif ACT == 5:
        sg = tl.sigmoid(s)
        d = dh * sg * (1.0 - sg)
    elif ACT == 6:
        kz = 10.0 * s
        d = dh * 0.5 * (1.0 + kz / tl.sqrt(kz * kz + 4.0))
    elif ACT == 7:
        d = tl.where(10.0 * s > 20.0, dh, dh * tl.sigmoid(10.0 * s))
    elif ACT == 8:
        t = 2.0 * tl.sigmoid(2.0 * s) - 1.0
        d = dh * (1.0 - t * t)
    return d


@triton.jit
def _mat_ptrs(ptr, ROWS: tl.constexpr, COLS: tl.constexpr, R_P: tl.constexpr, C_P: tl.constexpr):
    """Pointers and mask of a row-major (ROWS, COLS) matrix as an (R_P, C_P) power-of-two tile."""
    r = tl.arange(0, R_P)[:, None]
    c = tl.arange(0, C_P)[None, :]
    return ptr + r * COLS + c, (r < ROWS) & (c < COLS)


@triton.jit
def _load_w(ptr, ROWS: tl.constexpr, COLS: tl.constexpr, R_P: tl.constexpr, C_P: tl.constexpr):
    p, m = _mat_ptrs(ptr, ROWS, COLS, R_P, C_P)
    return tl.load(p, mask=m, other=0.0)


@triton.jit
def _mat(K: tl.constexpr, ptrs, L: tl.constexpr, IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr,
         W_P: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr):
    """Weight matrix K of (first, hidden 1, hidden 2, hidden 3, last), loaded as a zero-padded tile."""
    if K == 4:
        if L == 0:
            t = _load_w(ptrs[4], OUT, IN, OUT_P, IN_P)
        else:
            t = _load_w(ptrs[4], OUT, W, OUT_P, W_P)
    elif K == 0:
        t = _load_w(ptrs[0], W, IN, W_P, IN_P)
    else:
        t = _load_w(ptrs[K], W, W, W_P, W_P)
    return t


@triton.jit
def _resident(ptrs, L: tl.constexpr, IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, W_P: tl.constexpr,
              OUT: tl.constexpr, OUT_P: tl.constexpr, RESIDENT: tl.constexpr):
    """RESIDENT: every present matrix, loaded once per program (absent ones repeat the last). Else the
    pointers themselves: each use loads its matrix (from L1/L2), so no tile stays live across the tile."""
    res = ptrs
    if RESIDENT:
        t4 = _mat(4, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P)
        t0 = _mat(0, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P) if L >= 1 else t4
        t1 = _mat(1, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P) if L >= 2 else t4
        t2 = _mat(2, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P) if L >= 3 else t4
        t3 = _mat(3, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P) if L >= 4 else t4
        res = (t0, t1, t2, t3, t4)
    return res


@triton.jit
def _get(K: tl.constexpr, res, ptrs, L: tl.constexpr, IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr,
         W_P: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr, RESIDENT: tl.constexpr):
    """Matrix K: the resident tile, or a fresh load."""
    if RESIDENT:
        t = res[K]
    else:
        t = _mat(K, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P)
    return t


@triton.jit
def _layer(h, w, ACT: tl.constexpr, PREC: tl.constexpr):
    """z = h W^T (fp32 accumulation), out = act(z) rounded to h's dtype, s = what act' needs (z or out)."""
    z = tl.dot(h, tl.trans(w), input_precision=PREC)
    out = _act(z, ACT).to(h.dtype)
    s = z
    if ACT <= 2:
        s = out  # sign carrier: lets the compiler drop the fp32 pre-activation
    return out, s


@triton.jit
def _forward_tile(x, res, ptrs, L: tl.constexpr, IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr,
                  W_P: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr, RESIDENT: tl.constexpr,
                  ACT: tl.constexpr, PREC: tl.constexpr):
    """All layers of one tile. Returns z_out (fp32), the last hidden h and (h_k, s_k) per hidden layer;
    absent layers repeat x."""
    h1, s1, h2, s2, h3, s3, h4, s4, last = x, x, x, x, x, x, x, x, x
    if L >= 1:
        h1, s1 = _layer(x, _get(0, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT), ACT, PREC)
        last = h1
    if L >= 2:
        h2, s2 = _layer(h1, _get(1, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT), ACT, PREC)
        last = h2
    if L >= 3:
        h3, s3 = _layer(h2, _get(2, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT), ACT, PREC)
        last = h3
    if L >= 4:
        h4, s4 = _layer(h3, _get(3, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT), ACT, PREC)
        last = h4
    t_last = _get(4, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT)
    z_out = tl.dot(last, tl.trans(t_last), input_precision=PREC)
    return z_out, last, h1, s1, h2, s2, h3, s3, h4, s4


@triton.jit
def _load_rows(ptr, stride, rows, N, COLS: tl.constexpr, C_P: tl.constexpr):
    """(BLOCK_M, C_P) tile of a (N, >= COLS) row-major array, zeros outside."""
    c = tl.arange(0, C_P)[None, :]
    return tl.load(ptr + rows[:, None] * stride + c, mask=(rows[:, None] < N) & (c < COLS), other=0.0)


@triton.jit(do_not_specialize=["N"])  # one compile for every batch size
def _mlp_fwd_kernel(x_ptr, stride_x, w0, w1, w2, w3, wl, y_ptr, stride_y, N,
                    IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, W_P: tl.constexpr,
                    OUT: tl.constexpr, OUT_P: tl.constexpr, N_OUT: tl.constexpr, L: tl.constexpr,
                    ACT: tl.constexpr, OUT_ACT: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, RESIDENT: tl.constexpr, PREFETCH: tl.constexpr):
    """y[:, :N_OUT] = out_act(... act(x W_first^T) ... W_last^T) for tiles pid, pid + P, ..."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    n_tiles = tl.cdiv(N, BLOCK_M)
    dt = w0.dtype.element_ty
    ptrs = (w0, w1, w2, w3, wl)
    res = _resident(ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT)
    tile = pid
    rows = tile.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    x_in = _load_rows(x_ptr, stride_x, rows, N, IN, IN_P)
    while tile < n_tiles:  # a while loop: the interpreter cannot take run-time `range` bounds (numpy 2)
        rows_next = rows + n_prog * BLOCK_M
        if PREFETCH:  # the next tile's loads fly while this tile computes
            x_next = _load_rows(x_ptr, stride_x, rows_next, N, IN, IN_P)
        z_out = _forward_tile(x_in.to(dt), res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC)[0]
        y = _act(z_out, OUT_ACT)
        c = tl.arange(0, OUT_P)[None, :]
        tl.store(y_ptr + rows[:, None] * stride_y + c, y.to(y_ptr.dtype.element_ty),
                 mask=(rows[:, None] < N) & (c < N_OUT))
        if not PREFETCH:
            x_next = _load_rows(x_ptr, stride_x, rows_next, N, IN, IN_P)
        x_in = x_next
        rows = rows_next
        tile += n_prog


@triton.jit
def _acc(acc, upd, ptr, ROWS: tl.constexpr, COLS: tl.constexpr, R_P: tl.constexpr, C_P: tl.constexpr,
         ACC_REGS: tl.constexpr):
    """acc += upd in registers, or (ACC_REGS False) straight into this program's fp32 buffer row."""
    if ACC_REGS:
        acc += upd
    else:
        p, m = _mat_ptrs(ptr, ROWS, COLS, R_P, C_P)
        tl.store(p, tl.load(p, mask=m, other=0.0) + upd, mask=m)
    return acc


@triton.jit
def _store_acc(acc, ptr, ROWS: tl.constexpr, COLS: tl.constexpr, R_P: tl.constexpr, C_P: tl.constexpr):
    p, m = _mat_ptrs(ptr, ROWS, COLS, R_P, C_P)
    tl.store(p, acc, mask=m)


@triton.jit
def _back(dh, s, h_prev, acc, part_k, K: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
          R_P: tl.constexpr, C_P: tl.constexpr, res, ptrs, L: tl.constexpr, IN: tl.constexpr,
          IN_P: tl.constexpr, W: tl.constexpr, W_P: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr,
          RESIDENT: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, ACC_REGS: tl.constexpr, NEED_DH: tl.constexpr):
    """One layer back: dz = dh * act'(s); dW_K += dz^T h_prev; returns (dz W_K or dh when not needed, acc)."""
    dz = _act_bwd(dh, s.to(tl.float32), ACT).to(h_prev.dtype)
    upd = tl.dot(tl.trans(dz), h_prev, input_precision=PREC)
    acc = _acc(acc, upd, part_k, ROWS, COLS, R_P, C_P, ACC_REGS)
    if NEED_DH:
        dh = tl.dot(dz, _get(K, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT), input_precision=PREC)
    return dh, acc


@triton.jit(do_not_specialize=["N"])
def _mlp_bwd_kernel(x_ptr, stride_x, w0, w1, w2, w3, wl, dy_ptr, stride_dy, dx_ptr, stride_dx, part_ptr, N,
                    N_PARAMS: tl.constexpr, OFF_H1: tl.constexpr, OFF_H2: tl.constexpr, OFF_H3: tl.constexpr,
                    OFF_LAST: tl.constexpr,
                    IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, W_P: tl.constexpr,
                    OUT: tl.constexpr, OUT_P: tl.constexpr, N_OUT: tl.constexpr, L: tl.constexpr,
                    ACT: tl.constexpr, OUT_ACT: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, RESIDENT: tl.constexpr, ACC_REGS: tl.constexpr,
                    NEED_DX: tl.constexpr, PREFETCH: tl.constexpr):
    """dx (N, IN) and per-program weight-gradient sums part[pid, :] (fp32, storage order of the params)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    n_tiles = tl.cdiv(N, BLOCK_M)
    dt = w0.dtype.element_ty
    part = part_ptr + pid.to(tl.int64) * N_PARAMS
    ptrs = (w0, w1, w2, w3, wl)
    res = _resident(ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT)
    # weight-gradient sums (placeholders where a layer is absent or ACC_REGS is off)
    a0, a1, a2, a3, a4 = 0.0, 0.0, 0.0, 0.0, 0.0
    if ACC_REGS:  # (sums of absent layers are never updated or stored: dead code)
        a0 = tl.zeros((W_P, IN_P), tl.float32)
        a1 = tl.zeros((W_P, W_P), tl.float32)
        a2 = tl.zeros((W_P, W_P), tl.float32)
        a3 = tl.zeros((W_P, W_P), tl.float32)
        a4 = tl.zeros((OUT_P, IN_P if L == 0 else W_P), tl.float32)
    tile = pid
    rows = tile.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    x_in = _load_rows(x_ptr, stride_x, rows, N, IN, IN_P)
    dy_in = _load_rows(dy_ptr, stride_dy, rows, N, N_OUT, OUT_P)  # rows >= N: dy = 0
    while tile < n_tiles:  # a while loop: the interpreter cannot take run-time `range` bounds (numpy 2)
        rows_next = rows + n_prog * BLOCK_M
        if PREFETCH:  # the next tile's loads fly while this tile computes
            x_next = _load_rows(x_ptr, stride_x, rows_next, N, IN, IN_P)
            dy_next = _load_rows(dy_ptr, stride_dy, rows_next, N, N_OUT, OUT_P)
        x = x_in.to(dt)
        z_out, last, h1, s1, h2, s2, h3, s3, _h4, s4 = _forward_tile(
            x, res, ptrs, L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC)
        dh = dy_in.to(tl.float32)
        s_out = z_out
        if OUT_ACT <= 2:
            s_out = _act(z_out, OUT_ACT)
        if L == 0:
            dh, a4 = _back(dh, s_out, x, a4, part + OFF_LAST, 4, OUT, IN, OUT_P, IN_P, res, ptrs,
                           L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, OUT_ACT, PREC, ACC_REGS, NEED_DX)
        else:
            dh, a4 = _back(dh, s_out, last, a4, part + OFF_LAST, 4, OUT, W, OUT_P, W_P, res, ptrs,
                           L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, OUT_ACT, PREC, ACC_REGS, True)
            if L >= 4:
                dh, a3 = _back(dh, s4, h3, a3, part + OFF_H3, 3, W, W, W_P, W_P, res, ptrs,
                               L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC, ACC_REGS, True)
            if L >= 3:
                dh, a2 = _back(dh, s3, h2, a2, part + OFF_H2, 2, W, W, W_P, W_P, res, ptrs,
                               L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC, ACC_REGS, True)
            if L >= 2:
                dh, a1 = _back(dh, s2, h1, a1, part + OFF_H1, 1, W, W, W_P, W_P, res, ptrs,
                               L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC, ACC_REGS, True)
            dh, a0 = _back(dh, s1, x, a0, part, 0, W, IN, W_P, IN_P, res, ptrs,
                           L, IN, IN_P, W, W_P, OUT, OUT_P, RESIDENT, ACT, PREC, ACC_REGS, NEED_DX)
        if NEED_DX:  # dh is now dL/dx: (BLOCK_M, IN_P)
            c = tl.arange(0, IN_P)[None, :]
            tl.store(dx_ptr + rows[:, None] * stride_dx + c, dh.to(dx_ptr.dtype.element_ty),
                     mask=(rows[:, None] < N) & (c < IN))
        if not PREFETCH:
            x_next = _load_rows(x_ptr, stride_x, rows_next, N, IN, IN_P)
            dy_next = _load_rows(dy_ptr, stride_dy, rows_next, N, N_OUT, OUT_P)
        x_in = x_next
        dy_in = dy_next
        rows = rows_next
        tile += n_prog
    if ACC_REGS:  # one write per program of its sums
        if L == 0:
            _store_acc(a4, part + OFF_LAST, OUT, IN, OUT_P, IN_P)
        else:
            _store_acc(a0, part, W, IN, W_P, IN_P)
            _store_acc(a4, part + OFF_LAST, OUT, W, OUT_P, W_P)
        if L >= 2:
            _store_acc(a1, part + OFF_H1, W, W, W_P, W_P)
        if L >= 3:
            _store_acc(a2, part + OFF_H2, W, W, W_P, W_P)
        if L >= 4:
            _store_acc(a3, part + OFF_H3, W, W, W_P, W_P)


# ---------------------------------------------------------------------------------------------------------
# Launcher


def _p2(n: int) -> int:
    return triton.next_power_of_2(n)


def unsupported_reason(x: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec) -> str | None:
    """Why the kernel cannot run this call (None when it can). `ngraphics.ops` asks it (op `mlp_forward`) with
    `MLP.forward`'s padded input, weights and spec: auto then takes the torch path, a forced triton backend is
    a ConfigError; `mlp_forward_triton` called directly warns once and takes `mlp_forward_torch`."""
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (the kernel runs float16 and bfloat16, float32 only in the interpreter)"
    if x.dtype == torch.float32 and x.device.type == "cuda":
        return "float32 on CUDA (exact fp32 products have no tensor-core path; cuBLAS is faster)"
    if spec.n_hidden_layers > MAX_HIDDEN_LAYERS:
        return f"{spec.n_hidden_layers} hidden layers (the kernel runs 0 to {MAX_HIDDEN_LAYERS})"
    hidden = spec.n_neurons if spec.n_hidden_layers else 0
    widest = max(spec.padded_input_dims, spec.padded_output_dims, hidden)
    if widest > MAX_WIDTH:
        return f"a layer {widest} wide (the kernel keeps layers up to {MAX_WIDTH} wide on chip)"
    if spec.n_hidden_layers and spec.n_neurons % 16:
        return f"n_neurons {spec.n_neurons} is not a multiple of 16 (tensor-core tiles)"
    if any(w.dtype != x.dtype or w.device != x.device for w in weights):
        return "weights differ from the input in dtype or device"
    return None


@functools.cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"mlp_forward_triton: {reason}; using mlp_forward_torch", stacklevel=3)


def _n_programs(device: torch.device, n_tiles: int, per_sm: int) -> int:
    if device.type != "cuda":
        return max(1, min(n_tiles, 2))  # interpreter: few programs, still several tiles each
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, sms * per_sm))


def tile_config(spec: MLPSpec, dtype: torch.dtype, backward: bool, need_dx: bool = True) -> dict:
    """Launch parameters for one spec (never N): block_m rows per tile, num_warps, per_sm programs per SM,
    resident (weights loaded once per program), prefetch (the next tile's rows load while this one computes)
    and, backward, acc_regs (weight-gradient sums in registers; else in the program's row of the fp32
    buffer). Small networks (the benchmark's 32 -> 64 x 2 -> 16) use the fastest of an H100 sweep; the rest
    the largest tiles that compile for sm_90 without register spills (docs/benchmarks.md, "Fused MLP")."""
    w_p = _p2(spec.n_neurons) if spec.n_hidden_layers else 0
    in_p = _p2(spec.padded_input_dims)
    columns = spec.n_hidden_layers * w_p  # hidden activations a backward tile keeps live, per row
    small = in_p <= 32 and w_p <= 64 and columns <= 128
    if not backward:
        bm, nw, per_sm = (64, 4, 4) if small else (128, 8, 2)
        row = (bm, nw, per_sm, True, False, bm * in_p <= 128 * 64)  # prefetch: a second x tile in registers
    elif small:  # block_m, num_warps, per_sm, resident, acc_regs, prefetch
        row = (64, 4, 2, True, True, True)
    elif in_p > 32:  # wide inputs: the x tile and the first matrix's sums crowd the registers
        row = (32, 4, 2, False, False, False)
    elif columns <= 128:
        row = (64, 8, 1, True, True, False)
    elif columns <= 192:
        row = (64, 8, 1, True, False, False)
    else:
        row = (64, 8, 1, False, False, False)
    cfg = {**dict(zip(("block_m", "num_warps", "per_sm", "resident", "acc_regs", "prefetch"), row)), "num_stages": 1}
    key = "fwd" if not backward else ("bwd" if need_dx else "bwd_nodx")
    cfg.update(TUNING.get(key, TUNING.get("bwd", {}) if backward else {}))
    return cfg


def _consts(spec: MLPSpec, dtype: torch.dtype) -> dict:
    return {
        "IN": spec.padded_input_dims, "IN_P": _p2(spec.padded_input_dims),
        "W": spec.n_neurons, "W_P": _p2(spec.n_neurons),
        "OUT": spec.padded_output_dims, "OUT_P": _p2(spec.padded_output_dims), "N_OUT": spec.n_output_dims,
        "L": spec.n_hidden_layers, "ACT": ACT_CODES[spec.activation], "OUT_ACT": ACT_CODES[spec.output_activation],
        "PREC": "ieee" if dtype == torch.float32 else "tf32",
    }


def _weight_args(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """(first, hidden 1..3, last) pointers; absent ones repeat the last matrix (never read)."""
    ws = [w.contiguous() for w in weights]
    hidden = ws[1:-1] + [ws[-1]] * (4 - len(ws[1:-1]))
    return [ws[0]] + hidden[:3] + [ws[-1]]


def mlp_forward_kernel(x: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec) -> torch.Tensor:
    """Forward launch only (no autograd). x: (N, padded_input_dims) -> (N, n_output_dims), x's dtype."""
    n = x.shape[0]
    y = torch.empty((n, spec.n_output_dims), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    cfg = tile_config(spec, x.dtype, backward=False)
    n_tiles = triton.cdiv(n, cfg["block_m"])
    n_prog = _n_programs(x.device, n_tiles, cfg["per_sm"])
    _mlp_fwd_kernel[(n_prog,)](
        x, x.stride(0), *_weight_args(weights), y, y.stride(0), n, **_consts(spec, x.dtype),
        BLOCK_M=cfg["block_m"], RESIDENT=cfg["resident"], PREFETCH=cfg["prefetch"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return y


def mlp_backward_kernel(x: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec, dy: torch.Tensor,
                        need_dx: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Backward launch: (dx (N, padded_input_dims) in x's dtype or None, [dW_k fp32 (out, in)])."""
    n = x.shape[0]
    shapes = spec.layer_shapes()
    offsets = [0]
    for r, c in shapes:
        offsets.append(offsets[-1] + r * c)
    cfg = tile_config(spec, x.dtype, backward=True, need_dx=need_dx)
    n_tiles = triton.cdiv(max(n, 1), cfg["block_m"])
    n_prog = _n_programs(x.device, n_tiles, cfg["per_sm"])
    alloc = torch.empty if cfg["acc_regs"] else torch.zeros
    part = alloc((n_prog, spec.n_params), dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x) if need_dx else x  # x as a never-written placeholder
    h_offs = offsets[1:-2] + [offsets[-2]] * 3  # hidden matrices 1..3 (absent: unused)
    _mlp_bwd_kernel[(n_prog,)](
        x, x.stride(0), *_weight_args(weights), dy, dy.stride(0), dx, dx.stride(0), part, n,
        N_PARAMS=spec.n_params, OFF_H1=h_offs[0], OFF_H2=h_offs[1], OFF_H3=h_offs[2], OFF_LAST=offsets[-2],
        **_consts(spec, x.dtype), BLOCK_M=cfg["block_m"], RESIDENT=cfg["resident"],
        ACC_REGS=cfg["acc_regs"], NEED_DX=need_dx, PREFETCH=cfg["prefetch"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    grad = part.sum(0)
    dws = [grad[a:b].view(r, c) for (a, b), (r, c) in zip(itertools.pairwise(offsets), shapes)]
    return (dx if need_dx else None), dws


class _MLPFunction(torch.autograd.Function):
    """y = mlp(x, W_0..W_L). Saves only x and the weights: backward recomputes the activations."""

    @staticmethod
    def forward(ctx, x, spec, *weights):
        ctx.spec = spec
        ctx.save_for_backward(x, *weights)
        return mlp_forward_kernel(x, list(weights), spec)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, *weights = ctx.saved_tensors
        need_w = any(ctx.needs_input_grad[2:])
        if not (ctx.needs_input_grad[0] or need_w):
            return (None,) * (2 + len(weights))
        dx, dws = mlp_backward_kernel(x, weights, ctx.spec, dy.contiguous(), ctx.needs_input_grad[0])
        needs = ctx.needs_input_grad[2:]
        dws = [dw.to(w.dtype) if need else None for dw, w, need in zip(dws, weights, needs)]
        return (dx, None, *dws)


def mlp_forward_triton(x: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec) -> torch.Tensor:
    """Fused MLP forward (differentiable: fused backward to x and every weight). Twin of `mlp_forward_torch`.

    Args:
        x: inputs, already padded to the first matrix's width. (N, spec.padded_input_dims) float16 or
            bfloat16 on CUDA; also float32 on CPU under TRITON_INTERPRET=1.
        weights: the spec.n_hidden_layers + 1 row-major (out, in) matrices of `spec.layer_shapes()`, in
            x's dtype.
        spec: the network (widths up to 128, 0 to 4 hidden layers, any tcnn activation).
    Returns: (N, spec.n_output_dims) in x's dtype. Matmuls accumulate in fp32; activations are evaluated in
    fp32 and rounded to x's dtype between layers. float32 uses exact (non-tf32) products.
    Calls the kernel cannot run (see `unsupported_reason`) warn once and take `mlp_forward_torch`.
    Example: `mlp_forward_triton(x.half(), [w.half() for w in mlp.weights()], mlp.spec)`.
    """
    assert x.dim() == 2 and x.shape[1] == spec.padded_input_dims, (tuple(x.shape), spec.padded_input_dims)
    assert len(weights) == spec.n_hidden_layers + 1, (len(weights), spec.n_hidden_layers)
    reason = unsupported_reason(x, weights, spec)
    if reason is not None:
        _warn_fallback(reason)
        return mlp_forward_torch(x, weights, spec)
    if x.stride(1) != 1:
        x = x.contiguous()
    return _MLPFunction.apply(x, spec, *weights)
