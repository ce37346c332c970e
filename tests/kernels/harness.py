"""Shared pieces of the kernel parity tests (imported by the tests/kernels/test_*_kernels.py files).

Without CUDA the Triton kernels run under the interpreter, which `triton.jit` switches on when it decorates a
kernel (TRITON_INTERPRET=1 is read at import time). Two ways to get there:

- `interpreted_kernels("grid", ...)`: in this process. Sets TRITON_INTERPRET=1 (for the rest of the pytest
  worker) and imports the kernel modules, reloading any imported earlier without it. The cases stay
  ordinary parametrized tests.
- `run_in_interpreter(__file__)`: in a child process with TRITON_INTERPRET=1 that calls the test file's
  `interpreted_checks()`; for checks that want a fresh process (nothing imported before the flag).

Errors are `rel_err(a, b) = max |a - b| / max |b|`. `check_encoding_parity` is the grid / simplex check:
outputs, d params, d x and the double backward of (d params, d x) w.r.t. x, params and dy, on fresh random
cotangents. `check_fp16_gradients` (GPU) and `check_gradient_dtype_fallback` (interpreter) cover the
gradient_dtype=torch.float16 option (tiny-cuda-nn's half2 accumulation of the table gradient).
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# fp32 tables: output 2e-5, gradients 1e-4 (fp32 atomics sum in another order); fp16 tables are compared with
# the reference on the fp16-rounded table, so the same holds, except with fp16 outputs (one fp16 rounding of
# the output and of the incoming gradient): 2e-3 output, 5e-3 gradients.
ENCODING_TOL = {"out": 2e-5, "grad": 1e-4, "out16": 2e-3, "grad16": 5e-3}
FP16_UNIT_ROUNDOFF = 2.0**-11  # fp16 keeps 11 significant bits; round to nearest: relative error <= 2^-11


# ---------------------------------------------------------------------------------------------------------
# Interpreter


def _interpreted(module: ModuleType) -> bool:
    """Whether the module's Triton kernels were decorated under the interpreter."""
    kernels = [v for v in vars(module).values() if type(v).__name__ in ("JITFunction", "InterpretedFunction")]
    return all(type(v).__name__ == "InterpretedFunction" for v in kernels)


def interpreted_kernels(*names: str) -> tuple[list[ModuleType], bool]:
    """Import `ngraphics.kernels.<name>` for each name, under the interpreter when there is no CUDA device.

    Returns: (the modules, interpreted?). Modules imported earlier in this process without the interpreter
    are reloaded (`_atomics`, then `_common`, so the reloaded modules pick up their interpreted helpers); the
    policy (`ngraphics.ops.use_kernel`) reads the flag on every call. Skips the calling test module when
    triton is not installed.
    """
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (triton.jit reads it there)
    pytest.importorskip("triton")
    atomics = importlib.import_module("ngraphics.kernels._atomics")
    common = importlib.import_module("ngraphics.kernels._common")
    modules = [importlib.import_module(f"ngraphics.kernels.{name}") for name in names]
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreted and not all(_interpreted(m) for m in (atomics, common, *modules)):
        importlib.reload(atomics)
        importlib.reload(common)
        modules = [importlib.reload(m) for m in modules]
    return modules, interpreted


def interpreter_only(interpreted: bool):
    """skipif marker for the CPU interpreter cases (with CUDA the gpu cases cover them)."""
    reason = "interpreter cases run on CPU-only machines; with CUDA the gpu cases cover them"
    return pytest.mark.skipif(not interpreted, reason=reason)


def run_in_interpreter(test_file: str, entry: str = "interpreted_checks", timeout: float = 600) -> None:
    """Run `python test_file entry` in a child process with TRITON_INTERPRET=1 and assert it exits 0 (the
    file ends with `if __name__ == "__main__": globals()[sys.argv[1]]()`)."""
    pytest.importorskip("triton")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, test_file, entry], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------
# Comparison


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for empty tensors); a must be finite (unwritten outputs show up as NaN)."""
    assert a.shape == b.shape and torch.isfinite(a).all(), (a.shape, b.shape)
    if b.numel() == 0:
        return 0.0
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def encoding_grads(encode, x0, p0, dy0, v, r):
    """out, dx, dp, and the grads of (dx . v + dp . r) w.r.t. (x, p, dy) (zeros where unused or constant:
    grid Nearest's reference loss does not depend on anything)."""
    x, p, dy = (t.clone().requires_grad_(True) for t in (x0, p0, dy0))
    out = encode(x, p)
    dx, dp = torch.autograd.grad(out, (x, p), dy, create_graph=True)
    loss = (dx * v).sum() + (dp * r).sum()
    second = (None, None, None)
    if loss.requires_grad:
        second = torch.autograd.grad(loss, (x, p, dy), allow_unused=True)
    second = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, p, dy)))
    return out.detach(), dx.detach(), dp.detach(), second


