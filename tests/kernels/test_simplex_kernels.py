"""Parity of the Triton simplex kernels (`ngraphics.kernels.simplex`) with `simplex_encode_torch`.

Same scheme as test_grid_kernels.py (`harness.check_encoding_parity`): fresh random inputs per case;
outputs, d params, d x and the double backward of (d params, d x) w.r.t. x, params and dy are compared as
max |triton - torch| / max |torch|.
Without CUDA the kernels run under the Triton interpreter on tiny inputs (37 points, 2 levels); the
interpreter runs every configuration (it cannot show speed, the GPU's fma contraction of `x * s + 0.5` or
unordered atomics). With CUDA the `gpu` cases run on 100003 points. Tolerances as for the grid: fp32 tables
2e-5 (output) / 1e-4 (gradients); fp16 tables against the reference on the fp16-rounded table; fp16 outputs
2e-3 / 5e-3. Points on simplex faces (ties between fractions) come from lattice vertices mapped back with the
unskew.
gradient_dtype=torch.float16 (tiny-cuda-nn's half2 sums of the table gradient): the float32 fallback under the
interpreter, `harness.check_fp16_gradients` against a float64 reference on an sm_90 GPU (see
test_grid_kernels.py).
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

from ngraphics.encodings.simplex import (
    Simplex,
    simplex_encode_torch,
    simplex_level_index,
    simplex_spec,
    simplex_vertices_and_weights,
    unskew_factor,
)

(ksimplex,), INTERPRETED = interpreted_kernels("simplex")
needs_interpreter = interpreter_only(INTERPRETED)


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
    return check_encoding_parity(lambda a, b, **kw: ksimplex.simplex_encode_triton(a, b, spec, **kw),
                                 lambda a, b: simplex_encode_torch(a, b, spec), x.to(device), p.to(device), g,
                                 max(spec.scales), table_dtype, out_dtype)


def reference_f64(x, p64, spec):
    """`simplex_encode_torch` on float32 x (float32 positions and weights, as the kernels) with a float64
    table: (N, D) float32, (n_params,) float64 -> (N, L * F) float64, float64 sums over points."""
    table = p64.view(-1, spec.n_features)
    out = []
    for level in range(spec.n_levels):
        # vertices (N, D+1, D), weights (N, D+1) float32, as the kernels compute them
        vertices, weights = simplex_vertices_and_weights(x * spec.scales[level] + 0.5)
        rows = spec.offsets[level] + simplex_level_index(vertices, spec, level)
        out.append((weights.double().unsqueeze(-1) * table[rows]).sum(dim=1))
    return torch.cat(out, dim=1)


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
    """Simplex(dtype=float16, backend="triton"): fp16 tables and outputs in the kernels, as the torch backend
    emulates them."""
    config = {"n_levels": 2, "log2_hashmap_size": 7, "base_resolution": 3}
    check_module_float16(lambda backend: Simplex(3, config, backend=backend, dtype=torch.float16), 3)


@needs_interpreter
def test_interpreter_fp16_gradients_fall_back_to_fp32():
    """gradient_dtype=float16 without sm_90 (here: the interpreter) sums in float32; modules pass it on."""
    spec = small_spec(3, 2)
    g = torch.Generator().manual_seed(12)
    x, p = torch.rand(37, 3, generator=g), torch.randn(spec.n_params, generator=g)
    check_gradient_dtype_fallback(lambda a, b, **kw: ksimplex.simplex_encode_triton(a, b, spec, **kw),
                                  ksimplex.simplex_ops(spec), x, p, g)
    with pytest.raises(ValueError, match="simplex: gradient_dtype must be None, float32 or float16"):
        ksimplex.simplex_encode_triton(x, p, spec, gradient_dtype=torch.float64)
    config = {"n_levels": 2, "log2_hashmap_size": 6, "base_resolution": 3}
    enc = Simplex(3, config, backend="triton", gradient_dtype=torch.float16)
    ref = Simplex(3, config, backend="triton")
    (a,) = torch.autograd.grad(enc(x).sum(), enc.params)
    (b,) = torch.autograd.grad(ref(x).sum(), ref.params)
    assert enc.gradient_dtype == torch.float16 and torch.equal(a, b)


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
    assert rel_err(enc(x), simplex_encode_torch(x, enc.params, enc.spec)) <= TOL["out"]


# (D, F, log2_hashmap_size, levels); base 16, scale 2; fp16 tables
GPU_FP16_GRADIENT_CASES = [(3, 2, 19, 16), (3, 4, 19, 8), (4, 2, 19, 16), (4, 8, 16, 6)]


@pytest.mark.gpu
@pytest.mark.parametrize("D,F,log2,levels", GPU_FP16_GRADIENT_CASES)
def test_gpu_fp16_gradients(D, F, log2, levels):
    """gradient_dtype=float16 (packed half2 reductions) vs the float64 reference on the fp16-rounded table."""
    spec = small_spec(D, F, log2=log2, levels=levels, base=16)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    x = torch.rand(100003, D, generator=g).cuda()
    p = torch.randn(spec.n_params, generator=g).cuda()
    rows = list(zip(spec.offsets[:-1], spec.table_sizes))
    check_fp16_gradients(lambda a, b, **kw: ksimplex.simplex_encode_triton(a, b, spec, **kw),
                         lambda a, b: reference_f64(a, b, spec), ksimplex.simplex_ops(spec), x, p, g, rows,
                         D + 1)
