"""Frequency, TriangleWave, OneBlob, SphericalHarmonics and Composite against direct float64 formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ngraphics.encodings import create_encoding
from ngraphics.encodings.composite import Composite
from ngraphics.encodings.frequency import Frequency, TriangleWave
from ngraphics.encodings.oneblob import OneBlob
from ngraphics.encodings.simplex import Simplex
from ngraphics.encodings.spherical_harmonics import SphericalHarmonics
from ngraphics.errors import ConfigError


def inputs(d: int, n: int = 13, seed: int = 0) -> torch.Tensor:
    """Random points plus 0, 1 and slightly outside [0, 1]. (n + 4, d) float64."""
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    special = torch.tensor([[0.0] * d, [1.0] * d, [-0.01] * d, [1.01] * d], dtype=torch.float64)
    return torch.cat([x, special])


# ---------------------------------------------------------------- Frequency, TriangleWave


def test_frequency_layout_and_values():
    enc = Frequency(3, {"n_frequencies": 4})
    x = inputs(3)
    got = enc(x)
    assert enc.n_output_dims == 24 and got.shape == (x.shape[0], 24)
    for i in range(x.shape[0]):
        for d in range(3):
            for k in range(4):
                angle = 2**k * math.pi * float(x[i, d])
                assert got[i, d * 8 + 2 * k].item() == pytest.approx(math.sin(angle), abs=1e-12)
                assert got[i, d * 8 + 2 * k + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)


def test_triangle_wave_values_and_slopes():
    enc = TriangleWave(2, {"n_frequencies": 5})
    x = inputs(2).requires_grad_()
    got = enc(x)
    assert enc.n_output_dims == 10
    (grad,) = torch.autograd.grad(got[:, 2 * 5 - 1].sum(), x)  # dim 1, k = 4 only
    x, got = x.detach(), got.detach()
    for i in range(x.shape[0]):
        for d in range(2):
            for k in range(5):
                v = 2.0 ** (k - 1) * float(x[i, d]) + k / 4
                distance = abs(v - 0.5 - round(v - 0.5))  # to the nearest half-integer
                assert got[i, d * 5 + k].item() == pytest.approx(4 * distance - 1, abs=1e-12)
        v = 8.0 * float(x[i, 1]) + 1.0
        assert grad[i, 1].item() == (32.0 if math.floor(2 * v) % 2 else -32.0)  # tcnn's dy/dx
        assert grad[i, 0].item() == 0.0


# ---------------------------------------------------------------- OneBlob


def quartic_density(t: np.ndarray, n_bins: int) -> np.ndarray:
    u = t * n_bins
    return np.where(np.abs(u) < 1, n_bins * 15 / 16 * (1 - u * u) ** 2, 0.0)


@pytest.mark.parametrize("n_bins", [4, 16])
def test_one_blob_is_the_wrapped_quartic_mass_per_bin(n_bins):
    enc = OneBlob(2, {"n_bins": n_bins})
    x = inputs(2)
    got = enc(x).numpy()
    assert got.shape == (x.shape[0], 2 * n_bins)
    nodes, w = np.polynomial.legendre.leggauss(12)  # per piece; the kernel is polynomial between its kinks
    for i in range(x.shape[0]):
        for d in range(2):
            c = float(x[i, d])
            for k in range(n_bins):
                lo, hi = k / n_bins, (k + 1) / n_bins
                kinks = sorted(
                    {lo, hi, *(min(max(c + s + r / n_bins, lo), hi) for s in (-1, 0, 1) for r in (-1, 0, 1))}
                )
                mass = 0.0
                for a, b in itertools.pairwise(kinks):
                    t = (a + b) / 2 + (b - a) / 2 * nodes
                    density = sum(quartic_density(t - c - s, n_bins) for s in (-1, 0, 1))
                    mass += (b - a) / 2 * float(w @ density)
                assert got[i, d * n_bins + k] == pytest.approx(mass, abs=1e-12)
    np.testing.assert_allclose(got.reshape(-1, 2, n_bins).sum(-1), 1.0, atol=1e-12)
    assert (got >= -1e-15).all()


def test_one_blob_gradcheck():
    x = (torch.rand(4, 2, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(OneBlob(2, {"n_bins": 8}), (x,))


# ---------------------------------------------------------------- SphericalHarmonics


def complex_sh(l: int, m: int, theta: float, phi: float) -> complex:
    """Y_l^m with the Condon-Shortley phase (scipy's convention), m >= 0, via the Legendre recurrences."""
    c, s = math.cos(theta), math.sin(theta)
    p_mm = 1.0
    for i in range(1, m + 1):  # P_m^m = (-1)^m (2m-1)!! sin^m
        p_mm *= -(2 * i - 1) * s
    p_prev, p = p_mm, c * (2 * m + 1) * p_mm  # P_m^m, P_{m+1}^m
    if l == m:
        p = p_mm
    for ll in range(m + 2, l + 1):
        p_prev, p = p, ((2 * ll - 1) * c * p - (ll + m - 1) * p_prev) / (ll - m)
    norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
    return norm * p * complex(math.cos(m * phi), math.sin(m * phi))


def real_sh_tcnn(l: int, m: int, theta: float, phi: float) -> float:
    """tcnn's column l^2 + l + m. Band 1 of tcnn is (-c y, c z, -c x), c = sqrt(3 / 4pi); with the CS phase in
    Y_1^1 = -sqrt(3 / 8pi) sin(theta) e^{i phi} that is sqrt(2) Im Y_1^1, Y_1^0, sqrt(2) Re Y_1^1; the same
    relation holds for every band (checked by this test for l < 8)."""
    if m < 0:
        return math.sqrt(2) * complex_sh(l, -m, theta, phi).imag
    if m == 0:
        return complex_sh(l, 0, theta, phi).real
    return math.sqrt(2) * complex_sh(l, m, theta, phi).real


def unit_vectors(n: int) -> torch.Tensor:
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    axes = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]], dtype=torch.float64)
    return torch.cat([v / v.norm(dim=1, keepdim=True), axes])