def check_encoding_parity(encode_triton, encode_torch, x, p, gen: torch.Generator, max_scale: float,
                          table_dtype=None, out_dtype=None) -> dict:
    """Triton vs torch encoding on positions x (N, D) and params p, with fresh random cotangents from `gen`.

    encode_triton(x, p, table_dtype=, out_dtype=) and encode_torch(x, p) -> (N, L * F). fp16 tables: the
    reference runs on the fp16-rounded params. max_scale: the finest level's scale (with fp16 outputs the
    x cotangent is divided by it, keeping d loss / d dy inside fp16's range). Asserts ENCODING_TOL; returns
    the errors {out, dx, dp, ddx, ddp, ddy}.
    """
    device = x.device
    p_ref = p.half().float() if table_dtype == torch.float16 else p
    out_ref = encode_torch(x, p_ref)
    dy = torch.randn(out_ref.shape, generator=gen).to(device)
    v = torch.randn(x.shape, generator=gen).to(device)
    if out_dtype == torch.float16:
        v = v / max_scale
    r = torch.randn(p.shape, generator=gen).to(device)
    if device.type != "cpu":  # poison the allocator's cache: unwritten outputs show up as NaN
        torch.full((4 * out_ref.numel() + 4 * p.numel(),), float("nan"), device=device)
    tri = encoding_grads(lambda a, b: encode_triton(a, b, table_dtype=table_dtype, out_dtype=out_dtype),
                         x, p, dy, v, r)
    ref = encoding_grads(encode_torch, x, p_ref, dy, v, r)
    names = ["out", "dx", "dp", "ddx", "ddp", "ddy"]
    errs = dict(zip(names, [rel_err(a, b) for a, b in zip(tri[:3] + tuple(tri[3]), ref[:3] + tuple(ref[3]))]))
    assert tri[0].dtype == (out_dtype or torch.float32)
    half_out = out_dtype == torch.float16
    assert errs["out"] <= ENCODING_TOL["out16" if half_out else "out"], errs
    grad_tol = ENCODING_TOL["grad16" if half_out else "grad"]  # dy is rounded to fp16 too
    for name in names[1:]:
        assert errs[name] <= grad_tol, (name, errs)
    return errs


