"""Parity of the Triton grid kernels (`ngraphics.kernels.grid`) with the torch reference `grid_encode_torch`.

Each case draws fresh random positions, tables and cotangents and compares the outputs and every gradient:
d params, d x, and the double backward of (d params, d x) w.r.t. x, params and dy (eikonal losses).

- Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before the kernels are
  imported) on tiny inputs (37 points, 2 levels, small tables). The interpreter runs every configuration;
  it cannot show speed, the GPU's fused multiply-add of `scale * x + 0.5` (it rounds twice: a point within an
  ulp of a cell face may pick the neighbouring cell, which moves the output by ~1e-7) or unordered atomics.
- With CUDA the same checks run as `gpu` tests on larger inputs across a sample of the config matrix.
Errors are max |triton - torch| / max |torch| per tensor (`harness.check_encoding_parity`, which the
simplex tests share). Tolerances: fp32 tables 2e-5 (output) and 1e-4
(gradients: fp32 atomics sum in another order); fp16 tables are compared with the reference evaluated on the
fp16-rounded table, so the same tolerances hold, except with fp16 outputs (one fp16 rounding of the output
and of the incoming gradient: 2e-3 output, 5e-3 gradients).

gradient_dtype=torch.float16 (tiny-cuda-nn's half2 sums of the table gradient): on CPU the interpreter takes
the float32 fallback, which must equal the float32 path bit for bit, and the fp16 packing helper is checked
bit for bit against torch's rounding; on an sm_90 GPU `harness.check_fp16_gradients` compares the fp16 sums
with a float64 reference (tolerance derived there from fp16's unit roundoff and the contributions per entry).
"""

from __future__ import annotations

import pytest
import torch
from harness import ENCODING_TOL as TOL
from harness import (
    check_encoding_parity,
    check_fp16_gradients,
    check_gradient_dtype_fallback,
    check_module_float16,
    interpreted_kernels,
    interpreter_only,
    rel_err,
)

from ngraphics.encodings.grid import HashGrid, _encode_level, grid_encode_torch, grid_spec

(kgrid,), INTERPRETED = interpreted_kernels("grid")
needs_interpreter = interpreter_only(INTERPRETED)
# after the interpreter switch: triton's own jit helpers (tl.zeros) must be decorated under it too
import triton
import triton.language as tl
from ngraphics.kernels._atomics import _half2