@pytest.mark.parametrize("degree", [1, 2, 4, 8])
def test_spherical_harmonics_match_real_sh(degree):
    v = unit_vectors(12)
    enc = SphericalHarmonics(3, {"degree": degree})
    got = enc((v + 1) / 2)
    assert enc.n_output_dims == degree**2 and got.shape == (16, degree**2)
    for i, (vx, vy, vz) in enumerate(v.tolist()):
        theta, phi = math.acos(max(-1.0, min(1.0, vz))), math.atan2(vy, vx)
        for l in range(degree):
            for m in range(-l, l + 1):
                assert got[i, l * l + l + m].item() == pytest.approx(
                    real_sh_tcnn(l, m, theta, phi), abs=1e-12
                )


def test_complex_sh_oracle_agrees_with_scipy():
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip(f"scipy {__import__('scipy').__version__} has no sph_harm_y")
    for l, m, theta, phi in [(0, 0, 0.3, 1.0), (3, 2, 1.1, -2.0), (7, 5, 2.5, 0.4), (6, 0, 0.9, 3.0)]:
        assert complex_sh(l, m, theta, phi) == pytest.approx(
            complex(special.sph_harm_y(l, m, theta, phi)), abs=1e-12
        )


def test_spherical_harmonics_gradcheck():
    x = ((unit_vectors(3)[:3] + 1) / 2).requires_grad_()
    assert torch.autograd.gradcheck(SphericalHarmonics(3, {"degree": 8}), (x,))


# ---------------------------------------------------------------- Composite


def test_composite_nrc_example_splits_and_concatenates():
    cfg = {
        "otype": "Composite",
        "nested": [
            {"n_dims_to_encode": 3, "otype": "TriangleWave", "n_frequencies": 12},
            {"n_dims_to_encode": 5, "otype": "OneBlob", "n_bins": 4},
            {"otype": "Identity"},
        ],
    }
    enc = create_encoding(10, cfg)
    x = inputs(10)
    want = torch.cat(
        [TriangleWave(3, {"n_frequencies": 12})(x[:, :3]), OneBlob(5, {"n_bins": 4})(x[:, 3:8]), x[:, 8:]],
        dim=1,
    )
    assert enc.n_output_dims == 36 + 20 + 2 and enc.n_params == 0
    torch.testing.assert_close(enc(x), want, rtol=0, atol=0)


SIMPLEX_SMALL = {"otype": "Simplex", "n_levels": 2, "log2_hashmap_size": 6, "base_resolution": 3}