def check_module_float16(make, n_dims: int) -> None:
    """make(backend) -> an encoding module with dtype=torch.float16. The triton module (fp16 tables and
    outputs in the kernels) matches the torch module (the same rounding emulated) on params of order 1;
    both give float16 outputs and float32 parameter gradients."""
    tri, ref = make("triton"), make("torch")
    with torch.no_grad():
        tri.params.uniform_(-1, 1)
    ref.load_state_dict(tri.state_dict())
    x = torch.rand(37, n_dims)
    out_tri, out_ref = tri(x), ref(x)
    assert out_tri.dtype == out_ref.dtype == torch.float16
    assert rel_err(out_tri, out_ref) <= ENCODING_TOL["out16"]
    dy = torch.randn(out_ref.shape).half()
    (g_tri,) = torch.autograd.grad(out_tri, tri.params, dy)
    (g_ref,) = torch.autograd.grad(out_ref, ref.params, dy)
    assert g_tri.dtype == torch.float32 and rel_err(g_tri, g_ref) <= ENCODING_TOL["grad"]


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (2-norms over all entries, in float64)."""
    assert a.shape == b.shape and torch.isfinite(a).all(), (a.shape, b.shape)
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _grads(encode, x, p, dy, **kw):
    """(d x, d params) of encode(x, p, **kw) for the output cotangent dy."""
    x, p = x.clone().requires_grad_(True), p.clone().requires_grad_(True)
    return torch.autograd.grad(encode(x, p, **kw), (x, p), dy)


def check_fp16_gradients(encode_triton, reference_f64, ops, x, p, gen: torch.Generator,
                         level_rows: list[tuple[int, int]], n_vertices: int) -> dict:
    """gradient_dtype=torch.float16 (packed fp16 sums, sm_90) against a float64 reference.

    encode_triton(x, p, table_dtype=, gradient_dtype=) -> (N, L * F); reference_f64(x, p64) -> (N, L * F)
    float64: the torch reference with float32 positions and weights (those the kernels compute; float64
    positions would move fine-level weights by ~scale * 2^-24, far more than what is measured here) and a
    float64 table, so its sums over points are float64. ops: the `LevelOps` behind encode_triton; x (N, D)
    float32, p (n_params,) float32 on CUDA; level_rows: (first row, rows) of each level's table in
    p.view(-1, F); n_vertices: rows each point reads per level (2^D or D + 1). Tables are fp16 on both sides
    (the reference runs on the fp16-rounded params).

    Error: e = ||dp - dp_ref|| / ||dp_ref|| over all params. Every contribution and partial sum of an entry
    with n contributions is rounded to fp16, a random walk of relative size ~2^-11 sqrt(n / 3); the entries
    with the most contributions dominate the norm. Tolerance: 2^-11 sqrt(n_c), n_c = the largest mean number
    of contributions per touched row of a level (N * n_vertices / touched rows, max over levels). A CPU
    emulation of sequential fp16 sums in random order gave e = 0.13..0.33 of it on grids and simplices of
    D = 2..4, F = 2..8 with 1e5 points; swapping the two fp16 halves of each packed word gives e ~ 1.4.
    Also asserts: backward's own buffer is fp16; the fp32 path is > 10x closer (so the fp16 sums did run
    behind autograd); d x is unaffected. Returns {err16, err32, swapped, tol, n_c}.
    """
    if not ops.half_gradients(x.device):
        pytest.skip("fp16 gradient accumulation needs sm_90 vector reductions (float32 is used here)")
    F, n = ops.F, x.shape[0]
    dy = torch.randn((n, ops.L * F), generator=gen).to(x.device)
    p64 = p.half().double().requires_grad_(True)
    (dp_ref,) = torch.autograd.grad(reference_f64(x, p64), p64, dy.double())
    dx32, dp32 = _grads(encode_triton, x, p, dy, table_dtype=torch.float16)
    dx16, dp16 = _grads(encode_triton, x, p, dy, table_dtype=torch.float16, gradient_dtype=torch.float16)
    dtable, _ = ops.backward(x, p.half(), dy, True, False, torch.float16)
    assert dtable.dtype == torch.float16 and dp16.dtype == p.dtype

    touched = dp_ref.view(-1, F).ne(0).any(dim=1)
    n_c = max(n * n_vertices / max(1, int(touched[a:a + rows].sum())) for a, rows in level_rows)
    tol = FP16_UNIT_ROUNDOFF * math.sqrt(n_c)
    swapped = dp16.view(-1, 2).flip(1).reshape(-1)  # features f and f + 1 exchanged in every packed pair
    errs = {"err16": rel_norm(dp16, dp_ref), "err32": rel_norm(dp32, dp_ref),
            "swapped": rel_norm(swapped, dp_ref), "tol": tol, "n_c": n_c}
    assert errs["err16"] <= tol, errs
    assert errs["swapped"] > tol, errs  # the check can tell the packing order
    assert errs["err32"] * 10 < errs["err16"], errs
    assert rel_err(dx16, dx32) <= ENCODING_TOL["grad"]
    return errs


def check_gradient_dtype_fallback(encode_triton, ops, x, p, gen: torch.Generator) -> None:
    """Where fp16 sums are unavailable (here: the interpreter), gradient_dtype=torch.float16 runs the float32
    path: backward's buffer is fp32 and d x, d params and the double backward equal gradient_dtype=None's
    bit for bit (same kernels, same launch shape)."""
    assert not ops.half_gradients(x.device)
    dtable, _ = ops.backward(x, p, torch.ones(x.shape[0], ops.L * ops.F), True, False, torch.float16)
    assert dtable.dtype == torch.float32
    dy = torch.randn((x.shape[0], ops.L * ops.F), generator=gen)
    v, r = torch.randn(x.shape, generator=gen), torch.randn(p.shape, generator=gen)
    results = [encoding_grads(lambda a, b, gd=gd: encode_triton(a, b, gradient_dtype=gd), x, p, dy, v, r)
               for gd in (None, torch.float16)]
    for a, b in zip(results[0][1:3] + tuple(results[0][3]), results[1][1:3] + tuple(results[1][3])):
        assert torch.equal(a, b)