def check_parity(spec, n, device, table_dtype=None, out_dtype=None, edges=False):
    """Compare grid_encode_triton with grid_encode_torch on fresh random inputs; returns the errors."""
    g = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.rand(n, spec.n_dims, generator=g)
    x[0], x[-1] = 0.0, 1.0
    if edges:  # points on cell faces of level 1: scale * x + 0.5 integer
        k = torch.randint(0, int(spec.scales[1]) + 1, (n // 4, spec.n_dims), generator=g)
        x[1:1 + n // 4] = ((k.float() - 0.5) / spec.scales[1]).clamp(0, 1)
    p = torch.randn(spec.n_params, generator=g)
    return check_encoding_parity(lambda a, b, **kw: kgrid.grid_encode_triton(a, b, spec, **kw),
                                 lambda a, b: grid_encode_torch(a, b, spec), x.to(device), p.to(device), g,
                                 max(spec.scales), table_dtype, out_dtype)


def reference_f64(x, p64, spec):
    """`grid_encode_torch`'s level body on float32 x (float32 positions and weights, as the kernels) and a
    float64 table: (N, D) float32, (n_params,) float64 -> (N, L * F) float64, float64 sums over points."""
    tables = torch.split(p64, [size * spec.n_features for size in spec.hashmap_sizes])
    return torch.cat([_encode_level(x, table, spec, level) for level, table in enumerate(tables)], dim=1)


def small_spec(D, F, interpolation="Linear", grid_type="Hash", log2=6, levels=2, base=3, scale=2.0,
               hash_type="CoherentPrime"):
    return grid_spec(D, {"otype": "Grid", "type": grid_type, "n_levels": levels, "n_features_per_level": F,
                         "log2_hashmap_size": log2, "base_resolution": base, "per_level_scale": scale,
                         "interpolation": interpolation, "hash": hash_type})


# --------------------------------------------------------------------------------------------------------
# CPU: Triton interpreter, tiny inputs

INTERPRETER_CASES = [  # (D, F, interpolation, type, table dtype); level 0 is dense, level 1 hashed
    (2, 1, "Linear", "Hash", None),
    (3, 2, "Linear", "Hash", None),
    (3, 2, "Smoothstep", "Hash", None),
    (4, 4, "Linear", "Hash", torch.float16),
    (3, 8, "Nearest", "Hash", None),
    (2, 2, "Smoothstep", "Dense", None),
    (3, 1, "Linear", "Tiled", torch.float16),
    (4, 2, "Smoothstep", "Hash", None),
]


@needs_interpreter
@pytest.mark.parametrize("D,F,interpolation,grid_type,table_dtype", INTERPRETER_CASES)
def test_interpreter_parity(D, F, interpolation, grid_type, table_dtype):
    spec = small_spec(D, F, interpolation, grid_type)
    check_parity(spec, 37, "cpu", table_dtype=table_dtype, edges=True)


@needs_interpreter
@pytest.mark.parametrize("D,hash_type", [(1, "CoherentPrime"), (3, "Prime"), (2, "ReversedPrime"),
                                         (5, "CoherentPrime")])
def test_interpreter_other_dims_and_hashes(D, hash_type):
    """tcnn compiles D = 2..4 and one hash; the kernels take D = 1..7 and every prime set."""
    check_parity(small_spec(D, 2, hash_type=hash_type), 37, "cpu", edges=True)


@needs_interpreter
def test_interpreter_level_groups_and_fp16_output(monkeypatch):
    """All levels in one program (GROUP = L) and level-first program order give the same results."""
    for kind in kgrid.TUNING:
        monkeypatch.setitem(kgrid.TUNING, kind, dict(kgrid.TUNING[kind], group=3, level_fastest=True))
    spec = small_spec(3, 2, levels=4, log2=7)
    check_parity(spec, 37, "cpu", table_dtype=torch.float16, out_dtype=torch.float16)


@needs_interpreter
def test_interpreter_module_float16_precision_and_prime_hash():
    """HashGrid(dtype=float16, backend="triton") runs the kernels with fp16 tables and outputs, as the torch
    backend emulates them; the Prime hash goes to the kernels too (no torch fallback)."""
    config = {"n_levels": 3, "log2_hashmap_size": 7, "base_resolution": 3, "hash": "Prime"}
    assert kgrid.unsupported_reason(HashGrid(3, config, backend="triton").spec) is None
    check_module_float16(lambda backend: HashGrid(3, config, backend=backend, dtype=torch.float16), 3)


@triton.jit
def _half2_kernel(lo_ptr, hi_ptr, out_ptr, N, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    word = _half2(tl.load(lo_ptr + i, mask=i < N), tl.load(hi_ptr + i, mask=i < N))
    tl.store(out_ptr + i, word.to(tl.int32, bitcast=True), mask=i < N)


@needs_interpreter
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy's fp16 cast to inf
def test_interpreter_half2_packing_order_and_rounding():
    """The f16x2 word of (lo, hi), read back as two fp16 values in memory order, is (fp16(lo), fp16(hi)):
    the feature with the lower index at the lower address, rounded like torch's .half() (nearest even;
    overflow to inf; subnormals)."""
    g = torch.Generator().manual_seed(5)
    lo = torch.cat([torch.randn(40, generator=g) * 10.0 ** torch.randint(-6, 4, (40,), generator=g),
                    torch.tensor([65504.0, 65520.0, 1e5, -3e-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 0.0, -0.0])])
    hi = torch.flip(lo, [0]) * -0.7
    words = torch.empty(lo.numel(), dtype=torch.int32)
    _half2_kernel[(1,)](lo, hi, words, lo.numel(), BLOCK=64)
    pairs = words.view(torch.float16).view(-1, 2)  # little-endian: the low 16 bits come first
    expected = torch.stack([lo.half(), hi.half()], dim=1)
    assert torch.equal(pairs.view(torch.int16), expected.view(torch.int16))


@needs_interpreter
@pytest.mark.parametrize("D,F,interpolation", [(3, 2, "Smoothstep"), (2, 1, "Linear")])
def test_interpreter_fp16_gradients_fall_back_to_fp32(D, F, interpolation):
    """gradient_dtype=float16 without sm_90 (here: the interpreter) or with F = 1 sums in float32."""
    spec = small_spec(D, F, interpolation)
    g = torch.Generator().manual_seed(11)
    x, p = torch.rand(37, D, generator=g), torch.randn(spec.n_params, generator=g)
    check_gradient_dtype_fallback(lambda a, b, **kw: kgrid.grid_encode_triton(a, b, spec, **kw),
                                  kgrid.grid_ops(spec), x, p, g)
    with pytest.raises(ValueError, match="grid: gradient_dtype must be None, float32 or float16"):
        kgrid.grid_encode_triton(x, p, spec, gradient_dtype=torch.bfloat16)


@needs_interpreter
def test_interpreter_module_passes_gradient_dtype(monkeypatch):
    """HashGrid(gradient_dtype=float16, backend="triton") hands the option to the kernels (and gets float32
    parameter gradients back); the torch backend ignores it."""
    seen = []
    encode = kgrid.grid_encode_triton

    def spy(*args, **kw):
        seen.append(kw.get("gradient_dtype"))
        return encode(*args, **kw)

    monkeypatch.setattr(kgrid, "grid_encode_triton", spy)
    config = {"n_levels": 2, "log2_hashmap_size": 7, "base_resolution": 3}
    enc = HashGrid(3, config, backend="triton", dtype=torch.float16, gradient_dtype=torch.float16)
    assert "gradient_dtype=torch.float16" in repr(enc)
    x = torch.rand(37, 3)
    (grad,) = torch.autograd.grad(enc(x).float().sum(), enc.params)
    assert seen == [torch.float16] and grad.dtype == torch.float32


# --------------------------------------------------------------------------------------------------------
# CUDA

# (D, F, interpolation, type, log2 table size, levels, table dtype, out dtype); base 16, scale 2
GPU_CASES = [
    (3, 2, "Linear", "Hash", 19, 16, None, None),
    (3, 2, "Linear", "Hash", 19, 16, torch.float16, torch.float16),
    (2, 1, "Linear", "Hash", 15, 8, torch.float16, None),
    (2, 8, "Smoothstep", "Hash", 12, 6, None, None),
    (3, 4, "Smoothstep", "Hash", 22, 16, torch.float16, None),
    (3, 8, "Nearest", "Hash", 14, 4, None, None),
    (4, 2, "Linear", "Hash", 19, 16, None, None),
    (4, 4, "Smoothstep", "Hash", 17, 8, torch.float16, None),
    (4, 1, "Nearest", "Hash", 10, 5, torch.float16, torch.float16),
    (3, 2, "Linear", "Dense", 19, 5, None, None),
    (2, 4, "Smoothstep", "Tiled", 19, 7, None, None),
    (3, 2, "Linear", "Hash", 24, 16, None, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("D,F,interpolation,grid_type,log2,levels,table_dtype,out_dtype", GPU_CASES)
def test_gpu_parity(D, F, interpolation, grid_type, log2, levels, table_dtype, out_dtype):
    spec = small_spec(D, F, interpolation, grid_type, log2=log2, levels=levels, base=16, scale=2.0)
    check_parity(spec, 100003, "cuda", table_dtype=table_dtype, out_dtype=out_dtype, edges=True)


@pytest.mark.gpu
def test_gpu_int64_offsets():
    """N * L * F > 2^31: output, dy and x offsets need int64. Checked on the last points. Needs ~20 GB of GPU
    memory (run the gpu tests with few xdist workers: 16 workers on one 80 GB H100 ran out)."""
    spec = small_spec(3, 2, levels=16, log2=19, base=16)
    n = 2**26 + 5
    x = torch.rand(n, 3, device="cuda")
    p = torch.randn(spec.n_params, device="cuda", requires_grad=True)
    out = kgrid.grid_encode_triton(x, p, spec, table_dtype=torch.float16, out_dtype=torch.float16)
    assert n * out.shape[1] > 2**31
    tail = slice(n - 4099, n)
    ref = grid_encode_torch(x[tail], p.detach().half().float(), spec)
    assert rel_err(out[tail].float(), ref) <= TOL["out16"]
    xg = x.clone().requires_grad_(True)
    out = kgrid.grid_encode_triton(xg, p.detach(), spec, table_dtype=torch.float16, out_dtype=torch.float16)
    dy = torch.randn(out.shape, device="cuda", dtype=torch.float16)
    (dx,) = torch.autograd.grad(out, xg, dy)
    xt = x[tail].clone().requires_grad_(True)
    ref_out = grid_encode_torch(xt, p.detach().half().float(), spec)
    (dx_ref,) = torch.autograd.grad(ref_out, xt, dy[tail].float())
    assert rel_err(dx[tail], dx_ref) <= TOL["grad16"]


@pytest.mark.gpu
@pytest.mark.parametrize("group,level_fastest", [(1, True), (4, False), (16, True)])
def test_gpu_launch_shapes(monkeypatch, group, level_fastest):
    for kind in kgrid.TUNING:
        shape = dict(kgrid.TUNING[kind], group=group, level_fastest=level_fastest)
        monkeypatch.setitem(kgrid.TUNING, kind, shape)
    check_parity(small_spec(3, 2, levels=16, log2=19, base=16), 65537, "cuda")


@pytest.mark.gpu
def test_gpu_hashgrid_module_uses_triton():
    enc = HashGrid(3, {"n_levels": 8}, backend="triton").cuda()
    x = torch.rand(4097, 3, device="cuda")
    assert rel_err(enc(x), grid_encode_torch(x, enc.params, enc.spec)) <= TOL["out"]


@pytest.mark.gpu
def test_gpu_empty_batch_and_no_grad():
    spec = small_spec(3, 2, levels=4)
    p = torch.randn(spec.n_params, device="cuda")
    assert kgrid.grid_encode_triton(torch.empty(0, 3, device="cuda"), p, spec).shape == (0, 8)
    with torch.no_grad():
        x = torch.rand(1000, 3, device="cuda")
        assert rel_err(kgrid.grid_encode_triton(x, p, spec), grid_encode_torch(x, p, spec)) <= TOL["out"]


# (D, F, type, log2 table size, levels); base 16, scale 2; fp16 tables
GPU_FP16_GRADIENT_CASES = [
    (2, 2, "Hash", 15, 8),
    (3, 2, "Hash", 19, 16),
    (3, 4, "Hash", 19, 8),
    (3, 8, "Hash", 17, 6),
    (4, 2, "Hash", 19, 8),
    (4, 8, "Hash", 16, 4),
    (3, 2, "Dense", 19, 4),
]


@pytest.mark.gpu
@pytest.mark.parametrize("D,F,grid_type,log2,levels", GPU_FP16_GRADIENT_CASES)
def test_gpu_fp16_gradients(D, F, grid_type, log2, levels):
    """gradient_dtype=float16 (packed half2 reductions) vs the float64 reference on the fp16-rounded table."""
    spec = small_spec(D, F, "Linear", grid_type, log2=log2, levels=levels, base=16, scale=2.0)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.rand(100003, D, generator=g).cuda()
    p = torch.randn(spec.n_params, generator=g).cuda()
    rows = list(zip(spec.offsets, spec.hashmap_sizes))
    check_fp16_gradients(lambda a, b, **kw: kgrid.grid_encode_triton(a, b, spec, **kw),
                         lambda a, b: reference_f64(a, b, spec), kgrid.grid_ops(spec), x, p, g, rows, 2**D)