def test_composite_params_are_one_flat_vector_of_the_nested_ones():
    cfg = {
        "otype": "Composite",
        "nested": [
            {**SIMPLEX_SMALL, "n_dims_to_encode": 2},
            {"otype": "Frequency", "n_frequencies": 2, "n_dims_to_encode": 1},
            {**SIMPLEX_SMALL, "n_features_per_level": 4},  # takes the remaining 3 dims
        ],
    }
    enc = Composite(6, cfg, backend="torch")
    first, third = Simplex(2, SIMPLEX_SMALL), Simplex(3, {**SIMPLEX_SMALL, "n_features_per_level": 4})
    n1, n3 = first.n_params, third.n_params
    assert isinstance(enc.params, torch.nn.Parameter) and enc.params.numel() == n1 + n3 == enc.n_params
    assert [name for name, _ in enc.named_parameters()] == ["params"] and list(enc.state_dict()) == ["params"]

    with torch.no_grad():
        enc.params.copy_(torch.randn(n1 + n3))
        first.params.copy_(enc.params[:n1])
        third.params.copy_(enc.params[n1:])
    x = inputs(6).float()
    want = torch.cat([first(x[:, :2]), Frequency(1, {"n_frequencies": 2})(x[:, 2:3]), third(x[:, 3:])], dim=1)
    torch.testing.assert_close(enc(x), want)

    cotangent = torch.randn(x.shape[0], enc.n_output_dims)
    (enc(x) * cotangent).sum().backward()
    (want * cotangent).sum().backward()
    torch.testing.assert_close(enc.params.grad, torch.cat([first.params.grad, third.params.grad]))

    # tcnn-style state dict round trip, and a dtype change, are seen by the nested encodings
    clone = Composite(6, cfg, backend="torch")
    clone.load_state_dict(enc.state_dict())
    torch.testing.assert_close(clone(x), enc(x))
    torch.testing.assert_close(clone.double()(x.double()), enc(x).double(), rtol=1e-5, atol=1e-6)


def test_nested_composite_shares_one_vector_and_copies():
    inner = {"otype": "Composite", "n_dims_to_encode": 3, "nested": [SIMPLEX_SMALL]}
    cfg = {"otype": "Composite", "nested": [inner, {**SIMPLEX_SMALL, "n_levels": 1}]}
    enc = Composite(5, cfg, backend="torch")
    n_inner = Simplex(3, SIMPLEX_SMALL).n_params
    assert enc.n_params == n_inner + Simplex(2, {**SIMPLEX_SMALL, "n_levels": 1}).n_params
    assert [name for name, _ in enc.named_parameters()] == ["params"]
    x = inputs(5).float()
    enc(x).square().sum().backward()
    assert enc.params.grad[:n_inner].abs().sum() > 0 and enc.params.grad[n_inner:].abs().sum() > 0
    copy = __import__("copy").deepcopy(enc)  # nested params are plain detached views between forwards
    torch.testing.assert_close(copy(x), enc(x))
    with torch.no_grad():
        enc.params.add_(1.0)
    assert torch.equal(enc.nested[0].nested[0].params, enc.params[:n_inner].detach())  # same storage


def test_composite_dims_to_encode_begin_and_padding():
    cfg = {
        "otype": "Composite",
        "nested": [
            {"otype": "SphericalHarmonics", "degree": 3, "n_dims_to_encode": 3, "dims_to_encode_begin": 0},
            {**SIMPLEX_SMALL, "n_dims_to_encode": 2, "dims_to_encode_begin": 1},  # overlaps dims 1, 2
        ],
    }
    enc = Composite(3, cfg, backend="torch")
    x = inputs(3).float()
    out = enc(x)
    assert enc.n_output_dims == 1 + 9 + 4  # SH padded to the Simplex's alignment F = 2: a one in front (tcnn)
    torch.testing.assert_close(out[:, 0], torch.ones(x.shape[0]))
    torch.testing.assert_close(out[:, 1:10], SphericalHarmonics(3, {"degree": 3})(x))
    simplex = Simplex(2, SIMPLEX_SMALL)
    torch.testing.assert_close(out[:, 10:], simplex(x[:, 1:3]))


@pytest.mark.parametrize("reduction", ["Sum", "product"])  # tcnn matches the name case-insensitively
def test_composite_reductions(reduction):
    cfg = {
        "otype": "Composite",
        "reduction": reduction,
        "nested": [
            {"otype": "Frequency", "n_frequencies": 3, "n_dims_to_encode": 1},
            {"otype": "Frequency", "n_frequencies": 3},
        ],
    }
    enc = Composite(2, cfg)
    x = inputs(2)
    a, b = Frequency(1, {"n_frequencies": 3})(x[:, :1]), Frequency(1, {"n_frequencies": 3})(x[:, 1:])
    assert enc.n_output_dims == 6
    torch.testing.assert_close(enc(x), a + b if reduction == "Sum" else a * b)
    assert enc.config.reduction == reduction.capitalize()


@pytest.mark.parametrize(
    "nested, match",
    [
        ([], "nested"),
        ([{"otype": "Identity"}, {"otype": "Identity"}], "n_dims_to_encode"),
        ([{"otype": "Identity", "n_dims_to_encode": 5}], "more than the 3 input dims"),
        ([{"n_dims_to_encode": 1}], "otype"),
        ([{"otype": "Frequncy"}], "did you mean Frequency"),
        ([{"otype": "Frequency", "n_frequency": 3}], "n_frequencies"),
        ([{"otype": "Identity", "n_dims_to_encode": -1}], "non-negative"),
        ([{"otype": "Identity", "n_dims_to_encode": 2, "dims_to_encode_begin": 2}], "encodes dims 2..3"),
    ],
)
def test_composite_config_errors(nested, match):
    with pytest.raises(ConfigError, match=match) as err:
        Composite(3, {"nested": nested})
    assert "\n" not in str(err.value)


