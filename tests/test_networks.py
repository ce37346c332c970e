"""MLP and NetworkWithInputEncoding against float64 numpy oracles written from tcnn's layout rules by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ngraphics.errors import ConfigError
from ngraphics.networks import MLP, NetworkWithInputEncoding, create_network
from ngraphics.networks.mlp import activation_torch, mlp_forward_torch
from ngraphics.networks.pcg32 import Pcg32, grid_uniform

# tcnn's activations, written out independently (common_device.h, K_ACT = 10).
FORMULAS = {
    "None": lambda x: x,
    "ReLU": lambda x: np.maximum(x, 0.0),
    "LeakyReLU": lambda x: np.where(x > 0, x, 0.01 * x),
    "Exponential": np.exp,
    "Sine": np.sin,
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Squareplus": lambda x: 0.5 * (10 * x + np.sqrt((10 * x) ** 2 + 4)) / 10,
    "Softplus": lambda x: np.log(np.exp(10 * x) + 1.0) / 10,
    "Tanh": np.tanh,
}


def oracle(params: np.ndarray, x: np.ndarray, n_out: int, width: int, hidden: int, act: str, out_act: str):
    """tcnn's MLP as float64 loops: matrices row-major (out x in) back to back, input padded with ones to a
    multiple of 16, output rows padded to a multiple of 16 and dropped."""
    n, n_in = x.shape
    in_pad, out_pad = -(-n_in // 16) * 16, -(-n_out // 16) * 16
    if hidden == 0:
        shapes = [(out_pad, in_pad)]
    else:
        shapes = [(width, in_pad)] + [(width, width)] * (hidden - 1) + [(out_pad, width)]
    assert sum(r * c for r, c in shapes) == params.size
    out = np.zeros((n, n_out))
    for s in range(n):
        h = np.ones(in_pad)
        h[:n_in] = x[s]
        offset = 0
        for layer, (rows, cols) in enumerate(shapes):
            z = np.zeros(rows)
            for r in range(rows):
                for c in range(cols):
                    z[r] += params[offset + r * cols + c] * h[c]
            offset += rows * cols
            h = FORMULAS[out_act if layer == len(shapes) - 1 else act](z)
        out[s] = h[:n_out]
    return out


@pytest.mark.parametrize(
    "otype,n_in,n_out,width,hidden",
    [("FullyFusedMLP", 3, 1, 16, 2), ("CutlassMLP", 5, 17, 24, 1), ("CutlassMLP", 16, 3, 8, 0),
     ("MLP", 20, 4, 16, 3)],
)
def test_forward_matches_float64_oracle(otype, n_in, n_out, width, hidden):
    config = {"otype": otype, "n_neurons": width, "n_hidden_layers": hidden, "activation": "Tanh",
              "output_activation": "None"}
    mlp = MLP(n_in, n_out, config, seed=7).double()
    x = torch.rand(5, n_in, dtype=torch.float64) * 2 - 1
    y = mlp(x)
    assert y.shape == (5, n_out) and y.dtype == torch.float64
    want = oracle(mlp.params.detach().numpy(), x.numpy(), n_out, width, hidden, "Tanh", "None")
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    # float32 (the CPU compute dtype) agrees to float32 rounding
    y32 = MLP(n_in, n_out, config, seed=7)(x.float())
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.detach().numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", list(FORMULAS))
def test_every_activation(activation):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.0, 1e-3, -1e-3], dtype=torch.float64)])
    np.testing.assert_allclose(activation_torch(activation, x).numpy(), FORMULAS[activation](x.numpy()),
                               rtol=1e-12, atol=1e-14)
    config = {"otype": "CutlassMLP", "n_neurons": 8, "n_hidden_layers": 1, "activation": activation,
              "output_activation": activation}
    mlp = MLP(2, 3, config, seed=3).double()
    xs = torch.rand(4, 2, dtype=torch.float64)
    want = oracle(mlp.params.detach().numpy(), xs.numpy(), 3, 8, 1, activation, activation)
    np.testing.assert_allclose(mlp(xs).detach().numpy(), want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("activation", ["Tanh", "Softplus", "Squareplus", "Sine"])
def test_gradcheck_params_and_input(activation):
    config = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 2, "activation": activation,
              "output_activation": "Sigmoid"}
    mlp = MLP(3, 2, config, seed=11).double()
    params = mlp.params.detach().clone().requires_grad_(True)
    x = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, xx: mlp(xx, params=p), (params, x), eps=1e-6, atol=1e-6)


def test_padding_columns_act_as_bias_and_padded_rows_are_dropped():
    config = {"otype": "CutlassMLP", "n_neurons": 8, "n_hidden_layers": 0}
    mlp = MLP(3, 2, config, seed=5).double()  # one (16 x 16) matrix: rows 2..15 and columns 3..15 are padding
    x = torch.rand(6, 3, dtype=torch.float64)
    w = mlp.params.detach().view(16, 16)
    expected = x @ w[:2, :3].T + w[:2, 3:].sum(dim=1)  # padded input columns hold ones
    torch.testing.assert_close(mlp(x), expected)
    with torch.no_grad():
        mlp.params.view(16, 16)[2:] = 123.0  # padded output rows never reach the output
    torch.testing.assert_close(mlp(x), expected)
    mlp(x).sum().backward()
    assert mlp.params.grad.view(16, 16)[2:].abs().max() == 0
    assert mlp.params.grad.view(16, 16)[:2, 3:].abs().min() > 0


def test_weights_are_views_in_tcnn_order():
    mlp = MLP(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2}, seed=1)
    shapes = [tuple(w.shape) for w in mlp.weights()]
    assert shapes == [(32, 16), (32, 32), (16, 32)]
    assert mlp.n_params == 32 * 16 + 32 * 32 + 16 * 32 == mlp.params.numel()
    with torch.no_grad():
        mlp.weights()[1][4, 7] = 99.0
    assert mlp.params[32 * 16 + 4 * 32 + 7].item() == 99.0
    x = torch.rand(4, 3)
    torch.testing.assert_close(mlp_forward_torch(torch.cat([x, torch.ones(4, 13)], 1), mlp.weights(),
                                                 mlp.spec),
                               mlp(x))


def test_init_matches_tcnn_stream_and_distribution():
    # A 256x256 hidden matrix: Xavier uniform U(-s, s), s = sqrt(6 / 512); std s / sqrt(3).
    mlp = MLP(256, 16, {"otype": "CutlassMLP", "n_neurons": 256, "n_hidden_layers": 1}, seed=1337)
    w = mlp.weights()[0].detach().double()
    s = math.sqrt(6 / 512)
    assert w.abs().max() <= s
    n = w.numel()
    assert abs(w.mean().item()) < 4 * (s / math.sqrt(3)) / math.sqrt(n)
    assert abs(w.std().item() / (s / math.sqrt(3)) - 1) < 0.02
    # Exactly tcnn's numbers: pcg32(1337), next_float() * 2s - s in float32, a Python loop written here.
    state, inc, mult, mask = 0, 3, 0x5851F42D4C957F2D, (1 << 64) - 1

    def next_uint():
        nonlocal state
        old = state
        state = (old * mult + inc) & mask
        xs = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((xs >> rot) | (xs << ((32 - rot) & 31))) & 0xFFFFFFFF

    next_uint()
    state = (state + 1337) & mask
    next_uint()
    s32 = np.sqrt(np.float32(6) / np.float32(256 + 256))
    for value in w.flatten()[:50].tolist():
        u = np.array([(next_uint() >> 9) | 0x3F800000], np.uint32).view(np.float32)[0] - np.float32(1)
        assert value == float(u * np.float32(2) * s32 - s32)
    # Same seed -> same params; other seed -> others.
    again = MLP(256, 16, {"otype": "CutlassMLP", "n_neurons": 256, "n_hidden_layers": 1}, seed=1337)
    other = MLP(256, 16, {"otype": "CutlassMLP", "n_neurons": 256, "n_hidden_layers": 1}, seed=1338)
    assert torch.equal(again.params, mlp.params) and not torch.equal(other.params, mlp.params)


def test_sine_init_bounds():
    mlp = MLP(40, 3, {"otype": "CutlassMLP", "n_neurons": 64, "n_hidden_layers": 2, "activation": "Sine"},
              seed=2)
    first, hidden, last = (w.detach() for w in mlp.weights())
    assert first.shape == (64, 48) and first.abs().max() <= 30 / 48 and first.abs().max() > 0.9 * 30 / 48
    assert hidden.abs().max() <= math.sqrt(6 / 64) and hidden.abs().max() > 0.9 * math.sqrt(6 / 64)
    assert last.abs().max() <= math.sqrt(6 / 64)


def test_pcg32_reference_and_vector_paths():
    rng = Pcg32(42, 54)  # pcg32-demo's published first outputs for seed (42, 54)
    assert [rng.next_uint() for _ in range(6)] == [
        0xA15C02B7, 0x7B47F409, 0xBA1D3330, 0x83D2F293, 0xBFA4784B, 0xCBED606E]
    a, b = Pcg32(9), Pcg32(9)
    loop = [a.next_uint() for _ in range(1000)]
    assert b.uints(1000).tolist() == loop and a.state == b.state
    c = Pcg32(9)
    c.advance(999)
    assert c.next_uint() == loop[-1]
    # tcnn's GPU grid init: entry i + T*j holds draw 4*i + j with T = 128 * ceil(ceil(n / 4) / 128).
    n = 1001
    t = 256  # ceil(1001 / 4) = 251 threads, launched as 2 blocks of 128
    draws = Pcg32(5).floats(4 * t)
    rng = Pcg32(5)
    got = grid_uniform(rng, n, -1e-4, 1e-4)
    for idx in (0, 1, 255, 256, 1000):
        u = float(draws[(idx % t) * 4 + idx // t])
        assert abs(got[idx] - (u * 2e-4 - 1e-4)) < 1e-11
    d = Pcg32(5)
    d.advance(n)
    assert rng.state == d.state


def test_config_errors_and_aliases():
    assert MLP(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 48}).n_params == 48 * 16 + 48 * 48 * 4 + 16 * 48
    for width in (40, 144):
        with pytest.raises(ConfigError, match="multiples of 16 up to 128"):
            MLP(3, 1, {"otype": "FullyFusedMLP", "n_neurons": width})
    with pytest.raises(ConfigError, match="at least 1 hidden layer"):
        MLP(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 0})
    with pytest.raises(ConfigError, match="did you mean n_neurons"):
        MLP(3, 1, {"otype": "CutlassMLP", "n_neuron": 64})
    with pytest.raises(ConfigError, match="network.activation: 'Relu6' is not one of"):
        MLP(3, 1, {"otype": "CutlassMLP", "activation": "Relu6"})
    with pytest.raises(ConfigError, match="did you mean FullyFusedMLP"):
        MLP(3, 1, {"otype": "FullyFusedMPL"})
    with pytest.raises(ConfigError, match="n_input_dims must be a positive integer"):
        MLP(0, 1, {"otype": "MLP"})
    with pytest.raises(ConfigError, match="backend") as err:
        MLP(3, 1, {"otype": "MLP"}, backend="cuda")
    assert "\n" not in str(err.value)
    mlp = create_network(3, 1,
                         {"otype": "fullyfusedmlp", "activation": "relu", "output_activation": "SIGMOID"})
    assert (mlp.otype, mlp.spec.activation, mlp.spec.output_activation) == ("FullyFusedMLP", "ReLU",
                                                                            "Sigmoid")
    assert (mlp.spec.n_neurons, mlp.spec.n_hidden_layers) == (128, 5)  # tcnn's defaults
    assert MLP(3, 1, {"otype": "MegakernelMLP", "n_neurons": 16}).otype == "FullyFusedMLP"
    assert MLP(3, 1, {"otype": "MLP", "n_neurons": 20, "n_hidden_layers": 0}).otype == "CutlassMLP"


def test_backend_selection_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mlp = MLP(3, 2, {"otype": "MLP", "n_neurons": 16, "n_hidden_layers": 1}, backend="triton")
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(ConfigError, match="triton"):
        mlp(torch.rand(2, 3))
    assert MLP(3, 2, {"otype": "MLP", "n_neurons": 16}, backend="auto")(torch.rand(2, 3)).shape == (2, 2)


def test_network_with_input_encoding_identity_and_frequency():
    net_cfg = {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1, "activation": "Tanh"}
    model = NetworkWithInputEncoding(3, 2, {"otype": "Identity", "scale": 2.0, "offset": -1.0}, net_cfg,
                                     seed=4)
    model = model.double()
    x = torch.rand(5, 3, dtype=torch.float64)
    want = oracle(model.params.detach().numpy(), (2 * x - 1).numpy(), 2, 16, 1, "Tanh", "None")
    np.testing.assert_allclose(model(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)
    assert [n for n, _ in model.named_parameters()] == ["params"] and list(model.state_dict()) == ["params"]

    # Frequency: 3 dims x 2 freqs x (sin, cos) = 12 features, padded with ones to 16.
    freq_cfg = {"otype": "Frequency", "n_frequencies": 2}
    freq = NetworkWithInputEncoding(3, 2, freq_cfg, net_cfg, seed=4).double()
    assert freq.padded_encoding_dims == 16 and freq.n_params == 16 * 16 + 16 * 16
    feats = [np.sin(np.pi * 2**k * x.numpy()[:, d] + p) for d in range(3) for k in range(2)
             for p in (0, np.pi / 2)]
    enc = np.stack(feats, axis=1)
    want = oracle(freq.params.detach().numpy(), enc, 2, 16, 1, "Tanh", "None")  # oracle pads with ones
    np.testing.assert_allclose(freq(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)


def test_network_with_hash_grid_layout_padding_and_gradients():
    enc_cfg = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 6,
               "base_resolution": 4, "per_level_scale": 2.0}
    net_cfg = {"otype": "CutlassMLP", "n_neurons": 8, "n_hidden_layers": 1}
    model = NetworkWithInputEncoding(2, 1, enc_cfg, net_cfg, seed=1337).double()
    # 2D levels of resolution 4 and 8: 16 and 64 entries (<= 2^6) of 2 features -> 160 grid params.
    # Network: (8 x 16) + (16 x 8) = 256 weights, stored first.
    assert model.n_network_params == 256 and model.n_params == 256 + 160
    grid = model.params.detach()[256:]
    assert grid.abs().max() <= 1e-4 and torch.unique(grid).numel() == 160
    x = torch.rand(7, 2, dtype=torch.float64)
    feats = model.encoding(x).detach().numpy()  # (7, 4): grid pads with zeros, not ones
    w1 = model.params.detach()[:128].view(8, 16).numpy()
    w2 = model.params.detach()[128:256].view(16, 8).numpy()
    h = np.maximum(feats @ w1[:, :4].T, 0)  # padded columns 4..15 see zeros
    np.testing.assert_allclose(model(x).detach().numpy(), (h @ w2.T)[:, :1], rtol=1e-10, atol=1e-14)
    model(x).sum().backward()
    assert model.params.grad[256:].abs().max() > 0 and model.params.grad[:256].abs().max() > 0
    # The encoding is initialised from the same PCG32 stream after the network's 256 draws.
    rng = Pcg32(1337)
    rng.advance(256)
    np.testing.assert_array_equal(grid.float().numpy(), grid_uniform(rng, 160, -1e-4, 1e-4))


def test_spherical_harmonics_pads_ones_in_front():
    net_cfg = {"otype": "CutlassMLP", "n_neurons": 8, "n_hidden_layers": 0}
    sh_cfg = {"otype": "SphericalHarmonics", "degree": 3}
    model = NetworkWithInputEncoding(3, 1, sh_cfg, net_cfg, seed=2).double()
    x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1) * 0.5 + 0.5
    sh = model.encoding(x).detach()  # 9 features, tcnn writes 7 ones before them
    w = model.params.detach().view(16, 16)
    torch.testing.assert_close(model(x).detach(), (w[:1, 7:] @ sh.T).T + w[:1, :7].sum())
