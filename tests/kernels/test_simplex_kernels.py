"""Parity of the Triton simplex kernels (`ngraphics.kernels.simplex`) with `simplex_encode_torch`.

Same scheme as test_grid_kernels.py: fresh random inputs per case; outputs, d params, d x and the double
backward of (d params, d x) w.r.t. x, params and dy are compared as max |triton - torch| / max |torch|.
Without CUDA the kernels run under the Triton interpreter on tiny inputs (37 points, 2 levels); the
interpreter runs every configuration (it cannot show speed, the GPU's fma contraction of `x * s + 0.5` or
unordered atomics). With CUDA the `gpu` cases run on 100003 points. Tolerances as for the grid: fp32 tables
2e-5 (output) / 1e-4 (gradients); fp16 tables against the reference on the fp16-rounded table; fp16 outputs
2e-3 / 5e-3. Points on simplex faces (ties between fractions) come from lattice vertices mapped back with the
unskew.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (triton.jit reads it there)
pytest.importorskip("triton")

import ngraphics.kernels._common as kcommon
import ngraphics.kernels.simplex as ksimplex

from ngraphics.encodings.simplex import Simplex, simplex_encode_torch, simplex_spec, unskew_factor

INTERPRETED = type(ksimplex._simplex_fwd_kernel).__name__ == "InterpretedFunction"
if os.environ.get("TRITON_INTERPRET") == "1" and not INTERPRETED:  # imported earlier without the interpreter
    kcommon = importlib.reload(kcommon)
    ksimplex = importlib.reload(ksimplex)
    INTERPRETED = True

needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="interpreter cases run on CPU-only machines; with CUDA the gpu cases cover them"
)

TOL = {"out": 2e-5, "grad": 1e-4, "out16": 2e-3, "grad16": 5e-3}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and torch.isfinite(a).all()
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _grads(encode, x0, p0, dy0, v, r):
    """out, dx, dp, and the grads of (dx . v + dp . r) w.r.t. (x, p, dy) (zeros where unused)."""
    x, p, dy = (t.clone().requires_grad_(True) for t in (x0, p0, dy0))
    out = encode(x, p)
    dx, dp = torch.autograd.grad(out, (x, p), dy, create_graph=True)
    loss = (dx * v).sum() + (dp * r).sum()
    second = torch.autograd.grad(loss, (x, p, dy), allow_unused=True)
    second = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, p, dy)))
    return out.detach(), dx.detach(), dp.detach(), second


def check_parity(spec, n, device, table_dtype=None, out_dtype=None):
    g = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**31, ()).item()))
    D = spec.n_dims
    x = torch.rand(n, D, generator=g)
    x[0], x[-1] = 0.0, 1.0
    # a quarter of the points on level-1 lattice vertices (every fraction 0: all ranks tie)
    s = spec.scales[1]
    v_int = torch.randint(0, int(s) + 1, (n // 4, D), generator=g).double()
    p_level = v_int - unskew_factor(D) * v_int.sum(dim=1, keepdim=True)  # unskew -> level units
    x[1:1 + n // 4] = ((p_level - 0.5) / s).float()
    p = torch.randn(spec.n_params, generator=g)
    x, p = x.to(device), p.to(device)
    p_ref = p.half().float() if table_dtype == torch.float16 else p
    out_ref = simplex_encode_torch(x, p_ref, spec)
    dy = torch.randn(out_ref.shape, generator=g).to(device)
    v = torch.randn(x.shape, generator=g).to(device)
    if out_dtype == torch.float16:  # d loss / d dy grows with the level scale; keep it inside fp16's range
        v = v / max(spec.scales)
    r = torch.randn(p.shape, generator=g).to(device)
    if device != "cpu":  # poison the allocator's cache: unwritten outputs show up as NaN
        torch.full((4 * out_ref.numel() + 4 * p.numel(),), float("nan"), device=device)
    tri = _grads(lambda a, b: ksimplex.simplex_encode_triton(a, b, spec, table_dtype=table_dtype,
                                                             out_dtype=out_dtype), x, p, dy, v, r)
    ref = _grads(lambda a, b: simplex_encode_torch(a, b, spec), x, p_ref, dy, v, r)
    names = ["out", "dx", "dp", "ddx", "ddp", "ddy"]
    errs = dict(zip(names, [_rel(a, b) for a, b in zip(tri[:3] + tuple(tri[3]), ref[:3] + tuple(ref[3]))]))
    assert tri[0].dtype == (out_dtype or torch.float32)
    assert errs["out"] <= (TOL["out16"] if out_dtype == torch.float16 else TOL["out"]), errs
    grad_tol = TOL["grad16"] if out_dtype == torch.float16 else TOL["grad"]
    for name in names[1:]:
        assert errs[name] <= grad_tol, (name, errs)
    return errs


def small_spec(D, F, log2=6, levels=2, base=3, scale=2.0):
    return simplex_spec(D, {"n_levels": levels, "n_features_per_level": F, "log2_hashmap_size": log2,
                            "base_resolution": base, "per_level_scale": scale})


@needs_interpreter
@pytest.mark.parametrize("D,F,log2,table_dtype", [
    (2, 1, 6, None),  # level 0 dense, level 1 hashed
    (3, 2, 8, None),
    (4, 4, 7, torch.float16),
    (3, 8, 4, None),
])
def test_interpreter_parity(D, F, log2, table_dtype):
    check_parity(small_spec(D, F, log2=log2), 37, "cpu", table_dtype=table_dtype)


@needs_interpreter
def test_interpreter_level_groups_and_fp16_output(monkeypatch):
    for kind in ksimplex.TUNING:
        monkeypatch.setitem(ksimplex.TUNING, kind, dict(ksimplex.TUNING[kind], group=3, level_fastest=True))
    check_parity(small_spec(3, 2, levels=4), 37, "cpu", table_dtype=torch.float16, out_dtype=torch.float16)


@needs_interpreter
def test_interpreter_module_float16_precision():
    """Simplex(dtype=float16, backend="triton"): fp16 tables and outputs in the kernels, as emulated by the
    torch backend."""
    from ngraphics.backends import triton_available

    triton_available.cache_clear()  # TRITON_INTERPRET may have been set after a first (cached) answer
    config = {"n_levels": 2, "log2_hashmap_size": 7, "base_resolution": 3}
    tri = Simplex(3, config, backend="triton", dtype=torch.float16)
    ref = Simplex(3, config, backend="torch", dtype=torch.float16)
    with torch.no_grad():
        tri.params.uniform_(-1, 1)
    ref.load_state_dict(tri.state_dict())
    x = torch.rand(37, 3)
    out_tri, out_ref = tri(x), ref(x)
    assert out_tri.dtype == out_ref.dtype == torch.float16
    assert _rel(out_tri, out_ref) <= TOL["out16"]
    dy = torch.randn(out_ref.shape).half()
    (g_tri,), (g_ref,) = torch.autograd.grad(out_tri, tri.params, dy), torch.autograd.grad(out_ref, ref.params, dy)
    assert g_tri.dtype == torch.float32 and _rel(g_tri, g_ref) <= TOL["grad"]


GPU_CASES = [  # (D, F, log2_hashmap_size, levels, table dtype, out dtype); base 16, scale 2
    (2, 2, 19, 16, None, None),
    (3, 2, 19, 16, None, None),
    (3, 2, 19, 16, torch.float16, torch.float16),
    (4, 2, 19, 16, None, None),
    (4, 4, 22, 12, torch.float16, None),
    (3, 1, 14, 8, torch.float16, None),
    (2, 8, 16, 6, None, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("D,F,log2,levels,table_dtype,out_dtype", GPU_CASES)
def test_gpu_parity(D, F, log2, levels, table_dtype, out_dtype):
    spec = small_spec(D, F, log2=log2, levels=levels, base=16)
    check_parity(spec, 100003, "cuda", table_dtype=table_dtype, out_dtype=out_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("group,level_fastest", [(1, True), (16, False)])
def test_gpu_launch_shapes(monkeypatch, group, level_fastest):
    for kind in ksimplex.TUNING:
        shape = dict(ksimplex.TUNING[kind], group=group, level_fastest=level_fastest)
        monkeypatch.setitem(ksimplex.TUNING, kind, shape)
    check_parity(small_spec(4, 2, log2=19, levels=16, base=16), 65537, "cuda")


@pytest.mark.gpu
def test_gpu_simplex_module_uses_triton():
    enc = Simplex(3, {"n_levels": 8}, backend="triton").cuda()
    x = torch.rand(4097, 3, device="cuda")
    assert _rel(enc(x), simplex_encode_torch(x, enc.params, enc.spec)) <= TOL["out"]