def test_composite_pads_after_other_encodings():
    nested = [
        {"otype": "Frequency", "n_frequencies": 1, "n_dims_to_encode": 1},
        {**SIMPLEX_SMALL, "n_features_per_level": 4},
    ]
    enc = Composite(3, {"nested": nested}, backend="torch")
    x = inputs(3).float()
    out = enc(x)
    assert enc.n_output_dims == 2 + 2 + 8  # Frequency's 2 columns padded with two ones up to F = 4
    torch.testing.assert_close(out[:, :2], Frequency(1, {"n_frequencies": 1})(x[:, :1]))
    torch.testing.assert_close(out[:, 2:4], torch.ones(x.shape[0], 2))


def test_composite_unknown_reduction():
    with pytest.raises(ConfigError, match="did you mean Sum"):
        Composite(1, {"nested": [{"otype": "Identity"}], "reduction": "Summ"})


def test_composite_sum_needs_equal_widths():
    nested = [{"otype": "Frequency", "n_frequencies": 2, "n_dims_to_encode": 1}, {"otype": "Identity"}]
    with pytest.raises(ConfigError, match="equal output widths"):
        Composite(2, {"nested": nested, "reduction": "Sum"})


# ---------------------------------------------------------------- config errors of the simple encodings


@pytest.mark.parametrize(
    "cls, d, cfg, key",
    [
        (Frequency, 3, {"n_frequencies": 0}, "n_frequencies"),
        (TriangleWave, 3, {"n_frequencies": -2}, "n_frequencies"),
        (OneBlob, 3, {"n_bins": 12}, "n_bins"),
        (SphericalHarmonics, 3, {"degree": 0}, "degree"),
        (SphericalHarmonics, 3, {"degree": 9}, "degree"),
        (SphericalHarmonics, 2, {}, "n_input_dims"),
        (Frequency, 3, {"n_frequences": 4}, "n_frequencies"),
    ],
)
def test_config_errors(cls, d, cfg, key):
    with pytest.raises(ConfigError, match=key) as err:
        cls(d, cfg)
    assert "\n" not in str(err.value)


def test_defaults_and_n_dims_to_encode_accepted():
    assert create_encoding(3, {"otype": "Frequency", "n_dims_to_encode": 3}).n_output_dims == 3 * 12 * 2
    assert create_encoding(2, {"otype": "TriangleWave"}).n_output_dims == 2 * 12
    assert create_encoding(2, {"otype": "OneBlob"}).n_output_dims == 2 * 16
    assert create_encoding(3, {"otype": "SphericalHarmonics"}).n_output_dims == 16


def test_round_params_is_the_fp16_copy_with_an_identity_gradient():
    from ngraphics.encodings.base import round_params

    p = torch.tensor([0.1, -1 / 3, 1e-8, 3e-8, -7e-6, 65519.0, 7e4, -1e5, 0.0], requires_grad=True)
    rounded = round_params(p, torch.float16)
    assert torch.equal(rounded, p.detach().half().float())  # bit-exact, overflow (inf) and underflow included
    rounded.backward(torch.arange(9.0))
    assert torch.equal(p.grad, torch.arange(9.0))
    assert round_params(p, None) is p and round_params(p, torch.float32) is p


def test_dtype_reaches_nested_grids_and_skips_encodings_without_tables():
    config = {"otype": "Composite", "nested": [
        {"otype": "HashGrid", "n_dims_to_encode": 2, "n_levels": 2, "log2_hashmap_size": 6},
        {"otype": "Frequency", "n_frequencies": 2},
    ]}
    enc = create_encoding(3, config, backend="torch", dtype=torch.float16)
    assert enc.dtype == enc.nested[0].dtype == torch.float16 and not hasattr(enc.nested[1], "dtype")
    x = inputs(3).float()
    out = enc(x)
    assert out.dtype == torch.float16
    parts = [enc.nested[0](x[:, :2]), enc.nested[1](x[:, 2:])]
    assert parts[0].dtype == torch.float16 and parts[1].dtype == torch.float32
    assert torch.equal(out, torch.cat(parts, dim=1).half())
    assert create_encoding(3, {"otype": "Frequency"}, dtype=torch.float16)(x).dtype == torch.float32
