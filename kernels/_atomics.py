"""Gradient reductions of the grid and simplex kernels: `dtable[row * F + f] += scale * vals[f]`, fired and
forgotten (PTX `red`, relaxed, GPU scope), from every point to every vertex it interpolates.

Three ways, picked at compile time from the gradient buffer's dtype and VEC (sm_90+, not the interpreter):
- fp32 buffer, no VEC: one `tl.atomic_add` per feature (what the interpreter and pre-Hopper GPUs run).
- fp32 buffer, VEC: one `red.global.add.v2.f32` / `.v4.f32` per 2 or 4 features.
- fp16 buffer (VEC and F >= 2 only; the launcher falls back to fp32 otherwise): tiny-cuda-nn's half2
  accumulation. Each feature pair is rounded to fp16 and packed into one 32-bit word, and one instruction
  adds the whole row: `red.global.add.noftz.f16x2` (F = 2, 4 bytes), `.v2.f16x2` (F = 4, 8 bytes) or
  `.v4.f16x2` (F = 8, 16 bytes). The vector forms need sm_90 and an address aligned to their size; a row of
  F fp16 values starts at a multiple of 2F bytes of a buffer that torch aligns to 256 bytes, so they are.
  Every reduction rounds the running sum to fp16 (round to nearest even), so an entry that receives n
  contributions carries a relative error of order 2^-11 sqrt(n); sums past 65504 become inf.

`red` returns nothing; the asm returns a dummy 0 because `inline_asm_elementwise` needs a result.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def vector_atomics(device: torch.device) -> bool:
    """Vector reductions (`red.global.add.v2/v4.f32`, `.v2/v4.f16x2`) exist from sm_90; the interpreter has no
    PTX."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def half_reductions(device: torch.device, n_features: int) -> bool:
    """Whether rows of `n_features` gradients can be accumulated in fp16 on `device` (packed f16x2
    reductions: F >= 2 and sm_90). Otherwise gradients accumulate in fp32, as tiny-cuda-nn does for F = 1."""
    return n_features >= 2 and vector_atomics(device)


@triton.jit
def _half2(lo, hi):
    """Two (BLOCK,) fp32 tensors -> one uint32 word (an f16x2 register): fp16(lo) in bits 0-15, fp16(hi) in
    bits 16-31 (round to nearest even). Stored or reduced little-endian, lo lands at the lower address."""
    lo16 = lo.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
    hi16 = hi.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
    return lo16 | (hi16 << 16)


@triton.jit
def _red_f32(addr, vals, START: tl.constexpr, WIDTH: tl.constexpr):
    """One vector reduction (sm_90 `red.global.add.v2/v4.f32`) of vals[START : START + WIDTH] at addr."""
    if WIDTH == 2:
        tl.inline_asm_elementwise("red.relaxed.gpu.global.add.v2.f32 [$1], {$2, $3};\n mov.b32 $0, 0;",
                                  "=r,l,f,f", [addr, vals[START], vals[START + 1]], dtype=tl.int32,
                                  is_pure=False, pack=1)
    else:
        tl.inline_asm_elementwise("red.relaxed.gpu.global.add.v4.f32 [$1], {$2, $3, $4, $5};"
                                  "\n mov.b32 $0, 0;",
                                  "=r,l,f,f,f,f", [addr, vals[START], vals[START + 1], vals[START + 2],
                                                   vals[START + 3]], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _red_f16x2(addr, words):
    """One packed fp16 reduction of the 1, 2 or 4 f16x2 words (uint32) at addr (4, 8 or 16 bytes)."""
    if len(words) == 1:
        tl.inline_asm_elementwise("red.relaxed.gpu.global.add.noftz.f16x2 [$1], $2;\n mov.b32 $0, 0;",
                                  "=r,l,r", [addr, words[0]], dtype=tl.int32, is_pure=False, pack=1)
    elif len(words) == 2:
        tl.inline_asm_elementwise("red.relaxed.gpu.global.add.noftz.v2.f16x2 [$1], {$2, $3};"
                                  "\n mov.b32 $0, 0;",
                                  "=r,l,r,r", [addr, words[0], words[1]], dtype=tl.int32, is_pure=False,
                                  pack=1)
    else:
        tl.inline_asm_elementwise("red.relaxed.gpu.global.add.noftz.v4.f16x2 [$1], {$2, $3, $4, $5};"
                                  "\n mov.b32 $0, 0;",
                                  "=r,l,r,r,r,r", [addr, words[0], words[1], words[2], words[3]],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _atomic_row(ptr, row, scale, vals, VEC: tl.constexpr):
    """ptr[row * F + f] += scale * vals[f] for f < F = len(vals), vals an F-tuple of (BLOCK,) fp32, row
    (BLOCK,) int64; ptr fp32, or fp16 (then VEC and F >= 2). Unmasked: callers pass vals = 0 for points past
    N (dy is loaded with other=0) and every row is valid, so a masked-out lane adds 0 (a predicated atomic
    costs a branch per instruction in SASS). The vector forms halve or quarter the atomic operations the L2
    must serialise; fp16 halves their bytes again and the gradient buffer's size."""
    F: tl.constexpr = len(vals)
    HALF: tl.constexpr = ptr.dtype.element_ty == tl.float16
    if HALF:
        tl.static_assert(VEC, "fp16 gradients need sm_90 vector reductions (the launcher falls back to fp32)")
        tl.static_assert(F >= 2, "fp16 gradients need F >= 2 (the launcher falls back to fp32)")
        words = ()
        for k in tl.static_range(F // 2):
            words = words + (_half2(scale * vals[2 * k], scale * vals[2 * k + 1]),)
        _red_f16x2((ptr + row * F).to(tl.int64, bitcast=True), words)
    elif VEC and F >= 2:
        scaled = ()
        for f in tl.static_range(F):
            scaled = scaled + (scale * vals[f],)
        WIDTH: tl.constexpr = 2 if F == 2 else 4
        for k in tl.static_range(F // WIDTH):
            addr = (ptr + row * F + k * WIDTH).to(tl.int64, bitcast=True)
            _red_f32(addr, scaled, k * WIDTH, WIDTH)
    else:
        for f in tl.static_range(F):
            tl.atomic_add(ptr + row * F + f, scale * vals[f], sem="relaxed")
