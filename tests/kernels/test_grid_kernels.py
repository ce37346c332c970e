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
"""

from __future__ import annotations

import pytest
import torch
from harness import ENCODING_TOL as TOL
from harness import (
    check_encoding_parity,
    check_module_float16,
    interpreted_kernels,
    interpreter_only,
    rel_err,
)

from ngraphics.encodings.grid import HashGrid, grid_encode_torch, grid_spec

(kgrid,), INTERPRETED = interpreted_kernels("grid")
needs_interpreter = interpreter_only(INTERPRETED)


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
    assert HashGrid(3, config, backend="triton")._triton_reason is None
    check_module_float16(lambda backend: HashGrid(3, config, backend=backend, dtype=torch.float16), 3)


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
