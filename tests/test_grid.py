"""Grid encodings (HashGrid / DenseGrid / TiledGrid / Grid) against an independent float64 oracle.

The oracle below re-derives tiny-cuda-nn's grid lookup one point, one level and one corner at a time with
Python ints (uint32 emulated by `& 0xFFFFFFFF`), numpy float32 where tcnn computes in float32, and exact
rationals for `fmaf(scale, x, 0.5f)`. Parameter counts are worked out by hand from tcnn's formula, and three
are numbers that real tiny-cuda-nn printed (quoted from public issue threads).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from ngraphics.encodings.grid import DenseGrid, Grid, HashGrid, TiledGrid, grid_encode_torch, grid_spec
from ngraphics.errors import ConfigError

M32 = 0xFFFFFFFF
PRIMES = {  # tcnn common_device.h: coherent_prime_hash, prime_hash, reversed_prime_hash
    "CoherentPrime": (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "Prime": (1958374283, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "ReversedPrime": (2165219737, 1434869437, 2097192037, 3674653429, 805459861, 2654435761, 1958374283),
}


# ----------------------------------------------------------------------------------------------- oracle


def f32_nearest(v: Fraction) -> float:
    """The float32 nearest to the rational v (ties to even): one exact rounding, like fmaf."""
    c = np.float32(float(v))
    candidates = (np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf)))

    def key(f):  # nearest, ties to the even bit pattern
        return abs(Fraction(float(f)) - v), int(np.array(f, np.float32).view(np.uint32)) & 1

    return float(min(candidates, key=key))


def oracle_levels(D: int, cfg: dict) -> tuple[list[dict], int]:
    """Per level: float32 scale, resolution, table size, entry offset; and the parameter count."""
    L, F, base = cfg["n_levels"], cfg["n_features_per_level"], cfg["base_resolution"]
    log2_scale = np.float32(math.log2(float(np.float32(cfg["per_level_scale"]))))
    levels, offset = [], 0
    for level in range(L):
        power = np.float32(2.0 ** float(np.float32(level) * log2_scale))
        scale = np.float32(power * np.float32(base)) - np.float32(1.0)
        res = math.ceil(float(scale)) + 1
        size = 2**31 - 1 if res**D > 2**31 else res**D  # tcnn caps at max_params = 2^31 - 1
        size = -(-size // 8) * 8
        if cfg["type"] == "Hash":
            size = min(size, 2 ** cfg["log2_hashmap_size"])
        if cfg["type"] == "Tiled":
            size = min(size, base**D)
        levels.append({"scale": float(scale), "res": res, "size": size, "offset": offset})
        offset += size
    return levels, offset * F


def oracle_index(cell: list[int], grid_type: str, res: int, size: int,
                 hash_type: str = "CoherentPrime") -> int:
    index, stride, d = 0, 1, 0
    while d < len(cell) and stride <= size:
        index = (index + cell[d] * stride) & M32
        stride = (stride * res) & M32
        d += 1
    if grid_type == "Hash" and size < stride:
        index = 0
        for d, c in enumerate(cell):
            index ^= (c * PRIMES[hash_type][d]) & M32
    return index % size


def oracle_encode(x: np.ndarray, params: np.ndarray, cfg: dict, float32_positions: bool) -> np.ndarray:
    """x: (N, D) float32/float64 values, params: (n_params,) -> (N, L*F) float64, one point at a time."""
    N, D = x.shape
    F, hash_type = cfg["n_features_per_level"], cfg.get("hash", "CoherentPrime")
    levels, n_params = oracle_levels(D, cfg)
    assert params.shape == (n_params,)
    out = np.zeros((N, len(levels) * F))
    for i in range(N):
        for level, lv in enumerate(levels):
            rows = params[lv["offset"] * F:(lv["offset"] + lv["size"]) * F]
            table = rows.reshape(lv["size"], F).astype(np.float64)
            cols = slice(level * F, (level + 1) * F)
            exact = [Fraction(lv["scale"]) * Fraction(float(v)) + Fraction(1, 2) for v in x[i]]
            pos = [f32_nearest(e) if float32_positions else float(e) for e in exact]
            lower = [math.floor(p) for p in pos]
            frac = [p - g for p, g in zip(pos, lower)]
            if cfg["interpolation"] == "Smoothstep":
                frac = [f * f * (3 - 2 * f) for f in frac]
            if cfg["interpolation"] == "Nearest":
                cell = [g & M32 for g in lower]
                out[i, cols] = table[oracle_index(cell, cfg["type"], lv["res"], lv["size"], hash_type)]
                continue
            acc = np.zeros(F)
            for corner in range(2**D):
                bits = [(corner >> d) & 1 for d in range(D)]
                weight = math.prod(frac[d] if bits[d] else 1 - frac[d] for d in range(D))
                cell = [(lower[d] + bits[d]) & M32 for d in range(D)]
                acc += weight * table[oracle_index(cell, cfg["type"], lv["res"], lv["size"], hash_type)]
            out[i, cols] = acc
    return out


def small_config(grid_type: str, D: int, F: int, interpolation: str) -> dict:
    """Non-integer per-level scale; Hash tables sized so coarse levels are dense and fine levels hashed."""
    return {"otype": "Grid", "type": grid_type, "n_levels": 4, "n_features_per_level": F,
            "log2_hashmap_size": {1: 3, 2: 6, 3: 8, 4: 10, 7: 9}[D], "base_resolution": 3,
            "per_level_scale": 1.7, "interpolation": interpolation}


def sample_points(D: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random points in [-0.01, 1.01]^D plus exact 0 and 1 and far-outside rows (negative cells wrap)."""
    x = torch.rand(n, D, generator=gen) * 1.02 - 0.01
    special = torch.tensor([[0.0] * D, [1.0] * D, [-0.3] * D, [1.3] * D,
                            [0.0, 1.0] * (D // 2) + [0.5] * (D % 2)])
    return torch.cat([special, x]).float()


# ------------------------------------------------------------------------------------- parity vs oracle

DF = [(1, 8), (2, 4), (3, 2), (4, 1), (1, 1), (2, 2), (3, 4), (4, 8)]


@pytest.mark.parametrize("interpolation", ["Linear", "Nearest", "Smoothstep"])
@pytest.mark.parametrize("grid_type", ["Hash", "Dense", "Tiled"])
@pytest.mark.parametrize("D,F", DF)
def test_matches_oracle_float32(grid_type, D, F, interpolation):
    cfg = small_config(grid_type, D, F, interpolation)
    spec = grid_spec(D, cfg)
    levels, n_params = oracle_levels(D, cfg)
    assert spec.n_params == n_params
    if grid_type == "Hash":  # the config really mixes dense and hashed levels
        hashed = [lv["size"] < lv["res"] ** D for lv in levels]
        assert any(hashed) and not all(hashed)
    gen = torch.Generator().manual_seed(D * 100 + F)
    x = sample_points(D, 12, gen)
    params = torch.rand(n_params, generator=gen) * 2 - 1
    got = grid_encode_torch(x, params, spec)
    assert got.shape == (x.shape[0], 4 * F) and got.dtype == torch.float32
    want = oracle_encode(x.numpy(), params.numpy(), cfg, float32_positions=True)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6 * 2**D, rtol=0)


@pytest.mark.parametrize("grid_type", ["Hash", "Dense", "Tiled"])
def test_matches_oracle_float64(grid_type):
    cfg = small_config(grid_type, 3, 2, "Smoothstep")
    gen = torch.Generator().manual_seed(7)
    x = sample_points(3, 16, gen).double()
    params = torch.rand(grid_spec(3, cfg).n_params, generator=gen, dtype=torch.float64) * 2 - 1
    got = grid_encode_torch(x, params, grid_spec(3, cfg))
    assert got.dtype == torch.float64
    want = oracle_encode(x.numpy(), params.numpy(), cfg, float32_positions=False)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hash_type", ["Prime", "ReversedPrime"])
def test_other_prime_hashes(hash_type):
    cfg = dict(small_config("Hash", 3, 2, "Linear"), hash=hash_type)
    gen = torch.Generator().manual_seed(11)
    x = sample_points(3, 8, gen)
    params = torch.rand(grid_spec(3, cfg).n_params, generator=gen) * 2 - 1
    want = oracle_encode(x.numpy(), params.numpy(), cfg, float32_positions=True)
    np.testing.assert_allclose(grid_encode_torch(x, params, grid_spec(3, cfg)).numpy(), want, atol=2e-5)


def test_seven_dims_hash():
    cfg = dict(small_config("Hash", 7, 2, "Linear"), n_levels=2, base_resolution=2)
    gen = torch.Generator().manual_seed(3)
    x = sample_points(7, 4, gen)
    params = torch.rand(grid_spec(7, cfg).n_params, generator=gen) * 2 - 1
    want = oracle_encode(x.numpy(), params.numpy(), cfg, float32_positions=True)
    np.testing.assert_allclose(grid_encode_torch(x, params, grid_spec(7, cfg)).numpy(), want, atol=1e-4)


def test_negative_cells_wrap_like_uint32():
    # x = -0.3 at scale 2 -> pos = -0.1 -> cell -1 -> 0xFFFFFFFF, its upper neighbour wraps to 0.
    cfg = {"otype": "DenseGrid", "n_levels": 1, "n_features_per_level": 1, "base_resolution": 3,
           "per_level_scale": 2.0, "interpolation": "Nearest"}
    spec = grid_spec(2, cfg)  # res 3, 9 entries -> 16
    params = torch.arange(spec.n_params, dtype=torch.float32)
    out = grid_encode_torch(torch.tensor([[-0.3, 0.0]]), params, spec)
    # Dense index (0xFFFFFFFF * 1 + 0 * 3) mod 2^32 = 4294967295; 4294967295 % 16 = 15
    assert out.item() == 15.0


def test_position_is_one_fmaf_rounding():
    """Find x with scale*x just below -0.5 where float32 rounding of the product alone gives exactly -0.5:
    fmaf keeps pos < 0 (cell -1), two roundings give pos = 0 (cell 0). Nearest must follow fmaf."""
    cfg = small_config("Dense", 1, 1, "Nearest")
    spec = grid_spec(1, cfg)
    params = torch.arange(spec.n_params, dtype=torch.float32)
    found = 0
    for level, scale in enumerate(spec.scales):
        s = np.float32(scale)
        x = np.float32(-0.5 / scale)
        for _ in range(64):
            x = np.nextafter(x, np.float32(-1))
            exact = Fraction(float(s)) * Fraction(float(x))
            if exact < Fraction(-1, 2) and np.float32(s * x) == np.float32(-0.5):
                xt = torch.tensor([[float(x)]])
                got = grid_encode_torch(xt, params, spec)
                want = oracle_encode(xt.numpy(), params.numpy(), cfg, float32_positions=True)
                np.testing.assert_array_equal(got.numpy(), want)
                two_roundings = np.float32(np.float32(s * x) + np.float32(0.5))
                cell0 = params[spec.offsets[level]].item()  # the entry two roundings would pick
                assert math.floor(two_roundings) == 0 and got[0, level].item() != cell0
                found += 1
                break
    assert found > 0


# ------------------------------------------------------------------------------------ parameter counts


def test_param_count_default_hashgrid_3d_by_hand():
    # n_levels=16, F=2, T=2^19=524288, base 16, per_level_scale 2 -> scale_l = 16*2^l - 1, res_l = 16*2^l.
    # res^3: l0 16^3 = 4096, l1 32^3 = 32768, l2 64^3 = 262144 (all <= T and multiples of 8);
    # l3..l15: 128^3 = 2097152 and up > T -> T each, 13 levels.
    entries = 4096 + 32768 + 262144 + 13 * 524288
    assert entries == 7114752
    spec = grid_spec(3, {"otype": "HashGrid"})
    assert spec.n_params == entries * 2 == 14229504
    assert spec.offsets[:4] == (0, 4096, 4096 + 32768, 4096 + 32768 + 262144)
    assert HashGrid(3, {"n_levels": 4}).n_params == (4096 + 32768 + 262144 + 524288) * 2


def test_param_count_dense_and_tiled_by_hand():
    # DenseGrid 2D, n_levels=8, F=8, base 2: default per_level_scale = exp(log(256/2)/7) = 2 in float32,
    # so res = 2, 4, ..., 256 and res^2 = 4 (-> 8, next multiple of 8), 16, 64, 256, 1024, 4096, 16384, 65536.
    # tiny-cuda-nn printed 699072 for this config (github.com/NVlabs/tiny-cuda-nn/issues/468).
    entries = 8 + 16 + 64 + 256 + 1024 + 4096 + 16384 + 65536
    assert grid_spec(2, {"otype": "DenseGrid", "n_levels": 8, "n_features_per_level": 8,
                         "base_resolution": 2}).n_params == entries * 8 == 699072
    # Dense 2D, one level, base 1: scale 0, res 1, 1 entry -> 8; times F=8 -> 64 (same issue, tcnn printed
    # 64).
    assert grid_spec(2, {"otype": "Grid", "type": "Dense", "n_levels": 1, "n_features_per_level": 8,
                         "base_resolution": 1}).n_params == 8 * 8
    # TiledGrid 3D, base 4, scale 2, 3 levels, F=2: res 4, 8, 16 -> 64, 512, 4096 entries, each capped at
    # base^3 = 64 -> 3 * 64 entries, times F=2.
    assert grid_spec(3, {"otype": "TiledGrid", "n_levels": 3, "base_resolution": 4}).n_params == 3 * 64 * 2
    # Hash 2D, T=2^8=256, base 16, scale 2, F=4: res 16 (256, fits exactly), 32 (1024 -> 256), 64 (-> 256).
    assert grid_spec(2, {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 4,
                         "log2_hashmap_size": 8}).n_params == 3 * 256 * 4


def test_param_count_reported_by_tiny_cuda_nn():
    # nerfstudio's hash grid (github.com/nerfstudio-project/nerfstudio/issues/2241): tiny-cuda-nn gave
    # 12196240 params for 16 levels, F=2, T=2^19, base 16, per_level_scale = exp((ln 2048 - ln 16) / 15).
    cfg = {"otype": "HashGrid", "per_level_scale": math.exp((math.log(2048) - math.log(16)) / 15)}
    assert grid_spec(3, cfg).n_params == 12196240


# ------------------------------------------------------------------------------------------- gradients


def interior_points(spec, n: int, seed: int) -> torch.Tensor:
    """Points whose fractional cell position stays >= 0.02 from a cell face at every level (x-grads exist)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n:
        x = torch.rand(spec.n_dims, generator=gen, dtype=torch.float64)
        fracs = [(s * x + 0.5) % 1 for s in spec.scales]
        if all(((f > 0.02) & (f < 0.98)).all() for f in fracs):
            rows.append(x)
    return torch.stack(rows)


GRAD_CONFIGS = [
    ("Hash", 2, "Linear"), ("Hash", 3, "Smoothstep"), ("Dense", 2, "Smoothstep"), ("Tiled", 3, "Linear"),
    ("Hash", 2, "Nearest"),
]


@pytest.mark.parametrize("grid_type,D,interpolation", GRAD_CONFIGS)
def test_gradcheck_params_and_x(grid_type, D, interpolation):
    cfg = dict(small_config(grid_type, D, 2, interpolation), n_levels=3, log2_hashmap_size={2: 4, 3: 5}[D])
    spec = grid_spec(D, cfg)
    x = interior_points(spec, 4, seed=D).requires_grad_(True)
    params = (torch.rand(spec.n_params, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, p: grid_encode_torch(x, p, spec), (x, params))


@pytest.mark.parametrize("grid_type,D,interpolation", GRAD_CONFIGS[:4])
def test_gradgradcheck_eikonal_path(grid_type, D, interpolation):
    """Second derivatives: d(dy/dx)/dparams (eikonal loss -> table) and d(dy/dx)/dx (non-zero for
    Smoothstep)."""
    cfg = dict(small_config(grid_type, D, 2, interpolation), n_levels=2, log2_hashmap_size={2: 4, 3: 5}[D])
    spec = grid_spec(D, cfg)
    assert grid_type != "Hash" or spec.hashmap_sizes[1] < spec.resolutions[1] ** D  # level 1 is hashed
    x = interior_points(spec, 3, seed=10 + D).requires_grad_(True)
    params = (torch.rand(spec.n_params, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x, p: grid_encode_torch(x, p, spec), (x, params))


def test_eikonal_loss_reaches_params_and_smoothstep_hessian():
    spec = grid_spec(3, dict(small_config("Hash", 3, 2, "Smoothstep"), n_levels=2))
    x = interior_points(spec, 5, seed=1).requires_grad_(True)
    params = (torch.rand(spec.n_params, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    y = grid_encode_torch(x, params, spec)[:, 0]
    (dy_dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    loss = ((dy_dx.norm(dim=1) - 1) ** 2).sum()
    g_params, g_x = torch.autograd.grad(loss, (params, x))
    assert g_params.abs().sum() > 0 and g_x.abs().sum() > 0


def test_nearest_has_zero_input_gradient():
    spec = grid_spec(2, small_config("Hash", 2, 2, "Nearest"))
    x = interior_points(spec, 3, seed=0).requires_grad_(True)
    params = torch.rand(spec.n_params, dtype=torch.float64)
    (g,) = torch.autograd.grad(grid_encode_torch(x, params, spec).sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


# ------------------------------------------------------------------------------------ precision (dtype)


def within_half_fp16_ulp(out16: torch.Tensor, exact: np.ndarray) -> np.ndarray:
    """|out - exact| <= half an fp16 ulp (+ float32 summation slack): out is exact rounded once to fp16."""
    out = out16.detach().numpy()
    half_ulp = np.spacing(np.abs(out)).astype(np.float64) / 2
    return np.abs(out.astype(np.float64) - exact) <= half_ulp + 1e-6 * np.abs(exact) + 1e-12


def test_dtype_float16_rounds_tables_and_output_on_the_torch_backend():
    """dtype=float16 (tcnn's precision): fp16 tables, float32 interpolation, one fp16 rounding of the output;
    the float32 params get float32 gradients (the cast passes them as the identity), second order too."""
    cfg = dict(small_config("Hash", 3, 2, "Smoothstep"), n_levels=3)
    enc = Grid(3, cfg, backend="torch", dtype=torch.float16)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # values of order 1 (as after training): fp16 rounding of the tables shows
        enc.params.copy_(torch.rand(enc.n_params, generator=gen) * 2 - 1)
    x = interior_points(enc.spec, 40, seed=3).float().requires_grad_(True)
    out = enc(x)
    assert out.dtype == torch.float16 and enc.params.dtype == torch.float32
    p16 = enc.params.detach().numpy().astype(np.float16).astype(np.float64)
    assert within_half_fp16_ulp(out, oracle_encode(x.detach().numpy(), p16, cfg, True)).all()
    unrounded = oracle_encode(x.detach().numpy(), enc.params.detach().double().numpy(), cfg, True)
    assert not within_half_fp16_ulp(out, unrounded).all()  # the check above sees the table rounding

    # gradients vs the float64 reference on the fp16 tables (dy arrives as fp16, like the output)
    dy = torch.randn(out.shape, generator=gen).half()
    v = torch.randn(x.shape, generator=gen)
    (dx,) = torch.autograd.grad(out, x, dy, create_graph=True)
    (dp,) = torch.autograd.grad(out, enc.params, dy, retain_graph=True)
    (ddp,) = torch.autograd.grad((dx * v).sum(), enc.params)
    x64 = x.detach().double().requires_grad_(True)
    p64 = torch.from_numpy(p16).requires_grad_(True)
    out64 = grid_encode_torch(x64, p64, enc.spec)
    dx64, dp64 = torch.autograd.grad(out64, (x64, p64), dy.double(), create_graph=True)
    (ddp64,) = torch.autograd.grad((dx64 * v.double()).sum(), p64)
    assert dp.dtype == ddp.dtype == torch.float32
    for a, b in ((dp, dp64), (dx, dx64), (ddp, ddp64)):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-6 * b.abs().max().item())


def test_dtype_default_and_float32_are_the_float32_reference():
    cfg = small_config("Dense", 2, 4, "Linear")
    x = torch.rand(20, 2)
    default, fp32 = Grid(2, cfg, backend="torch"), Grid(2, cfg, backend="torch", dtype=torch.float32)
    assert default.dtype is None and torch.equal(default(x), fp32(x))
    assert torch.equal(default(x), grid_encode_torch(x, default.params, default.spec))
    assert default.double()(x.double()).dtype == torch.float64  # None: params' dtype
    with pytest.raises(ConfigError, match=r"HashGrid.dtype: must be None, torch.float32 or torch.float16"):
        HashGrid(2, cfg, dtype=torch.bfloat16)


def test_gradient_dtype_is_validated_and_the_torch_backend_sums_in_float32():
    """gradient_dtype=float16 is a kernel speed option (tcnn's half2 sums); the torch backend's gradients are
    the float32 ones, bit for bit, whatever it says."""
    cfg = small_config("Hash", 3, 2, "Linear")
    x = torch.rand(50, 3)
    ref = HashGrid(3, cfg, backend="torch", dtype=torch.float16)
    enc = HashGrid(3, cfg, backend="torch", dtype=torch.float16, gradient_dtype=torch.float16)
    assert enc.gradient_dtype == torch.float16 and ref.gradient_dtype is None
    assert "gradient_dtype=torch.float16" in repr(enc) and "gradient_dtype" not in repr(ref)
    dy = torch.randn(50, enc.n_output_dims).half()
    (a,) = torch.autograd.grad(enc(x), enc.params, dy)
    (b,) = torch.autograd.grad(ref(x), ref.params, dy)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    with pytest.raises(ConfigError, match=r"DenseGrid.gradient_dtype: must be None, torch.float32 or "
                                          r"torch.float16, got torch.bfloat16"):
        DenseGrid(2, {}, gradient_dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------- Encoding API


def test_encoding_api_and_init():
    enc = HashGrid(3, {"n_levels": 4, "log2_hashmap_size": 12}, backend="torch", seed=5)
    assert enc.n_output_dims == 8 and enc.n_params == enc.spec.n_params  # known before the first call
    p = enc.params.detach()
    assert p.dtype == torch.float32 and p.abs().max() <= 1e-4 and p.std() > 3e-5  # uniform(-1e-4, 1e-4)
    assert torch.equal(HashGrid(3, {"n_levels": 4, "log2_hashmap_size": 12}, seed=5).params, enc.params)
    assert not torch.equal(HashGrid(3, {"n_levels": 4, "log2_hashmap_size": 12}, seed=6).params, enc.params)
    x = torch.rand(10, 3, dtype=torch.float64)
    y = enc(x)
    assert y.shape == (10, 8) and y.dtype == torch.float32
    torch.testing.assert_close(y, grid_encode_torch(x.float(), enc.params, enc.spec))
    y.sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        enc(torch.rand(10, 2))


def test_types_defaults_and_config_dict():
    assert Grid(2, {}).spec.grid_type == "Hash"
    assert DenseGrid(2, {"n_levels": 2}).spec.grid_type == "Dense"
    assert TiledGrid(2, {"n_levels": 2}).spec.grid_type == "Tiled"
    assert HashGrid(2, {"type": "dense", "n_levels": 2}).spec.grid_type == "Dense"  # tcnn reads type for all
    dense = DenseGrid(2, {"n_levels": 8, "base_resolution": 2})
    assert dense.config_dict()["per_level_scale"] == 2.0 and dense.spec.resolutions[-1] == 256
    d = Grid(2, {"type": "Tile", "interpolation": "smoothstep", "n_levels": 2}).config_dict()
    assert (d["otype"], d["type"], d["interpolation"], d["per_level_scale"]) == ("Grid", "Tiled",
                                                                                 "Smoothstep", 2.0)
    assert HashGrid(2, {"n_features": 8, "n_features_per_level": 4}).spec.n_levels == 2  # tcnn's n_features


@pytest.mark.parametrize("config,message", [
    ({"n_features_per_level": 3}, "n_features_per_level: must be 1, 2, 4 or 8"),
    ({"log2_hashmap_size": 0}, "log2_hashmap_size: must be 1..31"),
    ({"log2_hashmap_size": 32}, "log2_hashmap_size: must be 1..31"),
    ({"per_level_scale": 0.0}, "per_level_scale: must be a positive number"),
    ({"n_levels": 129}, "n_levels: must be 1..128"),
    ({"base_resolution": 0}, "base_resolution: must be >= 1"),
    ({"interpolation": "Linaer"}, "did you mean Linear"),
    ({"type": "Hsh"}, "did you mean Hash"),
    ({"hash": "Rng"}, "hash: 'Rng' is not supported"),
    ({"stochastic_interpolation": True}, "stochastic_interpolation: true is not supported"),
    ({"n_level": 4}, "n_level is not a HashGridConfig key (did you mean n_levels?)"),
    ({"n_features": 8, "n_levels": 4}, "n_features or n_levels, not both"),
])
def test_config_errors_name_the_key(config, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        HashGrid(3, config)
    assert "\n" not in str(err.value)


def test_other_errors_and_lenient_mode():
    with pytest.raises(ConfigError, match="n_input_dims must be 1..7"):
        HashGrid(8, {})
    with pytest.raises(ConfigError, match="grid_encode: backend 'triton' cannot run here: log2_hashmap_size > 24"):
        HashGrid(2, {"log2_hashmap_size": 25}, backend="triton")  # raised before the table is allocated
    enc = HashGrid(2, {"n_levels": 2, "n_levle": 3}, strict=False)
    assert enc.unknown_keys == ("n_levle",) and enc.spec.n_levels == 2


def test_create_encoding_builds_grids():
    from ngraphics.encodings import create_encoding

    enc = create_encoding(3, {"otype": "hashgrid", "n_levels": 2, "log2_hashmap_size": 10})
    assert isinstance(enc, HashGrid) and enc.n_output_dims == 4
