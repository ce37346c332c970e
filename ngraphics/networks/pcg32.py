"""tiny-cuda-nn's random stream (PCG32), so that a seed initialises parameters to the same numbers as tcnn.

tcnn seeds `pcg32 rng{seed}` (stream 1) and draws `next_float() = (next_uint() >> 9 | 0x3f800000) - 1` in
[0, 1): sequentially on the host for MLP matrices (`GPUMatrix::initialize_xavier_uniform`), and in a
strided order on the GPU for grid tables (`generate_random_uniform`, see `grid_uniform`). The state update
is the LCG `s <- s * MULT + inc (mod 2^64)`, so k steps at once are `s <- A_k s + C_k`; `floats(n)` uses
that to draw n numbers with numpy vector ops instead of a Python loop.
"""

from __future__ import annotations

import numpy as np

MULT = 0x5851F42D4C957F2D
MASK = (1 << 64) - 1
CHUNK = 1 << 20  # numbers drawn per vector step (bounds the temporary arrays to a few MB)
N_THREADS_LINEAR = 128  # tcnn's threads per block for linear kernels (common.h)


def _jump(k: int, inc: int) -> tuple[int, int]:
    """(A, C) with k LCG steps == s -> A * s + C (mod 2^64), by repeated squaring (O(log k))."""
    acc_a, acc_c, cur_a, cur_c = 1, 0, MULT, inc
    while k:
        if k & 1:
            acc_a, acc_c = (acc_a * cur_a) & MASK, (acc_c * cur_a + cur_c) & MASK
        cur_c, cur_a = (cur_c * (cur_a + 1)) & MASK, (cur_a * cur_a) & MASK
        k >>= 1
    return acc_a, acc_c


def _div_round_up(value: int, divisor: int) -> int:
    return (value + divisor - 1) // divisor


def _output(old: np.ndarray) -> np.ndarray:
    """PCG32's XSH-RR output function of the pre-step states (uint64) -> uint32 values (as uint64)."""
    xorshifted = (((old >> np.uint64(18)) ^ old) >> np.uint64(27)) & np.uint64(0xFFFFFFFF)
    rot = old >> np.uint64(59)
    left = (xorshifted << ((np.uint64(32) - rot) & np.uint64(31))) & np.uint64(0xFFFFFFFF)
    return (xorshifted >> rot) | left


class Pcg32:
    """PCG32 as in tcnn's `pcg32.h` (Wenzel Jakob's port): `Pcg32(seed)` == `pcg32 rng{seed}`."""

    def __init__(self, seed: int, stream: int = 1):
        self.inc = ((stream << 1) | 1) & MASK
        self.state = 0
        self.next_uint()
        self.state = (self.state + int(seed)) & MASK
        self.next_uint()

    def next_uint(self) -> int:
        old = self.state
        self.state = (old * MULT + self.inc) & MASK
        return int(_output(np.array([old], dtype=np.uint64))[0])

    def advance(self, k: int) -> None:
        """Skip k draws (tcnn's `rng.advance(k)`)."""
        a, c = _jump(int(k), self.inc)
        self.state = (a * self.state + c) & MASK

    def uints(self, n: int) -> np.ndarray:
        """The next n outputs of next_uint(), (n,) uint32; advances the state by n."""
        out = np.empty(n, dtype=np.uint32)
        step = min(n, CHUNK)
        if step == 0:
            return out
        # A_k, C_k for k = 0..step-1 by doubling: [k + m] = A_k * (A_m, C_m) + (0, C_k).
        a = np.ones(1, dtype=np.uint64)
        c = np.zeros(1, dtype=np.uint64)
        while a.size < step:
            m = a.size
            am, cm = _jump(m, self.inc)
            a = np.concatenate([a, a * np.uint64(am)])
            c = np.concatenate([c, a[:m] * np.uint64(cm) + c])
        a, c = a[:step], c[:step]
        with np.errstate(over="ignore"):
            for start in range(0, n, step):
                count = min(step, n - start)
                states = a[:count] * np.uint64(self.state) + c[:count]
                out[start : start + count] = _output(states)
                self.advance(count)
        return out

    def floats(self, n: int) -> np.ndarray:
        """The next n `next_float()` values in [0, 1), (n,) float32 (bit-exact with tcnn)."""
        bits = (self.uints(n) >> np.uint32(9)) | np.uint32(0x3F800000)
        return bits.view(np.float32) - np.float32(1.0)


def uniform_matrix(rng: Pcg32, n: int, scale: float) -> np.ndarray:
    """tcnn's host-side matrix init: `(float)(rng.next_float() * 2 * scale - scale)` for n entries in
    storage order. `scale` is the float32 half-width. Returns (n,) float32."""
    scale = np.float32(scale)
    return rng.floats(n) * np.float32(2.0) * scale - scale


def grid_uniform(rng: Pcg32, n: int, lower: float, upper: float) -> np.ndarray:
    """tcnn's `generate_random_uniform(rng, n, out, lower, upper)` for grid tables, (n,) float32.

    The GPU kernel runs T = ceil(ceil(n / 4) / 128) * 128 threads; thread i skips i * 4 draws and writes
    its j-th draw (j < 4) to `out[i + T * j]`. So entry idx holds draw `(idx % T) * 4 + idx // T`, mapped
    by `val * (upper - lower) + lower` (a fused multiply-add on the GPU). The stream then moves on by n."""
    threads = _div_round_up(_div_round_up(n, 4), N_THREADS_LINEAR) * N_THREADS_LINEAR
    start = Pcg32.__new__(Pcg32)
    start.inc, start.state = rng.inc, rng.state
    draws = start.floats(threads * 4).reshape(threads, 4)  # [i, j]: thread i's j-th draw
    u = draws.T.reshape(-1)[:n].astype(np.float64)  # entry i + T * j
    width = np.float64(np.float32(upper) - np.float32(lower))  # (upper - lower) in float, as in tcnn
    out = (u * width + np.float64(np.float32(lower))).astype(np.float32)  # fma: one rounding
    rng.advance(n)
    return out


__all__ = ["Pcg32", "uniform_matrix", "grid_uniform", "MULT"]
