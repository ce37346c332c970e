"""Simplex encoding: torch path vs a float64 per-point Python oracle, plus properties that hold however the
paper is read (barycentric weights, lattice vertices, continuity), gradients and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ngraphics.encodings import create_encoding
from ngraphics.encodings.simplex import (
    Simplex,
    simplex_encode_torch,
    simplex_spec,
    simplex_vertices_and_weights,
)
from ngraphics.errors import ConfigError

PRIMES = [1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737]

TINY = {
    "n_levels": 3,
    "n_features_per_level": 2,
    "log2_hashmap_size": 6,
    "base_resolution": 2,
    "per_level_scale": 1.7,
}


def tiny(d: int) -> dict:
    """TINY with a table just big enough for a dense level 0, so levels 1-2 are hashed (both index paths)."""
    res0 = math.floor(1.5 * math.sqrt(d + 1)) + 2  # level 0 has scale 1
    return {**TINY, "log2_hashmap_size": math.ceil(math.log2(res0**d))}


# ---------------------------------------------------------------- oracle: plain Python, one point at a time


def oracle_levels(d: int, cfg: dict) -> list[tuple[float, int, int, bool]]:
    """(scale, vertices per axis R, table rows, hashed) per level, from tcnn's float32 scale formula."""
    f32 = np.float32
    out = []
    for level in range(cfg["n_levels"]):
        log2_scale = f32(np.log2(f32(cfg["per_level_scale"])))
        scale = float(f32(np.exp2(f32(level) * log2_scale)) * f32(cfg["base_resolution"]) - f32(1.0))
        res = math.floor((scale + 0.5) * math.sqrt(d + 1)) + 2
        rows = min((res**d + 7) // 8 * 8, 2 ** cfg["log2_hashmap_size"])
        out.append((scale, res, rows, res**d > rows))
    return out


def oracle_index(vertex, res: int, rows: int, hashed: bool) -> int:
    coords = [c % 2**32 for c in vertex]  # uint32 wrap of negative coordinates
    if hashed:
        index = 0
        for c, prime in zip(coords, PRIMES):
            index ^= (c * prime) % 2**32
    else:
        index = sum(c * res**i for i, c in enumerate(coords)) % 2**32
    return index % rows


def oracle_simplex(q):
    """Kuhn simplex of skewed point q: vertices (walk the fractions in descending order) and weights."""
    base = [math.floor(c) for c in q]
    frac = [c - b for c, b in zip(q, base)]
    order = sorted(range(len(q)), key=lambda i: -frac[i])  # stable: ties keep the lower dim first
    vertex, vertices = list(base), [tuple(base)]
    for i in order:
        vertex[i] += 1
        vertices.append(tuple(vertex))
    t = [frac[i] for i in order]
    weights = [1 - t[0]] + [t[k - 1] - t[k] for k in range(1, len(t))] + [t[-1]]
    return vertices, weights


def oracle_encode(x: np.ndarray, table: np.ndarray, cfg: dict) -> np.ndarray:
    """x: (N, D) float64; table: (rows, F) float64 -> (N, L * F)."""
    n, d = x.shape
    skew = (math.sqrt(d + 1) - 1) / d
    out = np.zeros((n, cfg["n_levels"] * cfg["n_features_per_level"]))
    for i in range(n):
        offset, columns = 0, []
        for scale, res, rows, hashed in oracle_levels(d, cfg):
            p = [float(c) * scale + 0.5 for c in x[i]]
            total = sum(p)
            vertices, weights = oracle_simplex([c + skew * total for c in p])
            acc = np.zeros(table.shape[1])
            for w, v in zip(weights, vertices):
                acc += w * table[offset + oracle_index(v, res, rows, hashed)]
            columns.append(acc)
            offset += rows
        out[i] = np.concatenate(columns)
    return out


def test_oracle_simplex_of_a_known_point():
    # q = (2.7, 5.2, 3.5): base (2, 5, 3), order x, z, y -> vertices walk x then z then y.
    vertices, weights = oracle_simplex([2.7, 5.2, 3.5])
    assert vertices == [(2, 5, 3), (3, 5, 3), (3, 5, 4), (3, 6, 4)]
    assert np.allclose(weights, [0.3, 0.2, 0.3, 0.2])


def points(d: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random points plus 0, 1, the corners and points slightly outside [0, 1]^d. (n + 4, d) float64."""
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    special = torch.tensor([[0.0] * d, [1.0] * d, [-1e-3] * d, [1 + 1e-3] * d], dtype=torch.float64)
    return torch.cat([x, special])


# ---------------------------------------------------------------- spec and forward


@pytest.mark.parametrize("d", [2, 3])
def test_spec_matches_oracle_layout(d):
    spec = simplex_spec(d, tiny(d))
    levels = oracle_levels(d, tiny(d))
    assert spec.scales == tuple(lv[0] for lv in levels)
    assert spec.resolutions == tuple(lv[1] for lv in levels)
    assert spec.table_sizes == tuple(lv[2] for lv in levels)
    assert spec.hashed == tuple(lv[3] for lv in levels)
    assert spec.offsets == tuple(np.cumsum([0] + [lv[2] for lv in levels]).tolist())
    assert spec.n_params == spec.offsets[-1] * 2
    assert spec.hashed == (False, True, True)  # both index paths
    assert hash(spec) == hash(simplex_spec(d, tiny(d)))


def test_default_spec_follows_hashgrid_defaults():
    spec = simplex_spec(3, {})
    assert (spec.n_levels, spec.n_features) == (16, 2)
    assert spec.scales[0] == 15.0 and spec.scales[1] == 31.0  # 16 * 2^l - 1
    assert max(spec.table_sizes) == 2**19
    assert simplex_spec(3, {"otype": "Simplex", "n_dims_to_encode": 3}) == spec


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_forward_matches_oracle_float64(d):
    gen = torch.Generator().manual_seed(d)
    spec = simplex_spec(d, tiny(d))
    assert spec.hashed == (False, True, True)
    params = torch.rand(spec.n_params, generator=gen, dtype=torch.float64) * 2 - 1
    x = points(d, 30, gen)
    got = simplex_encode_torch(x, params, spec)
    want = oracle_encode(x.numpy(), params.view(-1, 2).numpy(), tiny(d))
    assert got.shape == (x.shape[0], 6) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_float32_close_to_float64_oracle():
    cfg = {
        "n_levels": 6,
        "n_features_per_level": 4,
        "log2_hashmap_size": 12,
        "base_resolution": 4,
        "per_level_scale": 1.5,
    }
    gen = torch.Generator().manual_seed(7)
    spec = simplex_spec(3, cfg)
    params = torch.rand(spec.n_params, generator=gen) * 2 - 1
    x = points(3, 40, gen).float()
    got = simplex_encode_torch(x, params, spec)
    want = oracle_encode(x.double().numpy(), params.double().view(-1, 4).numpy(), cfg)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
def test_barycentric_weights(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.rand(300, d, generator=gen, dtype=torch.float64) * 40 - 8
    vertices, weights = simplex_vertices_and_weights(x)
    assert (
        vertices.shape == (300, d + 1, d) and vertices.dtype == torch.int64 and weights.shape == (300, d + 1)
    )
    assert (weights >= -1e-12).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(300, dtype=torch.float64))
    skewed = x + (math.sqrt(d + 1) - 1) / d * x.sum(1, keepdim=True)
    torch.testing.assert_close(
        (weights.unsqueeze(-1) * vertices.double()).sum(1), skewed
    )  # reproduces the point
    assert torch.equal(vertices[:, 0], torch.floor(skewed).long())
    steps = vertices[:, 1:] - vertices[:, :-1]  # each step adds one unit vector, each dim once
    assert torch.equal(steps.sum(-1), torch.ones(300, d, dtype=torch.int64))
    assert torch.equal(steps.sum(1), torch.ones(300, d, dtype=torch.int64))


def single_level(d: int, log2_size: int = 6) -> tuple[dict, object, torch.Tensor]:
    cfg = {"n_levels": 1, "n_features_per_level": 2, "log2_hashmap_size": log2_size, "base_resolution": 5}
    spec = simplex_spec(d, cfg)
    params = (
        torch.rand(spec.n_params, generator=torch.Generator().manual_seed(d), dtype=torch.float64) * 2 - 1
    )
    return cfg, spec, params


def lattice_to_x(q: torch.Tensor, scale: float) -> torch.Tensor:
    """Skewed lattice coordinates q (N, D) -> inputs x: unskew with G_D, then undo x * scale + 0.5."""
    d = q.shape[1]
    unskew = (1 - 1 / math.sqrt(d + 1)) / d
    return (q - unskew * q.sum(1, keepdim=True) - 0.5) / scale


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("log2_size", [6, 16])  # hashed and dense
def test_output_at_lattice_vertex_is_its_feature(d, log2_size):
    _, spec, params = single_level(d, log2_size)
    assert spec.hashed[0] == (log2_size == 6)
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(2, 6, (20, d), generator=gen).double()
    got = simplex_encode_torch(lattice_to_x(q, spec.scales[0]), params, spec)
    table = params.view(-1, 2)
    want = torch.stack(
        [
            table[oracle_index([int(c) for c in v], spec.resolutions[0], spec.table_sizes[0], spec.hashed[0])]
            for v in q
        ]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_continuous_across_simplex_and_cell_faces(d):
    _, spec, params = single_level(d)
    gen = torch.Generator().manual_seed(2)
    eps = 1e-7
    for trial in range(12):
        q = torch.randint(2, 5, (d,), generator=gen).double() + torch.rand(
            d, generator=gen, dtype=torch.float64
        )
        i, j = torch.randperm(d, generator=gen)[:2].tolist()
        step = torch.zeros(d, dtype=torch.float64)
        if trial % 2:  # simplex face inside a cell: fractional coords i and j swap order
            q[i] = math.floor(q[i]) + (q[j] - math.floor(q[j]))
            step[i], step[j] = 1.0, -1.0
        else:  # cell face: coordinate i crosses an integer
            q[i] = math.floor(q[i])
            step[i] = 1.0
        both = torch.stack([q - eps * step, q + eps * step])
        x = lattice_to_x(both, spec.scales[0])
        vertices, _ = simplex_vertices_and_weights(x * spec.scales[0] + 0.5)
        assert not torch.equal(vertices[0], vertices[1])  # the two points really lie in different simplices
        out = simplex_encode_torch(x, params, spec)
        assert (out[0] - out[1]).abs().max() < 1e-5


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("d", [2, 3])
def test_gradcheck_params_and_x(d):
    cfg = {"n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 2 * d + 1, "base_resolution": 2}
    spec = simplex_spec(d, cfg)
    assert spec.hashed == (False, True)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(5, d, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    params = (torch.rand(spec.n_params, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()

    def fn(x, p):
        return simplex_encode_torch(x, p, spec)

    assert torch.autograd.gradcheck(fn, (x, params))
    assert torch.autograd.gradgradcheck(fn, (x, params))
    grad_x = torch.autograd.grad(fn(x, params).square().sum(), x, create_graph=True)[0]
    assert torch.autograd.grad(grad_x.sum(), params)[0].abs().sum() > 0  # d(grad_x)/d(params) is not zero


def test_module_backward_touches_only_used_rows():
    enc = Simplex(2, dict(TINY), backend="torch")
    x = torch.rand(3, 2)
    enc(x).sum().backward()
    used = (enc.params.grad.view(-1, 2) != 0).any(1).sum().item()
    assert 0 < used <= 3 * 3 * 3  # at most N * L * (D + 1) rows


# ---------------------------------------------------------------- precision (dtype)


def test_dtype_float16_rounds_tables_and_output_on_the_torch_backend():
    """dtype=float16: output = exact encoding of the fp16-rounded tables, rounded once to fp16; float32
    params get the float32 gradient of the fp16-table encoding."""
    cfg = tiny(3)
    enc = Simplex(3, cfg, backend="torch", dtype=torch.float16)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        enc.params.copy_(torch.rand(enc.n_params, generator=gen) * 2 - 1)
    x = points(3, 40, gen)  # float64: the positions are exact, only the table and output precision differ
    out = enc(x)
    assert out.dtype == torch.float16 and enc.params.dtype == torch.float32
    table16 = enc.params.detach().numpy().astype(np.float16).astype(np.float64).reshape(-1, 2)
    exact = oracle_encode(x.numpy(), table16, cfg)
    out_np = out.detach().numpy()
    half_ulp = np.spacing(np.abs(out_np)).astype(np.float64) / 2
    assert (np.abs(out_np.astype(np.float64) - exact) <= half_ulp + 1e-12).all()
    unrounded = oracle_encode(x.numpy(), enc.params.detach().double().numpy().reshape(-1, 2), cfg)
    assert not (np.abs(out_np.astype(np.float64) - unrounded) <= half_ulp + 1e-12).all()  # tables were fp16
    dy = torch.randn(out.shape, generator=gen).half()
    (dp,) = torch.autograd.grad(out, enc.params, dy)
    p64 = torch.from_numpy(table16.reshape(-1)).requires_grad_(True)
    (dp64,) = torch.autograd.grad(simplex_encode_torch(x, p64, enc.spec), p64, dy.double())
    assert dp.dtype == torch.float32
    torch.testing.assert_close(dp.double(), dp64, rtol=0, atol=1e-6 * dp64.abs().max().item())
    default = Simplex(3, cfg, backend="torch")
    assert default.dtype is None and default(x).dtype == torch.float64  # None: the reference's promotion
    with pytest.raises(ConfigError, match="Simplex.dtype"):
        Simplex(3, cfg, dtype=torch.float64)


def test_gradient_dtype_is_validated_and_the_torch_backend_sums_in_float32():
    """gradient_dtype=float16 (tcnn's half2 sums in the kernels) leaves the torch backend's float32 sums."""
    cfg = tiny(3)
    x = points(3, 40, torch.Generator().manual_seed(2))
    enc = Simplex(3, cfg, backend="torch", gradient_dtype=torch.float16)
    ref = Simplex(3, cfg, backend="torch")
    assert enc.gradient_dtype == torch.float16
    (a,) = torch.autograd.grad(enc(x).sum(), enc.params)
    (b,) = torch.autograd.grad(ref(x).sum(), ref.params)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="Simplex.gradient_dtype: must be None, torch.float32 or"):
        Simplex(3, cfg, gradient_dtype=torch.int8)


# ---------------------------------------------------------------- module, config


def test_module_init_and_forward():
    enc = create_encoding(3, {"otype": "Simplex", "n_dims_to_encode": 3, **TINY}, backend="torch")
    assert isinstance(enc, Simplex) and enc.n_output_dims == 6
    assert enc.params.numel() == enc.spec.n_params == enc.n_params
    assert enc.params.abs().max() <= 1e-4 and enc.params.std() > 1e-5
    assert torch.equal(Simplex(3, TINY).params, enc.params)  # seed 1337 by default
    assert not torch.equal(Simplex(3, TINY, seed=1).params, enc.params)
    x = torch.rand(8, 3)
    torch.testing.assert_close(enc(x), simplex_encode_torch(x, enc.params, enc.spec))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        enc(torch.rand(8, 2))


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"n_levels": 0}, "n_levels"),
        ({"n_features_per_level": 3}, "n_features_per_level"),
        ({"log2_hashmap_size": 40}, "log2_hashmap_size"),
        ({"base_resolution": 0}, "base_resolution"),
        ({"per_level_scale": 0.5}, "per_level_scale"),
        ({"n_level": 4}, "n_levels"),  # unknown key, nearest suggested
        ({"n_levels": "many"}, "n_levels"),
    ],
)
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key) as err:
        Simplex(3, cfg)
    assert "\n" not in str(err.value)


def test_too_many_dims_is_a_config_error():
    with pytest.raises(ConfigError, match="n_input_dims"):
        Simplex(8, {})
